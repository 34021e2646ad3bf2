"""EP gradient estimators (Laborieux et al. 2021, Sec. 3). Each writes into every parameter's
.grad the estimate of dL/dtheta (sign included: the gradient of the loss), so any torch.optim
optimizer applies it:

    one-sided   (Eq. 4):  g = -1/beta       (dPhi^beta/dtheta(s^beta) - dPhi/dtheta(s*))
    random-sign:          the one-sided estimate with beta -> +-beta drawn at random per batch
    symmetric   (Eq. 12): g = -1/(2 beta)   (dPhi^beta/dtheta(s^beta) - dPhi^-beta/dtheta(s^-beta))

dPhi/dtheta is each synapse's local update from the states of its own two layers.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .dynamics import free_phase, nudged_phase
from .network import EqNetwork, Inputs, State

Tensor = torch.Tensor
EP_ESTIMATORS = ("one_sided", "random_sign", "symmetric")


def one_sided_estimate(net: EqNetwork, inp: Inputs, s_free: State, s_beta: State, beta: float) -> list[Tensor]:
    """Eq. 4: -(dPhi^beta/dtheta(s^beta) - dPhi/dtheta(s*)) / beta."""
    if beta == 0.0:
        raise ValueError("the one-sided estimate needs beta != 0")
    a = net.dphi_dtheta(inp, s_beta, beta)
    b = net.dphi_dtheta(inp, s_free, 0.0)
    return [(gb - ga) / beta for ga, gb in zip(a, b)]


def symmetric_estimate(net: EqNetwork, inp: Inputs, s_plus: State, s_minus: State, beta: float) -> list[Tensor]:
    """Eq. 12: -(dPhi^beta/dtheta(s^beta) - dPhi^-beta/dtheta(s^-beta)) / (2 beta)."""
    if beta == 0.0:
        raise ValueError("the symmetric estimate needs beta != 0")
    a = net.dphi_dtheta(inp, s_plus, beta)
    b = net.dphi_dtheta(inp, s_minus, -beta)
    return [(gb - ga) / (2 * beta) for ga, gb in zip(a, b)]


def write_grads(net: EqNetwork, grads: list[Tensor]) -> None:
    """Put a gradient estimate into .grad (replacing what was there)."""
    params = list(net.parameters())
    if len(params) != len(grads):
        raise ValueError(f"{len(grads)} gradients for {len(params)} parameters")
    for p, g in zip(params, grads):
        p.grad = g.detach().clone() if p.grad is None else p.grad.copy_(g)


class EPResult(NamedTuple):
    s_free: State
    loss: Tensor  # per-sample loss at the free equilibrium
    logits: Tensor  # output at the free equilibrium
    steps: int  # total relaxation steps run for this batch
    beta: float  # the beta of the first nudged phase (its sign, for random-sign)


def ep_gradients(net: EqNetwork, x: Tensor, y: Tensor, estimator: str = "symmetric",
                 beta: float = 0.5, T1: int = 20, T2: int = 4, tol: float = 0.0,
                 generator: Optional[torch.Generator] = None, state: Optional[State] = None) -> EPResult:
    """Free phase, nudged phase(s) and the chosen estimate, written into .grad."""
    if estimator not in EP_ESTIMATORS:
        raise ValueError(f"unknown EP estimator {estimator!r}; use one of {', '.join(EP_ESTIMATORS)}")
    if beta == 0.0:
        raise ValueError("EP needs a nonzero beta for its nudged phase")
    with torch.no_grad():
        inp = net.prepare(x, y)
        free = free_phase(net, inp, T1, state, tol)
        s_free, steps = free.state, free.steps
        if estimator == "random_sign":
            sign = 1.0 if int(torch.randint(0, 2, (1,), generator=generator)) == 1 else -1.0
            beta = sign * abs(beta)
        plus = nudged_phase(net, inp, s_free, T2, beta, tol)
        steps += plus.steps
        if estimator == "symmetric":
            minus = nudged_phase(net, inp, s_free, T2, -beta, tol)
            steps += minus.steps
            grads = symmetric_estimate(net, inp, plus.state, minus.state, beta)
        else:
            grads = one_sided_estimate(net, inp, s_free, plus.state, beta)
        write_grads(net, grads)
        return EPResult(s_free, net.loss(s_free, inp.y), net.logits(s_free), steps, beta)
