"""The relaxer: one layer update as the unit, composed into steps by a schedule, run as one explicit
settings object (RelaxSettings) says. Whoever relaxes is handed a Relaxer; nothing of it lives on the
network, and `EqNetwork.step` is its eager synchronous case.

The layer update (Laborieux et al. 2021, Eq. 8) of layer k gathers what every interaction j that
touches k sends it (core.interactions: each interaction owns its math; core.fused its kernels):

    u_j      = w_j * s_pre(j) + b_j                 interaction j's drive before pooling
    P_j, U_j = route_j(u_j, s_post(j))              pooled forward drive; s_post routed to u_j's window winners
    F_j      = w_b,j^T * U_j                         the feedback j sends to its presynaptic layer
    s_k     <- act(sum_{post(j)=k} P_j + m_k sum_{pre(j)=k} F_j + beta n_k)     m: dropout mask, n: nudge

The winners of u_j route the feedback exactly as autograd differentiates Phi (the current state's
max-pool indices). Layers are numbered as the network's: 0 the clamped input x, 1..N its neurons
(state[k - 1] is layer k); the input's interaction (into layer 1) is constant, `Inputs.drive`.

Schedules (`schedule`):
  "sync"   every layer from the previous state (Eq. 8): one step.
  "async"  red-black block coordinate updates (Scellier et al. 2023): the odd layers 1, 3, ... from their
           neighbours, then the even ones from the new states; each interaction's convolution and its
           transposed convolution run once per sweep, as in a sync step. One "step" is a sweep.

Precisions (`precision`): "strict"/"tf32"/"bf16" recompute each drive each step (bf16: the
interactions' convolutions in bfloat16, states in float32; tf32 is torch's process-wide flag, set by
the run); "bf16_incremental" keeps each interaction's drives in float32 and adds the convolution of the
states' change, D_{t+1} = D_t + w * (s_{t+1} - s_t), in bfloat16: its rounding scales with
|s_{t+1} - s_t|, which vanishes at equilibrium. An exact recomputation opens every block of
`recompute_every` steps (and every phase), which bounds the drift.

Kernels (`kernels`): "torch" (plain PyTorch, any device) or "triton" (core.fused's Triton kernels for the
elementwise half of the update; CUDA, or Triton's interpreter). `graphs`: on CUDA each block of steps is
captured and replayed as a CUDA graph. `batch_phases`: the +beta and -beta phases run as one batch of 2B.
"""
from __future__ import annotations

import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch

from .fused import IMPLS

Tensor = torch.Tensor
State = tuple[Tensor, ...]
Beta = Union[float, Tensor]  # a number, or one value per sample (batched +-beta phases), shape (B,) or (B, 1)
SCHEDULES = ("sync", "async")
PRECISIONS = ("strict", "tf32", "bf16", "bf16_incremental")
KERNELS = tuple(IMPLS)


@dataclass(frozen=True)
class RelaxSettings:
    """How steps run (see the module docstring); plain data, checked when made."""
    schedule: str = "sync"
    precision: str = "strict"
    kernels: str = "torch"
    graphs: bool = False
    batch_phases: bool = False
    recompute_every: int = 20
    delta_dtype: torch.dtype = torch.bfloat16  # bf16_incremental: the dtype of the increments

    def __post_init__(self):
        for name, value, known in (("schedule", self.schedule, SCHEDULES), ("precision", self.precision, PRECISIONS),
                                   ("kernels", self.kernels, KERNELS)):
            if value not in known:
                raise ValueError(f"relaxer {name} must be one of {', '.join(map(repr, known))}, got {value!r}")
        if self.incremental and self.schedule != "sync":
            raise ValueError("precision 'bf16_incremental' runs with schedule 'sync'")
        if not isinstance(self.recompute_every, int) or self.recompute_every < 1:
            raise ValueError(f"recompute_every must be an integer >= 1 step, got {self.recompute_every!r}")

    @property
    def incremental(self) -> bool:
        return self.precision == "bf16_incremental"

    @property
    def drive_dtype(self) -> Optional[torch.dtype]:
        """The dtype the interactions' convolutions run in while drives are recomputed (None: the states')."""
        return torch.bfloat16 if self.precision == "bf16" else None


class Block(NamedTuple):
    state: State
    residual: Tensor  # max |s_t - s_{t-1}| over every neuron at the block's last step (a 0-d device tensor)


