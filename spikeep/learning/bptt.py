"""Backpropagation through time: the baseline EP is checked against (Ernoult et al. 2019).

The free phase is unrolled with autograd through the very same explicit step function EP relaxes
with, and the loss is taken at the last step. `truncate` keeps the graph for the last steps only
(the rest runs without one), as the paper's code does for training.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch.func import functional_call

from ..core.dynamics import free_phase
from ..core.network import EqNetwork, State
from .estimators import Grads, write_grads

Tensor = torch.Tensor


class BPTTResult(NamedTuple):
    s_last: State
    loss: Tensor  # per-sample loss at the last step
    logits: Tensor


def bptt_gradients(net: EqNetwork, x: Tensor, y: Tensor, T: int, truncate: int = 0,
                   state: Optional[State] = None, write: bool = True,
                   mask: Optional[Tensor] = None) -> tuple[BPTTResult, Grads]:
    """dL(s_T)/dtheta for L the batch-mean loss after T free steps; written into .grad if `write`."""
    if T <= 0:
        raise ValueError(f"T must be a positive number of steps, got {T!r}")
    K = T if truncate <= 0 else min(truncate, T)
    with torch.no_grad():
        inp = net.prepare(x, y)._replace(mask=mask)  # one dropout mask for every unrolled step
        s = free_phase(net, inp, T - K, state).state if T > K else (
            net.init_state(x.shape[0]) if state is None else state)
    with torch.enable_grad():
        inp = net.prepare(x, y)._replace(mask=mask)  # the first layer's drive depends on w_1: in the graph
        for _ in range(K):
            s = net.step(inp, s, 0.0)
        per_sample = net.loss(s, inp.y, mask)
        names, params = zip(*net.named_parameters())
        grads = torch.autograd.grad(per_sample.mean(), params, allow_unused=True)
    grads = {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}
    if write:
        write_grads(net, grads)
    s = tuple(v.detach() for v in s)
    return BPTTResult(s, per_sample.detach(), net.logits(s, mask).detach()), grads


def bptt_per_step(net: EqNetwork, x: Tensor, y: Tensor, s_start: State, K: int) -> list[Grads]:
    """Per-step BPTT gradients over K steps from s_start, loss at the last one, by parameter name.

    Returns grads[t-1] = dL/dtheta_{T-t} for t = 1..K: the gradient through the parameters used by
    the t-th step counted back from the end (Ernoult et al. 2019, Eq. 6). Each step gets its own copy
    of the parameters so autograd keeps their contributions apart. The readout (used only by the
    loss) gets its whole gradient at t = 1.
    """
    if K <= 0:
        raise ValueError(f"K must be a positive number of steps, got {K!r}")
    names = [n for n, _ in net.named_parameters()]
    with torch.enable_grad():
        copies = [{n: p.detach().clone().requires_grad_(True) for n, p in net.named_parameters()}
                  for _ in range(K)]
        s = tuple(v.detach() for v in s_start)
        for j in range(K):
            s = functional_call(net, copies[j], (x, s, 0.0))
        loss = net.loss(s, y).mean()
        flat = [copies[j][n] for j in range(K) for n in names]
        readout = list(net.readout.parameters()) if net.readout is not None else []
        g = torch.autograd.grad(loss, flat + readout, allow_unused=True)
    g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(flat + readout, g)]
    per_step = [dict(zip(names, g[j * len(names):(j + 1) * len(names)])) for j in range(K)]  # step j
    out = per_step[::-1]  # out[t-1]: the t-th step from the end
    if readout:
        ro_names = [f"readout.{n}" for n, _ in net.readout.named_parameters()]
        for t in range(K):
            for n, gi in zip(ro_names, g[len(flat):]):
                out[t][n] = gi if t == 0 else torch.zeros_like(gi)
    return out
