"""Spiking neurons on Norse's functions: integrate-and-fire and LIF-box units with reset by subtraction
(the default) or to zero.

An IF neuron with reset by subtraction fed a current of mean I fires at the rate clip(I / theta, 0, 1)
(at most one spike per step; the membrane is kept in [v_min, theta] so no charge piles up): with
theta = 2 this is the rate network's `my_hard_sig` (Laborieux et al. 2021, Eq. 8).

`reset = "zero"` (v <- 0 after a spike) with `v_min = -inf` (no clamp; in a config spiking.v_min =
"none") is the neuron NIR's IF and LIF nodes describe (v_reset = 0), which Norse, snnTorch and sinabs
run (tests/test_nir_consumers.py): a network of these neurons exports to NIR exactly (spikeep.training.nir_export). Fed a constant current I in (0, theta] it fires
every floor(theta / I) + 1 steps, a rate below I / theta (the charge above threshold is lost).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from norse.torch.functional.heaviside import heaviside
from norse.torch.functional.lif_box import LIFBoxFeedForwardState, LIFBoxParameters, lif_box_feed_forward_step
from norse.torch.functional.reset import reset_subtract, reset_value

Tensor = torch.Tensor


class NeuronParams(NamedTuple):
    """Constants of a spiking layer (units: one simulation step, potentials in drive units)."""
    theta: float = 2.0  # firing threshold; theta = 2 makes the rate my_hard_sig of the current
    leak: float = 0.0  # dt / tau_mem; 0 = non-leaky integrate-and-fire
    refractory: int = 0  # steps a neuron stays silent (and does not integrate) after a spike
    v_min: float = -2.0  # lower bound of the membrane potential (a finite memory of inhibition); -inf: none
    reset: str = "subtract"  # after a spike: "subtract" (v <- v - theta) or "zero" (v <- 0, NIR's IF / LIF)


RESETS = ("subtract", "zero")


def exact_in_nir(p: NeuronParams) -> bool:
    """The neuron is NIR's IF / LIF node (v_reset = 0, no bound on v): reset to zero and v_min = -inf."""
    return p.reset == "zero" and p.v_min == -math.inf


class NeuronState(NamedTuple):
    v: Tensor  # membrane potential
    refractory: Tensor  # steps left in the refractory period (0 when active)


def check_neuron_params(p: NeuronParams) -> NeuronParams:
    if not (isinstance(p.theta, (int, float)) and math.isfinite(p.theta) and p.theta > 0):
        raise ValueError(f"spiking threshold theta must be a finite number > 0, got {p.theta!r}")
    if not 0.0 <= p.leak < 1.0:
        raise ValueError(f"spiking leak (dt / tau_mem) must lie in [0, 1), got {p.leak!r}")
    if int(p.refractory) != p.refractory or p.refractory < 0:
        raise ValueError(f"spiking refractory period must be an integer >= 0 steps, got {p.refractory!r}")
    if p.reset not in RESETS:
        raise ValueError(f"spiking reset must be 'subtract' (v <- v - theta) or 'zero' (v <- 0, NIR's IF), "
                         f"got {p.reset!r}")
    if not (isinstance(p.v_min, (int, float)) and not math.isnan(p.v_min) and p.v_min <= 0):
        raise ValueError(f"spiking v_min must be a number <= 0 (or -inf: no lower bound), got {p.v_min!r}")
    return p


def neuron_step(current: Tensor, state: NeuronState, p: NeuronParams) -> tuple[Tensor, NeuronState]:
    """One step of an IF (leak = 0) or LIF-box neuron with reset by subtraction or to zero; returns (z, state).

    With leak > 0 this is Norse's `lif_box_feed_forward_step` with Norse's `reset_subtract`
    (v <- v + leak (I' - v) with I' = I / leak, so that a held input I adds I per step as in the IF
    neuron). Norse's LIF box always leaks, so the non-leaky IF integrates v <- v + I itself, with the
    same spike condition (Norse's heaviside: z = [v > theta]) and the same subtractive reset, in place
    on the fresh potential (a few tensor operations per step, which matters for the event back end).
    The membrane is then kept in [v_min, theta]: at most one spike per step and no charge piling up.
    With reset = "zero", Norse's `reset_value` (v <- (1 - z) v, v_reset = 0) instead, and v is only kept
    >= v_min (<= theta it is already); v_min = -inf leaves it unbounded, as NIR's IF.
    """
    zero = p.reset == "zero"
    if p.leak > 0:
        c = dict(dtype=current.dtype, device=current.device)  # Norse's defaults are float32 scalars
        norse_p = LIFBoxParameters(tau_mem_inv=torch.as_tensor(p.leak, **c), v_leak=torch.zeros((), **c),
                                   v_th=torch.as_tensor(p.theta, **c), v_reset=torch.zeros((), **c),
                                   reset_method=reset_value if zero else reset_subtract)
        z, s = lif_box_feed_forward_step(current / p.leak, LIFBoxFeedForwardState(state.v), norse_p, dt=1.0)
        v, z = s.v, z.to(current.dtype)
    else:
        v = state.v + current
        z = heaviside(v - p.theta)
        if zero:
            v = reset_value(z, v, 0.0, p.theta)  # (1 - z) v: exactly 0 after a spike
        else:
            v.sub_(z, alpha=p.theta)  # reset by subtraction: v - theta z
    refr = state.refractory
    if p.refractory > 0:
        active = refr == 0
        z = z * active
        v = torch.where(active, v, state.v)
        refr = torch.where(z > 0, torch.full_like(refr, p.refractory), (refr - 1).clamp_(min=0))
    if not zero:
        v = v.clamp_(p.v_min, p.theta)
    elif p.v_min > -math.inf:
        v = v.clamp_(min=p.v_min)
    return z, NeuronState(v, refr)