def _beta_nonzero(beta: Beta) -> bool:
    return torch.is_tensor(beta) or beta != 0.0


_PLANS: dict = {}


def _plan(net) -> list:
    """Per layer k (1..N, index 0 unused): (interactions into k, interactions out of k, whether k's only
    forward drive is the input's, whether k is the dropout layer, whether k is the last), from the
    network's structure alone (so shared by every network of that structure)."""
    key = (tuple(net.edges), len(net.layer_shapes), net.dropout_layer)
    plan = _PLANS.get(key)
    if plan is None:
        n = len(net.layer_shapes)
        plan = _PLANS[key] = [None] + [
            (tuple(net.into[k]), tuple(net.out_of[k]), [net.edges[j][0] for j in net.into[k]] == [0],
             net.dropout_layer == k - 1, k == n) for k in range(1, n + 1)]
    return plan


def _gather(values: list, js: tuple, dtype: torch.dtype) -> tuple[Optional[Tensor], int]:
    """(values[j0] + values[j1] + ... in that order, in `dtype`; how many) over the js whose value is there."""
    if len(js) == 1:  # the common case: one interaction
        v = values[js[0]]
        return (None, 0) if v is None else (v if v.dtype is dtype else v.to(dtype), 1)
    out, n = None, 0
    for j in js:
        v = values[j]
        if v is None:
            continue
        if v.dtype is not dtype:
            v = v.to(dtype)
        out, n = (v if out is None else out + v), n + 1
    return out, n


