"""EP gradient estimators (Laborieux et al. 2021, Sec. 3), the one place their formulas live.

Given the equilibria of a free phase and of nudged phases (whatever produced them: the rate dynamics,
a spiking simulation, one step of a nudged trajectory in the GDU check) and a function
delta(s_a, beta_a, s_b, beta_b) -> {name: dPhi^beta_a/dtheta(s_a) - dPhi^beta_b/dtheta(s_b)} made of each
interaction's local update, they return the estimate of dL/dtheta by parameter name (sign included:
the gradient of the loss), so any torch.optim optimizer applies it once it is written into .grad:

    one-sided   (Eq. 4):  g = -1/beta       (dPhi^beta/dtheta(s^beta) - dPhi/dtheta(s*))
    random-sign:          the one-sided estimate with beta -> +-beta drawn at random per batch
    symmetric   (Eq. 12): g = -1/(2 beta)   (dPhi^beta/dtheta(s^beta) - dPhi^-beta/dtheta(s^-beta))
    symVF       (Eq. 20): the symmetric difference of the vector-field terms dF/dtheta . s, each of w_f
                          and w_b its own (unidirectional networks: the interactions' local updates)
    symKP-VF    (Eq. 21): w_f and w_b both get the mean of their two symVF estimates, each with the same
                          leakage lambda theta (Kolen-Pollack), so independent w_f, w_b converge

The two terms of each difference are nearly equal (for the first conv layer of the paper's ConvNet
their difference is ~3e5 times smaller than they are), so `delta` differences the phases' states
before it correlates them (EqNetwork.dphi_dtheta_delta): in float32 the naive difference of the two
correlations loses ~8 % of the first layer's estimate, the difference of states does not.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn as nn

Tensor = torch.Tensor
Grads = dict[str, Tensor]
EP_ESTIMATORS = ("one_sided", "random_sign", "symmetric", "sym_vf", "sym_kp_vf")
FEEDBACK = "weight_b"  # the parameter name of an interaction's own feedback weights


def check_estimator(name: str, beta: float) -> None:
    if name not in EP_ESTIMATORS:
        raise ValueError(f"unknown EP estimator {name!r}; use one of {', '.join(EP_ESTIMATORS)}")
    if beta == 0.0:
        raise ValueError("EP needs a nonzero beta for its nudged phase")


def needs_minus(name: str) -> bool:
    """Whether the estimator uses a -beta phase (the symmetric family)."""
    return name in ("symmetric", "sym_vf", "sym_kp_vf")


def draw_sign(beta: float, generator: Optional[torch.Generator] = None) -> float:
    """Random-sign EP: +|beta| or -|beta| with probability 1/2 (one draw from `generator` per batch)."""
    sign = 1.0 if int(torch.randint(0, 2, (1,), generator=generator)) == 1 else -1.0
    return sign * abs(beta)


def nudge_beta(name: str, beta: float, generator: Optional[torch.Generator] = None) -> float:
    """The beta of the first nudged phase: drawn for random-sign EP, `beta` itself otherwise."""
    return draw_sign(beta, generator) if name == "random_sign" else beta


Delta = Callable[[Any, float, Any, float], Grads]  # delta(s_a, beta_a, s_b, beta_b)


def one_sided_estimate(delta: Delta, s_free: Any, s_beta: Any, beta: float) -> Grads:
    """Eq. 4: -(dPhi^beta/dtheta(s^beta) - dPhi/dtheta(s*)) / beta, by parameter name."""
    if beta == 0.0:
        raise ValueError("the one-sided estimate needs beta != 0")
    return {k: v / beta for k, v in delta(s_free, 0.0, s_beta, beta).items()}


def symmetric_estimate(delta: Delta, s_plus: Any, s_minus: Any, beta: float) -> Grads:
    """Eq. 12: -(dPhi^beta/dtheta(s^beta) - dPhi^-beta/dtheta(s^-beta)) / (2 beta), by parameter name."""
    if beta == 0.0:
        raise ValueError("the symmetric estimate needs beta != 0")
    return {k: v / (2 * beta) for k, v in delta(s_minus, -beta, s_plus, beta).items()}


class Equilibria(NamedTuple):
    """The states an estimate needs: free, nudged with `beta`, and (symmetric) nudged with -beta."""
    free: Any
    plus: Any
    minus: Any = None
    beta: float = 0.0


def estimate(name: str, delta: Delta, eq: Equilibria) -> Grads:
    """The named estimate from equilibria (see the module docstring for `delta`)."""
    if name in ("symmetric", "sym_vf", "sym_kp_vf"):
        return symmetric_estimate(delta, eq.plus, eq.minus, eq.beta)
    if name in ("one_sided", "random_sign"):
        return one_sided_estimate(delta, eq.free, eq.plus, eq.beta)
    raise ValueError(f"unknown EP estimator {name!r}; use one of {', '.join(EP_ESTIMATORS)}")


def kolen_pollack(grads: Grads, params: dict[str, Tensor], leak: float) -> Grads:
    """Eq. 21 for every pair (w_f, w_b): both get (g_f + g_b) / 2 plus the same leakage leak * theta
    (in .grad's sign convention, the gradient of the loss: the update -lr * g shrinks each weight)."""
    out = dict(grads)
    for name_b in (n for n in grads if n.rsplit(".", 1)[-1] == FEEDBACK):
        name_f = name_b[: -len(FEEDBACK)] + "weight"
        mean = (grads[name_f] + grads[name_b]) * 0.5
        out[name_f] = mean + leak * params[name_f].detach()
        out[name_b] = mean + leak * params[name_b].detach()
    return out


def finish(name: str, grads: Grads, module: nn.Module, kp_leak: float = 0.0) -> Grads:
    """The estimator's last touch before .grad: Kolen-Pollack's shared update for sym_kp_vf."""
    if name == "sym_kp_vf":
        return kolen_pollack(grads, dict(module.named_parameters()), kp_leak)
    return grads


def write_grads(module: nn.Module, grads: Grads) -> None:
    """Put a gradient estimate into .grad by parameter name (replacing what was there); the names
    must be exactly those of module.named_parameters()."""
    params = dict(module.named_parameters())
    if set(grads) != set(params):
        missing, extra = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
        raise ValueError(f"gradients do not match the parameters (missing {missing}, unexpected {extra})")
    for name, p in params.items():
        g = grads[name]
        if g.shape != p.shape:
            raise ValueError(f"gradient of {name} has shape {tuple(g.shape)}, the parameter {tuple(p.shape)}")
        p.grad = g.detach().clone() if p.grad is None else p.grad.copy_(g)
