"""The EP driver (free phase, nudged phase(s), the estimate written into .grad) for any minimiser of the
network's energy, and the rate dynamics as one (RateRelaxation; spiking.rule has the spiking one)."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol

import torch

from ..core.dynamics import Relaxed, Settling, free_phase, nudged_phase
from ..core.relaxer import EAGER, Relaxer, batched_inputs, plus_minus_beta
from ..core.network import EqNetwork, Inputs, State
from .estimators import Equilibria, Grads, check_estimator, estimate, finish, needs_minus, nudge_beta, write_grads

Tensor = torch.Tensor


class EPResult(NamedTuple):
    s_free: State  # the free equilibrium (spike rates for spiking networks)
    loss: Tensor  # per-sample loss at the free equilibrium
    logits: Tensor  # output at the free equilibrium
    steps: int  # total relaxation steps run for this batch
    beta: float  # the beta of the first nudged phase (its sign, for random-sign)
    free_steps: int = 0  # steps of the free phase alone (the rest went to the nudged phase(s))
    nudged_phases: int = 1  # 2 for the symmetric estimators
    gaps: Optional[Tensor] = None  # Settling: per layer, the nudged phases' mean |s^beta - s*| (the next free phase's reference)


class Minimizer(Protocol):
    """What EP needs of a network's dynamics, rate or spiking: phases, and the phase difference of
    dPhi/dtheta between two of them (Laborieux et al. 2021, Eq. 3 / Eq. 12 on spike rates)."""

    def free_phase(self, inp: Inputs) -> Any: ...

    def nudged_phases(self, inp: Inputs, free: Any, beta: float, minus: bool) -> tuple[Any, Optional[Any]]: ...

    def delta(self, inp: Inputs, a: Any, beta_a: float, b: Any, beta_b: float) -> Grads: ...

    def equilibrium(self, phase: Any) -> State: ...  # the state the loss and the output read (rates when spiking)


class EPPhases(NamedTuple):
    free: Any
    plus: Any
    minus: Optional[Any]
    beta: float  # the first nudged phase's beta (its sign, for random-sign)


def ep_step(m: Minimizer, net: EqNetwork, inp: Inputs, estimator: str, beta: float,
            generator: Optional[torch.Generator] = None, kp_leak: float = 0.0) -> EPPhases:
    """The one EP driver, for every minimiser: free phase, the nudge's sign, nudged phase(s) from the
    free state, the chosen estimate (spikeep.learning.estimators) written into .grad."""
    check_estimator(estimator, beta)
    free = m.free_phase(inp)
    beta = nudge_beta(estimator, beta, generator)
    plus, minus = m.nudged_phases(inp, free, beta, needs_minus(estimator))
    g = estimate(estimator, lambda a, ba, b, bb: m.delta(inp, a, ba, b, bb), Equilibria(free, plus, minus, beta))
    write_grads(net, finish(estimator, g, net, kp_leak))
    return EPPhases(free, plus, minus, beta)


class RateRelaxation:
    """The rate dynamics as EP's minimiser: T1 / T2 relaxation steps by `relaxer` (ending early at `tol`,
    or by the `settling` rule), the +beta and -beta phases as one batch of 2B when the relaxer's settings
    say batch_phases."""

    def __init__(self, net: EqNetwork, T1: int, T2: int, tol: float = 0.0, tol_every: int = 1,
                 state: Optional[State] = None, settling: Optional[Settling] = None, relaxer: Relaxer = EAGER):
        self.net, self.T1, self.T2, self.tol, self.tol_every, self.state = net, T1, T2, tol, tol_every, state
        self.settling, self.relaxer = settling, relaxer

    def free_phase(self, inp: Inputs) -> Relaxed:
        return free_phase(self.net, inp, self.T1, self.state, self.tol, self.tol_every, self.settling, self.relaxer)

    def nudged_phases(self, inp: Inputs, free: Relaxed, beta: float, minus: bool):
        net, T2, tol, every, rule, rx = self.net, self.T2, self.tol, self.tol_every, self.settling, self.relaxer
        if minus and rx.settings.batch_phases:
            return both_nudged_phases(net, inp, free.state, T2, beta, tol, every, rule, rx)
        plus = nudged_phase(net, inp, free.state, T2, beta, tol, every, rule, rx)
        return plus, (nudged_phase(net, inp, free.state, T2, -beta, tol, every, rule, rx) if minus else None)

    def delta(self, inp: Inputs, a: Relaxed, beta_a: float, b: Relaxed, beta_b: float) -> Grads:
        return self.net.dphi_dtheta_delta(inp, a.state, beta_a, inp, b.state, beta_b)

    def equilibrium(self, phase: Relaxed) -> State:
        return phase.state


def ep_gradients(net: EqNetwork, x: Tensor, y: Tensor, estimator: str = "symmetric",
                 beta: float = 0.5, T1: int = 20, T2: int = 4, tol: float = 0.0,
                 generator: Optional[torch.Generator] = None, state: Optional[State] = None,
                 tol_every: int = 1, kp_leak: float = 0.0, mask: Optional[Tensor] = None,
                 settling: Optional[Settling] = None, relaxer: Relaxer = EAGER) -> EPResult:
    """EP on the rate dynamics: free phase (T1 steps), nudged phase(s) (T2 steps each) and the chosen
    estimate in .grad; with tol > 0 a phase ends early once converged (checked every `tol_every` steps),
    with `settling` by that rule instead (core.dynamics.Settling; its free-phase gaps are the caller's:
    EPResult.gaps gives this batch's for the next); `mask` is the batch's dropout mask
    (EqNetwork.draw_mask), the same in every phase; `relaxer` runs the steps (core.relaxer)."""
    with torch.no_grad():
        inp = net.prepare(x, y)._replace(mask=mask)
        ph = ep_step(RateRelaxation(net, T1, T2, tol, tol_every, state, settling, relaxer), net, inp, estimator,
                     beta, generator, kp_leak)
        return ep_result(ph, net.loss(ph.free.state, inp.y, mask), net.logits(ph.free.state, mask), ph.free.state)


def ep_result(ph: EPPhases, loss: Tensor, logits: Tensor, s_free: State) -> EPResult:
    steps = ph.free.steps + ph.plus.steps + (ph.minus.steps if ph.minus is not None else 0)
    gaps = getattr(ph.plus, "gaps", None)  # spiking phases (spiking.simulator.Phase) measure no gaps
    minus_gaps = getattr(ph.minus, "gaps", None)
    if gaps is not None and minus_gaps is not None and minus_gaps is not gaps:
        gaps = (gaps + minus_gaps) / 2
    return EPResult(s_free, loss, logits, steps, ph.beta, ph.free.steps, 1 if ph.minus is None else 2, gaps)


def both_nudged_phases(net: EqNetwork, inp: Inputs, s_free: State, T2: int, beta: float, tol: float = 0.0,
                       tol_every: int = 1, settling: Optional[Settling] = None,
                       relaxer: Relaxer = EAGER) -> tuple[Relaxed, Relaxed]:
    """The +beta and -beta phases as one batch of 2B (both start from s*; each sample's nudge carries its
    own sign), split back into two; with tol > 0 both halves run until the slower one has converged."""
    B = s_free[0].shape[0]
    both = nudged_phase(net, batched_inputs(inp), tuple(torch.cat([s, s]) for s in s_free), T2,
                        plus_minus_beta(beta, B, s_free[0]), tol, tol_every, settling, relaxer)
    plus = tuple(s[:B] for s in both.state)
    minus = tuple(s[B:] for s in both.state)
    return Relaxed(plus, both.steps, both.delta, both.gaps), Relaxed(minus, both.steps, both.delta, both.gaps)
