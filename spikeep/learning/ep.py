"""EP on the rate dynamics: free phase, nudged phase(s) and the estimate, written into .grad."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..core.dynamics import Relaxed, free_phase, nudged_phase
from ..core.engine import batched_inputs, plus_minus_beta
from ..core.network import EqNetwork, Inputs, State
from .estimators import Equilibria, check_estimator, estimate, finish, needs_minus, nudge_beta, write_grads

Tensor = torch.Tensor


class EPResult(NamedTuple):
    s_free: State  # the free equilibrium (spike rates for spiking networks)
    loss: Tensor  # per-sample loss at the free equilibrium
    logits: Tensor  # output at the free equilibrium
    steps: int  # total relaxation steps run for this batch
    beta: float  # the beta of the first nudged phase (its sign, for random-sign)
    free_steps: int = 0  # steps of the free phase alone (the rest went to the nudged phase(s))
    nudged_phases: int = 1  # 2 for the symmetric estimators


def ep_gradients(net: EqNetwork, x: Tensor, y: Tensor, estimator: str = "symmetric",
                 beta: float = 0.5, T1: int = 20, T2: int = 4, tol: float = 0.0,
                 generator: Optional[torch.Generator] = None, state: Optional[State] = None,
                 tol_every: int = 1, kp_leak: float = 0.0, mask: Optional[Tensor] = None) -> EPResult:
    """Free phase (T1 steps), nudged phase(s) (T2 steps each) and the chosen estimate in .grad; with
    tol > 0 a phase ends early once converged (checked every `tol_every` steps); `mask` is the batch's
    dropout mask (EqNetwork.draw_mask), the same in every phase."""
    check_estimator(estimator, beta)
    with torch.no_grad():
        inp = net.prepare(x, y)._replace(mask=mask)
        free = free_phase(net, inp, T1, state, tol, tol_every)
        beta = nudge_beta(estimator, beta, generator)
        if needs_minus(estimator) and getattr(net, "engine", None) is not None:
            plus, minus = both_nudged_phases(net, inp, free.state, T2, beta, tol, tol_every)
        else:
            plus = nudged_phase(net, inp, free.state, T2, beta, tol, tol_every)
            minus = nudged_phase(net, inp, free.state, T2, -beta, tol, tol_every) if needs_minus(estimator) else None
        steps = free.steps + plus.steps + (minus.steps if minus is not None else 0)
        eq = Equilibria(free.state, plus.state, minus.state if minus is not None else None, beta)
        g = estimate(estimator, lambda a, ba, b, bb: net.dphi_dtheta_delta(inp, a, ba, inp, b, bb), eq)
        write_grads(net, finish(estimator, g, net, kp_leak))
        return EPResult(free.state, net.loss(free.state, inp.y, mask), net.logits(free.state, mask), steps, beta,
                        free.steps, 1 if minus is None else 2)


def both_nudged_phases(net: EqNetwork, inp: Inputs, s_free: State, T2: int, beta: float, tol: float = 0.0,
                       tol_every: int = 1) -> tuple[Relaxed, Relaxed]:
    """The +beta and -beta phases as one batch of 2B (both start from s*; each sample's nudge carries its
    own sign), split back into two. Needs an engine that takes a per-sample beta (core.engine); with
    tol > 0 both halves run until the slower one has converged."""
    B = s_free[0].shape[0]
    both = nudged_phase(net, batched_inputs(inp), tuple(torch.cat([s, s]) for s in s_free), T2,
                        plus_minus_beta(beta, B, s_free[0]), tol, tol_every)
    plus = tuple(s[:B] for s in both.state)
    minus = tuple(s[B:] for s in both.state)
    return Relaxed(plus, both.steps, both.delta), Relaxed(minus, both.steps, both.delta)
