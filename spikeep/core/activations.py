"""Neuron models: the rate activations sigma of the rate-coded EP dynamics s <- sigma(dPhi/ds).

Laborieux et al. 2021 (Sec. 4 and the paper's code) use the following functions:

    my_hard_sig(x)  = (1 + hardtanh(x - 1)) / 2     = clip(x / 2, 0, 1)
    hard_sigmoid(x) = (1 + hardtanh(2x - 1)) / 2    = clip(x, 0, 1)
    sigmoid(x)      = 1 / (1 + exp(-4 (x - 0.5)))   (the steep sigmoid)
    tanh(x)

`identity` is there for checks: with it the transition s_{t+1} = dPhi/ds derives exactly from Phi,
the setting in which the GDU theorem of Ernoult et al. 2019 is exact.

Each activation has an out-of-place form (used under autograd: BPTT, reference checks) and an in-place
form (used while relaxing without a graph, so a step allocates nothing for it).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class Activation(NamedTuple):
    name: str
    fn: Callable[[Tensor], Tensor]  # out of place, differentiable
    fn_: Callable[[Tensor], Tensor]  # in place on a tensor the caller owns


def _my_hard_sig(x: Tensor) -> Tensor:
    return (1 + F.hardtanh(x - 1)) * 0.5


def _my_hard_sig_(x: Tensor) -> Tensor:
    return x.sub_(1).clamp_(-1, 1).add_(1).mul_(0.5)


def _hard_sigmoid(x: Tensor) -> Tensor:
    return (1 + F.hardtanh(2 * x - 1)) * 0.5


def _hard_sigmoid_(x: Tensor) -> Tensor:
    return x.mul_(2).sub_(1).clamp_(-1, 1).add_(1).mul_(0.5)


def _steep_sigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(4 * (x - 0.5))


def _steep_sigmoid_(x: Tensor) -> Tensor:
    return x.sub_(0.5).mul_(4).sigmoid_()


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("my_hard_sig", _my_hard_sig, _my_hard_sig_),
        Activation("hard_sigmoid", _hard_sigmoid, _hard_sigmoid_),
        Activation("sigmoid", _steep_sigmoid, _steep_sigmoid_),
        Activation("tanh", torch.tanh, torch.tanh_),
        Activation("identity", lambda x: x, lambda x: x),
    )
}


def get_activation(name: str) -> Activation:
    """Return the activation called `name`; a clear error lists the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}; known activations: {known}") from None
