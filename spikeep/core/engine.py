"""The relaxation engine: one layer update as the unit, two schedules, three ways to run it.

A layer update (Laborieux et al. 2021, Eq. 8) sets layer k from its neighbours:

    u_k      = w_k * s_{k-1} + b_k                   forward drive before pooling (convolution / matmul)
    P_k, U_k = pool_unpool(u_k, s_k)                 pooled forward drive; s_k routed to the window winners
    F_k      = w_{k+1}^T * U_{k+1}                   feedback from the layer above (transposed convolution)
    s_k     <- act(P_k + F_k m_k + beta n_k)         m: dropout mask, n: nudge -dL/ds_N (last layer only)

The winners of u_{k+1} route the feedback to s_k exactly as autograd differentiates Phi (the current
state's max-pool indices). Everything but the two convolutions is two kernels per layer (core.fused).

Schedules (`dynamics.schedule`):
  "sync"   every layer from the previous state (Eq. 8): one step.
  "async"  red-black block coordinate updates (Scellier et al. 2023): the layers k = 0, 2, 4, ... (s_1, s_3,
           ... in the paper's 1-based numbering) from their neighbours, then k = 1, 3, ... from the new
           ones; each forward and each transposed convolution runs once per sweep, as in a sync step,
           since a half-step reuses the pre-pool drives the other half computed. One "step" is a sweep.

Precisions (`dynamics.precision`, see build.PRECISIONS): "strict"/"tf32"/"bf16" recompute each drive
each step (tf32 and bf16: in that arithmetic); "bf16_incremental" keeps each drive in float32 and adds
the convolution of the state's change, D_{t+1} = D_t + w * (s_{t+1} - s_t), that convolution in
bfloat16: its rounding scales with |s_{t+1} - s_t|, which vanishes at equilibrium, instead of with |s|.
An exact float32 recomputation opens every block of `recompute_every` steps (and every phase), which
bounds the drift. The unpooled map's change U_{t+1} - U_t is formed exactly before it is convolved.

Engines (`dynamics.engine`): "eager" is EqNetwork.step (the reference); "fused" this module with the
plain-PyTorch kernels; "triton" the same with core.fused's Triton kernels. On CUDA the fused engines
capture each block of steps as a CUDA graph (one launch per block; `graphs=False` turns it off).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

from .fused import IMPLS
from .interactions import Conv, Dense
from .network import EqNetwork, Inputs, State

Tensor = torch.Tensor
Beta = Union[float, Tensor]  # a number, or one value per sample (batched +-beta phases), shape (B,) or (B, 1)
ENGINES = ("eager", "fused", "triton")
SCHEDULES = ("sync", "async")


class Block(NamedTuple):
    state: State
    residual: Tensor  # max |s_t - s_{t-1}| over every neuron at the block's last step (a 0-d device tensor)


def _beta_nonzero(beta: Beta) -> bool:
    return torch.is_tensor(beta) or beta != 0.0


class FusedEngine:
    """Relaxation steps of an EqNetwork built from layer updates (see the module docstring)."""

    def __init__(self, net: EqNetwork, impl: str = "torch", schedule: str = "sync", incremental: bool = False,
                 recompute_every: int = 20, delta_dtype: torch.dtype = torch.bfloat16, graphs: bool = True):
        if impl not in IMPLS:
            raise ValueError(f"unknown kernel implementation {impl!r}; use one of {', '.join(IMPLS)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"dynamics.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if incremental and schedule != "sync":
            raise ValueError("dynamics.precision = 'bf16_incremental' runs with dynamics.schedule = 'sync'")
        if recompute_every < 1:
            raise ValueError(f"dynamics.recompute_every must be >= 1 step, got {recompute_every}")
        for syn in net.synapses:
            if not isinstance(syn, (Conv, Dense)):
                raise ValueError(f"the fused engine has no layer update for {type(syn).__name__}")
        self.net, self.impl, self.schedule = net, impl, schedule
        self.incremental, self.recompute_every, self.delta_dtype = incremental, recompute_every, delta_dtype
        self.graphs = graphs
        self.pool_unpool, self.settle = IMPLS[impl]
        self.act = net.activation.name
        self._graphs: dict = {}

    # -- the two convolutions of a layer update --------------------------------------------------------
    def forward_u(self, k: int, pre: Tensor, bias: bool = True, dtype: Optional[torch.dtype] = None,
                  weight: Optional[Tensor] = None) -> Tensor:
        """u_k = w_k * pre (+ b_k) before pooling, optionally in `dtype` (the weight cast to it, or
        `weight`: a copy already in that dtype)."""
        syn = self.net.synapses[k]
        w = weight if weight is not None else syn.weight if dtype is None else syn.weight.to(dtype)
        b = syn.bias if bias else None
        if b is not None and dtype is not None:
            b = b.to(dtype)
        if dtype is not None:
            pre = pre.to(dtype)
        if isinstance(syn, Conv):
            return F.conv2d(pre, w, b, syn.stride, syn.padding)
        return F.linear(pre.flatten(1), w, b)

    def feedback(self, k: int, U: Tensor, dtype: Optional[torch.dtype] = None,
                 weight: Optional[Tensor] = None) -> Tensor:
        """F_{k-1} = w_k^T * U_k, in the shape of layer k-1 (the presynaptic layer of synapse k)."""
        syn = self.net.synapses[k]
        w = weight if weight is not None else syn.feedback_weight if dtype is None else syn.feedback_weight.to(dtype)
        if dtype is not None:
            U = U.to(dtype)
        if isinstance(syn, Conv):
            return F.conv_transpose2d(U, w, None, syn.stride, syn.padding, syn.output_padding)
        out = (U @ w).view(U.shape[0], *syn.pre_shape)
        return self.net._layout(out)

    def _pool_kind(self, k: int) -> str:
        syn = self.net.synapses[k]
        return syn.pool_kind if isinstance(syn, Conv) else "i"

    def _nudge(self, inp: Inputs, s_last: Tensor, beta: Beta) -> Optional[Tensor]:
        if not _beta_nonzero(beta):
            return None
        net = self.net
        last_mask = inp.mask if inp.mask is not None and net.dropout_layer == len(net.synapses) - 1 else None
        n = net.nudge(s_last, inp.target, last_mask)
        if torch.is_tensor(beta):  # one value per sample, along the batch dimension
            beta = beta.reshape(-1, *([1] * (n.dim() - 1)))
        return n * beta

    def _mask(self, inp: Inputs, k: int) -> Optional[Tensor]:
        return inp.mask if inp.mask is not None and self.net.dropout_layer == k else None

    def _autocast(self, inp: Inputs):
        dt = self.net.drive_dtype
        if dt is None or self.incremental:
            return torch.autocast(inp.x.device.type, enabled=False)
        return torch.autocast(inp.x.device.type, dtype=dt)

    # -- synchronous step, drives recomputed ------------------------------------------------------------
    def step(self, inp: Inputs, s: State, beta: Beta = 0.0) -> State:
        """One synchronous step, equal to EqNetwork.step (float64: to rounding)."""
        net, n = self.net, len(s)
        seen = net._as_seen_above(tuple(s), inp.mask)
        P: list = [inp.drive] + [None] * (n - 1)
        U: list = [None] * n
        with self._autocast(inp):
            for k in range(1, n):
                P[k], U[k], _ = self.pool_unpool(self.forward_u(k, seen[k - 1]), s[k], self._pool_kind(k))
            Fb = [self.feedback(k + 1, U[k + 1]) for k in range(n - 1)] + [None]
        nudge = self._nudge(inp, s[-1], beta)
        dtype = s[0].dtype
        return tuple(self.settle(P[k].to(dtype), None if Fb[k] is None else Fb[k].to(dtype), self.act,
                                 self._mask(inp, k), nudge if k == n - 1 else None)[0] for k in range(n))

    # -- asynchronous sweep -------------------------------------------------------------------------------
    def _async_sweep(self, inp: Inputs, s: list, u: list, beta: Beta) -> None:
        """One red-black sweep, in place on the list of states s; u holds the pre-pool drives u_k
        (u[0] unused: the input's pooled drive is constant)."""
        net, n = self.net, len(s)
        dtype = s[0].dtype
        for parity in (0, 1):
            layers = range(parity, n, 2)
            seen = net._as_seen_above(tuple(s), inp.mask)
            with self._autocast(inp):
                P = {}
                for k in layers:
                    if k == 0:
                        P[k] = inp.drive
                    else:
                        u[k] = self.forward_u(k, seen[k - 1])
                        P[k] = self.pool_unpool(u[k], s[k], self._pool_kind(k))[0]
                Fb = {k: self.feedback(k + 1, self.pool_unpool(u[k + 1], s[k + 1], self._pool_kind(k + 1))[1])
                      for k in layers if k < n - 1}
            nudge = self._nudge(inp, s[-1], beta) if (n - 1) % 2 == parity else None
            for k in layers:
                f = Fb.get(k)
                s[k] = self.settle(P[k].to(dtype), None if f is None else f.to(dtype), self.act, self._mask(inp, k),
                                   nudge if k == n - 1 else None)[0]

    def _all_u(self, inp: Inputs, s: State) -> list:
        seen = self.net._as_seen_above(tuple(s), inp.mask)
        with self._autocast(inp):
            return [None] + [self.forward_u(k, seen[k - 1]) for k in range(1, len(s))]

    # -- incremental precision --------------------------------------------------------------------------
    def _exact(self, inp: Inputs, s: State) -> tuple[list, list, list, list]:
        """Float32 (the states' dtype) drives at s: D_k (pre-pool), P_k, U_k and F_k."""
        n = len(s)
        seen = self.net._as_seen_above(tuple(s), inp.mask)
        D, P, U = [None] * n, [inp.drive] + [None] * (n - 1), [None] * n
        for k in range(1, n):
            D[k] = self.forward_u(k, seen[k - 1])
            P[k], U[k], _ = self.pool_unpool(D[k], s[k], self._pool_kind(k))
        Fb = [self.feedback(k + 1, U[k + 1]) for k in range(n - 1)] + [None]
        return D, P, U, Fb

    def _incremental_block(self, inp: Inputs, s: State, beta: Beta, steps: int) -> Block:
        """An exact recomputation at s, then `steps` steps with incrementally updated drives."""
        n, dd = len(s), self.delta_dtype
        D, P, U, Fb = self._exact(inp, s)
        U = [u if u is None or u is not s[k] else u.clone() for k, u in enumerate(U)]  # owned: updated in place
        s = list(s)
        # the weights in the increments' dtype: cast once per block, not once per step and convolution
        wf = [None] + [syn.weight.to(dd) for syn in self.net.synapses[1:]]
        wb = [None] + [syn.feedback_weight.to(dd) for syn in self.net.synapses[1:]]
        res = None
        for t in range(steps):
            nudge = self._nudge(inp, s[-1], beta)
            new, ds = zip(*(self.settle(P[k], Fb[k], self.act, self._mask(inp, k), nudge if k == n - 1 else None,
                                        s[k], dd) for k in range(n)))
            if t == steps - 1:  # the block's residual, in the states' dtype
                res = torch.stack([(a - b).abs().max() for a, b in zip(new, s)]).max()
                s = list(new)
                break
            s = list(new)
            dseen = self.net._as_seen_above(tuple(ds), inp.mask)
            dU: list = [None] * n
            for k in range(1, n):  # D_k += w_k * ds_{k-1} (no bias), in bf16; then the exact dU
                D[k] = D[k] + self.forward_u(k, dseen[k - 1], False, dd, wf[k]).to(D[k].dtype)
                P[k], U[k], dU[k] = self.pool_unpool(D[k], s[k], self._pool_kind(k), U[k], dd)
            for k in range(n - 1):
                Fb[k] = Fb[k] + self.feedback(k + 1, dU[k + 1], dd, wb[k + 1]).to(Fb[k].dtype)
        return Block(tuple(s), res)

    # -- blocks of steps (the unit a CUDA graph captures) ------------------------------------------------
    def block(self, inp: Inputs, s: State, beta: Beta, steps: int) -> Block:
        """`steps` steps from s; returns the state and the last step's max |change| (no host sync)."""
        if self.incremental:
            return self._incremental_block(inp, s, beta, steps)
        if self.schedule == "async":
            u = self._all_u(inp, s)
            cur = list(s)
            prev = s
            for _ in range(steps):
                prev = tuple(cur)
                self._async_sweep(inp, cur, u, beta)
            return Block(tuple(cur), torch.stack([(a - b).abs().max() for a, b in zip(cur, prev)]).max())
        prev = s
        for _ in range(steps):
            prev, s = s, self.step(inp, s, beta)
        return Block(s, torch.stack([(a - b).abs().max() for a, b in zip(s, prev)]).max())

    def run_block(self, inp: Inputs, s: State, beta: Beta, steps: int) -> Block:
        """block(), as a replayed CUDA graph where that is possible."""
        if not (self.graphs and inp.x.is_cuda):
            return self.block(inp, s, beta, steps)
        return self._graphed(inp, s, beta, steps)

    def _graphed(self, inp: Inputs, s: State, beta: Beta, steps: int) -> Block:
        key = (steps, tuple(t.shape for t in s), torch.is_tensor(beta), None if torch.is_tensor(beta) else beta,
               inp.mask is not None, inp.target is not None, tuple(p.data_ptr() for p in self.net.parameters()))
        g = self._graphs.get(key)
        fields = [f for f in ("x", "drive", "target", "mask") if getattr(inp, f) is not None]
        if g is None:
            static_inp = inp._replace(**{f: getattr(inp, f).clone() for f in fields})
            static_s = tuple(t.clone() for t in s)
            static_beta = beta.clone() if torch.is_tensor(beta) else beta
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph (cuDNN plans, Triton compilation)
                for _ in range(2):
                    self.block(static_inp, static_s, static_beta, steps)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.block(static_inp, static_s, static_beta, steps)
            g = self._graphs[key] = (graph, static_inp, static_s, static_beta, out)
            if len(self._graphs) > 16:  # weights reallocated, shapes changed: drop the oldest graphs
                self._graphs.pop(next(iter(self._graphs)))
        graph, static_inp, static_s, static_beta, out = g
        for f in fields:
            getattr(static_inp, f).copy_(getattr(inp, f))
        for a, b in zip(static_s, s):
            a.copy_(b)
        if torch.is_tensor(beta):
            static_beta.copy_(beta)
        graph.replay()
        # graphs read the parameters in place: optimizer steps (in place) need no recapture
        return Block(tuple(t.clone() for t in out.state), out.residual.clone())


def batched_inputs(inp: Inputs, copies: int = 2) -> Inputs:
    """The inputs of a batch repeated `copies` times along the batch (the +beta and -beta phases as one)."""
    rep = lambda t: None if t is None else torch.cat([t] * copies)  # noqa: E731
    return Inputs(rep(inp.x), rep(inp.drive), rep(inp.target), rep(inp.y), rep(inp.mask))


def plus_minus_beta(beta: float, batch: int, like: Tensor) -> Tensor:
    """(2B, 1): +beta for the first B samples, -beta for the others."""
    b = torch.full((2 * batch, 1), float(beta), dtype=like.dtype, device=like.device)
    b[batch:] = -float(beta)
    return b
