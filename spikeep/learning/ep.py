"""EP on the rate dynamics: free phase, nudged phase(s) and the estimate, written into .grad."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..core.dynamics import free_phase, nudged_phase
from ..core.network import EqNetwork, State
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
        plus = nudged_phase(net, inp, free.state, T2, beta, tol, tol_every)
        minus = nudged_phase(net, inp, free.state, T2, -beta, tol, tol_every) if needs_minus(estimator) else None
        steps = free.steps + plus.steps + (minus.steps if minus is not None else 0)
        eq = Equilibria(free.state, plus.state, minus.state if minus is not None else None, beta)
        g = estimate(estimator, lambda a, ba, b, bb: net.dphi_dtheta_delta(inp, a, ba, inp, b, bb), eq)
        write_grads(net, finish(estimator, g, net, kp_leak))
        return EPResult(free.state, net.loss(free.state, inp.y, mask), net.logits(free.state, mask), steps, beta,
                        free.steps, 1 if minus is None else 2)