class Relaxer:
    """Relaxation steps of any EqNetwork built from its interactions' layer updates."""

    def __init__(self, settings: RelaxSettings = RelaxSettings()):
        if not isinstance(settings, RelaxSettings):
            raise TypeError(f"settings must be RelaxSettings, got {type(settings).__name__}")
        self.settings = settings
        self.settle = IMPLS[settings.kernels][1]
        self._graphs: dict = {}
        self._last_plan: tuple = (None, None, None)  # (weakref to a network, its edges list, plan): the hot path

    def _plan(self, net) -> list:
        ref, edges, plan = self._last_plan
        if ref is None or ref() is not net or edges is not net.edges:
            plan = _plan(net)
            self._last_plan = (weakref.ref(net), net.edges, plan)
        return plan

    def __repr__(self) -> str:
        return f"Relaxer({self.settings})"

    # -- what every schedule shares ---------------------------------------------------------------------
    def _autocast(self, inp):
        dt = self.settings.drive_dtype
        return nullcontext() if dt is None else torch.autocast(inp.x.device.type, dtype=dt)

    def _drives(self, net, inp, layers: tuple, seen: tuple, js=None, u: Optional[list] = None, feedback=None):
        """P_j and F_j (lists by interaction, None where not computed) of the interactions `js` (None: all)
        at `layers` (x first); u_j computed afresh and kept in `u` when given; `feedback`: only the
        interactions whose F_j is wanted (None: all)."""
        n = len(net.edges)
        P, Fb = [None] * n, [None] * n
        kernels, fmt = self.settings.kernels, net.memory_format
        for j, (syn, (src, dst)) in enumerate(zip(net.synapses, net.edges)):
            if js is not None and j not in js:
                continue
            if src == 0:  # the clamped input: constant for the batch
                P[j] = inp.drive
                continue
            uj = syn.pre_drive(seen[src])
            if u is not None:
                u[j] = uj
            P[j], U, _ = syn.route(uj, layers[dst], kernels)
            if feedback is None or j in feedback:
                Fb[j] = syn.feedback(U, fmt)
        return P, Fb

    def _layer_update(self, net, inp, k: int, P: list, Fb: list, nudge, beta: Beta, s_prev=None, ds_dtype=None,
                      fresh: bool = False):
        """s_k <- act(sum of P_j into k + m_k sum of F_j out of k + beta n_k): the one layer update.
        `fresh`: the P_j were made for this update alone (may be written into, unless one is the input's)."""
        into, out_of, from_input, dropout, last = self._plan(net)[k]
        dtype = inp.x.dtype
        p, n_p = _gather(P, into, dtype)
        f, _ = _gather(Fb, out_of, dtype)
        return self.settle(p, f, net.activation.name, inp.mask if dropout else None, nudge if last else None,
                           s_prev, ds_dtype, beta if last else None, fresh and (n_p > 1 or not from_input))

    def _nudge(self, net, inp, s_last: Tensor, beta: Beta) -> Optional[Tensor]:
        """-dL/ds_N (times beta in the layer update), or None in a free phase."""
        if not _beta_nonzero(beta):
            return None
        last_mask = inp.mask if inp.mask is not None and net.dropout_layer == len(net.layer_shapes) - 1 else None
        return net.nudge(s_last, inp.target, last_mask).to(s_last.dtype)  # under bf16: the readout's products in it

    # -- synchronous step (Eq. 8) -----------------------------------------------------------------------
    def step(self, net, inp, s: State, beta: Beta = 0.0) -> State:
        """One synchronous step s_{t+1} = sigma(dPhi^beta/ds(x, s_t)): a pure function of (parameters,
        inputs, state, beta), so it can be captured (CUDA graphs) or differentiated (BPTT)."""
        layers = (inp.x,) + tuple(s)
        seen = layers if inp.mask is None else net.seen_by_interactions(layers, inp.mask)
        with self._autocast(inp):
            P, Fb = self._drives(net, inp, layers, seen)
            nudge = self._nudge(net, inp, s[-1], beta)
        return tuple([self._layer_update(net, inp, k, P, Fb, nudge, beta, fresh=True)[0] for k in range(1, len(s) + 1)])

    # -- asynchronous sweep -----------------------------------------------------------------------------
    def _sweep(self, net, inp, s: list, u: list, beta: Beta) -> None:
        """One red-black sweep in place on the list of states s; u holds each interaction's u_j, kept
        from the half-sweep that last computed it (its presynaptic layer has not changed since)."""
        n = len(s)
        for parity in (1, 0):  # layers 1, 3, ... then 2, 4, ...
            ks = set(range(2 - parity, n + 1, 2))
            layers = (inp.x,) + tuple(s)
            seen = net.seen_by_interactions(layers, inp.mask)
            fresh = {j for j, (_, dst) in enumerate(net.edges) if dst in ks}
            with self._autocast(inp):
                P, Fb = self._drives(net, inp, layers, seen, fresh, u,
                                     feedback={j for j in fresh if net.edges[j][0] in ks})
                for j, (src, dst) in enumerate(net.edges):
                    if src in ks and dst not in ks:  # feedback into a layer of this half, u_j's winners
                        Fb[j] = net.synapses[j].feedback(net.synapses[j].route(u[j], layers[dst], self.settings.kernels)[1],
                                                         net.memory_format)
                nudge = self._nudge(net, inp, s[-1], beta) if n in ks else None
            for k in sorted(ks):
                s[k - 1] = self._layer_update(net, inp, k, P, Fb, nudge, beta, fresh=True)[0]

    def _all_u(self, net, inp, s: State) -> list:
        layers = (inp.x,) + tuple(s)
        seen = net.seen_by_interactions(layers, inp.mask)
        with self._autocast(inp):
            return [None if src == 0 else net.synapses[j].pre_drive(seen[src]) for j, (src, _) in enumerate(net.edges)]

    # -- incremental precision --------------------------------------------------------------------------
    def _incremental_block(self, net, inp, s: State, beta: Beta, steps: int) -> Block:
        """An exact recomputation at s (the states' dtype), then `steps` steps whose drives are updated
        by the bfloat16 convolutions of the states' change."""
        dd, kern, fmt = self.settings.delta_dtype, self.settings.kernels, net.memory_format
        layers = (inp.x,) + tuple(s)
        seen = net.seen_by_interactions(layers, inp.mask)
        inner = [j for j, (src, _) in enumerate(net.edges) if src != 0]
        D = {j: net.synapses[j].pre_drive(seen[net.edges[j][0]]) for j in inner}
        n = len(net.edges)
        P, U, Fb = [inp.drive if src == 0 else None for src, _ in net.edges], [None] * n, [None] * n
        for j in inner:
            syn, dst = net.synapses[j], net.edges[j][1]
            P[j], U[j], _ = syn.route(D[j], layers[dst], kern)
            U[j] = U[j].clone() if U[j] is layers[dst] else U[j]  # owned: updated in place
            Fb[j] = syn.feedback(U[j], fmt)
        # the weights in the increments' dtype: cast once per block, not once per step
        wf = {j: net.synapses[j].weight.to(dd) for j in inner}
        wb = {j: net.synapses[j].feedback_weight.to(dd) for j in inner}
        s, res = list(s), None
        for t in range(steps):
            nudge = self._nudge(net, inp, s[-1], beta)
            new, ds = zip(*(self._layer_update(net, inp, k, P, Fb, nudge, beta, s[k - 1], dd)
                            for k in range(1, len(s) + 1)))
            if t == steps - 1:  # the block's residual, in the states' dtype
                res = torch.stack([(a - b).abs().max() for a, b in zip(new, s)]).max()
                s = list(new)
                break
            s = list(new)
            dseen = net.seen_by_interactions((None,) + tuple(ds), inp.mask)
            for j in inner:  # D_j += w_j * ds_pre (no bias), in bf16; then the exact dU_j and F_j += w_b^T dU_j
                syn, (src, dst) = net.synapses[j], net.edges[j]
                D[j] = D[j] + syn.pre_drive(dseen[src], False, dd, wf[j]).to(D[j].dtype)
                P[j], U[j], dU = syn.route(D[j], s[dst - 1], kern, U[j], dd)
                Fb[j] = Fb[j] + syn.feedback(dU, fmt, dd, wb[j]).to(Fb[j].dtype)
        return Block(tuple(s), res)

    # -- blocks of steps (the unit a CUDA graph captures) -----------------------------------------------
    def block(self, net, inp, s: State, beta: Beta, steps: int) -> Block:
        """`steps` steps from s; returns the state and the last step's max |change| (no host sync)."""
        if steps < 1:
            raise ValueError(f"a block runs at least one step, got {steps}")
        if self.settings.incremental:
            return self._incremental_block(net, inp, s, beta, steps)
        prev = s
        if self.settings.schedule == "async":
            u, cur = self._all_u(net, inp, s), list(s)
            for _ in range(steps):
                prev = tuple(cur)
                self._sweep(net, inp, cur, u, beta)
            s = tuple(cur)
        else:
            for _ in range(steps - 1):  # no reference to the state before: the allocator reuses it
                s = self.step(net, inp, s, beta)
            prev, s = s, self.step(net, inp, s, beta)
        return Block(s, torch.stack([(a - b).abs().max() for a, b in zip(s, prev)]).max())

    def run_block(self, net, inp, s: State, beta: Beta, steps: int) -> Block:
        """block(), as a replayed CUDA graph where that is possible."""
        if not (self.settings.graphs and inp.x.is_cuda) or torch.is_grad_enabled():
            return self.block(net, inp, s, beta, steps)
        return self._graphed(net, inp, s, beta, steps)

    def block_size(self, steps: int) -> int:
        """The largest block a run of `steps` may use (an exact recomputation opens each incremental block)."""
        return min(steps, self.settings.recompute_every) if self.settings.incremental else steps

    def advance(self, net, inp, s: State, beta: Beta, steps: int) -> Block:
        """`steps` steps in blocks of at most block_size(steps)."""
        size, done, out = self.block_size(steps), 0, None
        while done < steps:
            k = min(size, steps - done)
            out = self.run_block(net, inp, s, beta, k)
            s, done = out.state, done + k
        return out

    def _graphed(self, net, inp, s: State, beta: Beta, steps: int) -> Block:
        key = (id(net), steps, tuple(t.shape for t in s), torch.is_tensor(beta), None if torch.is_tensor(beta) else beta,
               inp.mask is not None, inp.target is not None, tuple(p.data_ptr() for p in net.parameters()))
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
                    self.block(net, static_inp, static_s, static_beta, steps)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.block(net, static_inp, static_s, static_beta, steps)
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


EAGER = Relaxer()  # the reference: synchronous steps, PyTorch kernels, one phase after the other


def batched_inputs(inp, copies: int = 2):
    """The inputs of a batch repeated `copies` times along the batch (the +beta and -beta phases as one)."""
    rep = lambda t: None if t is None else torch.cat([t] * copies)  # noqa: E731
    return inp._replace(x=rep(inp.x), drive=rep(inp.drive), target=rep(inp.target), y=rep(inp.y), mask=rep(inp.mask))


def plus_minus_beta(beta: float, batch: int, like: Tensor) -> Tensor:
    """(2B, 1): +beta for the first B samples, -beta for the others."""
    b = torch.full((2 * batch, 1), float(beta), dtype=like.dtype, device=like.device)
    b[batch:] = -float(beta)
    return b
