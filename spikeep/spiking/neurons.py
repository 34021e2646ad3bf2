"""Spiking neurons on Norse's functions: integrate-and-fire and LIF-box units with reset by subtraction.

An IF neuron fed a current of mean I fires at the rate clip(I / theta, 0, 1) (at most one spike per
step; the membrane is kept in [v_min, theta] so no charge piles up): with theta = 2 this is the rate
network's `my_hard_sig` (Laborieux et al. 2021, Eq. 8).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from norse.torch.functional.heaviside import heaviside
from norse.torch.functional.lif_box import LIFBoxFeedForwardState, LIFBoxParameters, lif_box_feed_forward_step
from norse.torch.functional.reset import reset_subtract

Tensor = torch.Tensor


class NeuronParams(NamedTuple):
    """Constants of a spiking layer (units: one simulation step, potentials in drive units)."""
    theta: float = 2.0  # firing threshold; theta = 2 makes the rate my_hard_sig of the current
    leak: float = 0.0  # dt / tau_mem; 0 = non-leaky integrate-and-fire
    refractory: int = 0  # steps a neuron stays silent (and does not integrate) after a spike
    v_min: float = -2.0  # lower bound of the membrane potential (a finite memory of inhibition)


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
    if not (math.isfinite(p.v_min) and p.v_min <= 0):
        raise ValueError(f"spiking v_min must be a finite number <= 0, got {p.v_min!r}")
    return p


def neuron_step(current: Tensor, state: NeuronState, p: NeuronParams) -> tuple[Tensor, NeuronState]:
    """One step of an IF (leak = 0) or LIF-box neuron with reset by subtraction; returns (z, state).

    With leak > 0 this is Norse's `lif_box_feed_forward_step` with Norse's `reset_subtract`
    (v <- v + leak (I' - v) with I' = I / leak, so that a held input I adds I per step as in the IF
    neuron). Norse's LIF box always leaks, so the non-leaky IF integrates v <- v + I itself, with the
    same spike condition (Norse's heaviside: z = [v > theta]) and the same subtractive reset, in place
    on the fresh potential (a few tensor operations per step, which matters for the event back end).
    The membrane is then kept in [v_min, theta]: at most one spike per step and no charge piling up.
    """
    if p.leak > 0:
        c = dict(dtype=current.dtype, device=current.device)  # Norse's defaults are float32 scalars
        norse_p = LIFBoxParameters(tau_mem_inv=torch.as_tensor(p.leak, **c), v_leak=torch.zeros((), **c),
                                   v_th=torch.as_tensor(p.theta, **c), v_reset=torch.zeros((), **c),
                                   reset_method=reset_subtract)
        z, s = lif_box_feed_forward_step(current / p.leak, LIFBoxFeedForwardState(state.v), norse_p, dt=1.0)
        v, z = s.v, z.to(current.dtype)
    else:
        v = state.v + current
        z = heaviside(v - p.theta)
        v.sub_(z, alpha=p.theta)  # reset by subtraction: v - theta z
    refr = state.refractory
    if p.refractory > 0:
        active = refr == 0
        z = z * active
        v = torch.where(active, v, state.v)
        refr = torch.where(z > 0, torch.full_like(refr, p.refractory), (refr - 1).clamp_(min=0))
    return z, NeuronState(v.clamp_(p.v_min, p.theta), refr)
