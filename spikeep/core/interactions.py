"""Interactions: the terms of the primitive function Phi, each joining two layers of neurons.

An interaction declares (Laborieux et al. 2021, Eq. 7):

* its parameters by name (`param_names`), registered as nn.Parameters of the same names;
* its term of Phi, phi = s_post . P(w * s_pre + b), and so the drive it sends to each side: the forward
  drive dphi/ds_post = P(w * s_pre + b) and the feedback drive dphi/ds_pre = w_b^T * unpool(s_post),
  where the feedback weights w_b are a property of the interaction (`feedback_weight`: the forward
  weights themselves for the symmetric synapses here; a unidirectional kind can hold its own);
* its local update {name: dphi/dtheta} from the states of the two layers it joins (pre, post) only,
  which is what EP's estimators difference between phases.

Spiking networks build the same forward drive from a synaptic current instead of a state:
`forward_current(z) = w * z` (no bias, before pooling) and `drive_from_current(u) = P(u + b)` (a max-pool can be
routed by the winners of another map, e.g. a slower trace of u: `drive_from_current(u, route)`).

Weights use PyTorch's standard layouts and initialisation (nn.Linear / nn.Conv2d: uniform Kaiming
with a = sqrt(5), bias uniform in +-1/sqrt(fan_in)), times an optional scale, so they can be
loaded into and exported from ordinary PyTorch layers. All drives act on whole batches; local updates
are averaged over the batch (the EP estimate of the gradient of the batch-mean loss).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from .fused import IMPLS, Pooled
from .pooling import max_pool_2x2, max_unpool_2x2, take_2x2

Tensor = torch.Tensor
Grads = dict[str, Tensor]

POOLS = {"m": "2x2 max-pool", "a": "2x2 avg-pool", "i": "no pooling"}


def _standard_init(weight: Tensor, bias: Optional[Tensor], fan_in: int, scale: float) -> None:
    """PyTorch's default nn.Linear / nn.Conv2d initialisation, multiplied by `scale`."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    with torch.no_grad():
        weight.mul_(scale)
        if bias is not None:
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(bias, -bound, bound)
            bias.mul_(scale)


class Interaction(nn.Module):
    """What every interaction between two layers provides (see the module docstring)."""
    kind = "interaction"
    param_names: tuple[str, ...] = ("weight", "bias")
    pre_shape: tuple[int, ...]
    post_shape: tuple[int, ...]
    current_shape: tuple[int, ...]  # shape of w * s_pre before pooling (a spiking layer's synaptic current)

    @property
    def feedback_weight(self) -> Tensor:
        """The weights that carry the feedback drive: the forward weights (symmetric synapses)."""
        return self.weight

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError

    def feedback_drive(self, post: Tensor, indices: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward_current(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def drive_from_current(self, u: Tensor, route: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """P(u + b) and the max-pool indices; with `route` (a map of u's shape) a max-pool takes u + b at
        route's winners instead of its own (other poolings ignore it)."""
        raise NotImplementedError

    def phi(self, pre: Tensor, post: Tensor) -> Tensor:
        raise NotImplementedError

    def local_update(self, pre: Tensor, post: Tensor) -> Grads:
        raise NotImplementedError

    def local_update_delta(self, pre_a: Tensor, post_a: Tensor, pre_b: Tensor, post_b: Tensor) -> Grads:
        """local_update(a) - local_update(b), computed without cancellation: the phases' states are
        differenced before they are correlated (EP's estimates are differences of nearly equal terms)."""
        raise NotImplementedError

    # -- the interaction's part of a layer update (core.relaxer composes them) ---------------------------
    def pre_drive(self, pre: Tensor, bias: bool = True, dtype: Optional[torch.dtype] = None,
                  weight: Optional[Tensor] = None) -> Tensor:
        """u = w * pre (+ b), before pooling; in `dtype` if given (the weights cast to it, or `weight`:
        a copy already in that dtype)."""
        raise NotImplementedError

    def route(self, u: Tensor, post: Tensor, kernels: str = "torch", u_prev: Optional[Tensor] = None,
              dU_dtype: Optional[torch.dtype] = None) -> Pooled:
        """(P, U, dU): the pooled forward drive P(u), the postsynaptic state routed back through the
        pooling with u's winners (U), and with u_prev also dU = U - u_prev (core.fused's kernels)."""
        return Pooled(u, post, None if u_prev is None else (post - u_prev).to(dU_dtype or post.dtype))

    def feedback(self, U: Tensor, memory_format: torch.memory_format = torch.contiguous_format,
                 dtype: Optional[torch.dtype] = None, weight: Optional[Tensor] = None) -> Tensor:
        """The feedback drive w_b^T * U into the presynaptic layer (U from `route`), in its shape."""
        raise NotImplementedError

    # -- what the rest of the package asks of an interaction instead of its kind --------------------------
    flattens_input = False  # True: takes any presynaptic shape of its size, flattened (dense)
    by_kernel_slices = False  # spikes propagate by kernel slices (forward_events / feedback_events), no fan-out rows

    def to_memory_format(self, memory_format: torch.memory_format) -> None:
        """Keep the weights in this memory format where it means something (conv kernels)."""

    # -- spiking: events and fan-out, as a chip stores and sends them (spikeep.spiking) ------------------
    def forward_rows(self) -> Optional[Tensor]:
        """One row per presynaptic neuron: the synapses its spike drives forward (None: by kernel slices)."""
        return None

    def feedback_rows(self) -> Optional[Tensor]:
        """One row per postsynaptic neuron: the synapses its spike drives back (None: by kernel slices)."""
        return None

    def forward_events(self, z: Tensor) -> Tensor:
        """The pre-pool forward current w * z from the presynaptic spikes z alone (by events)."""
        raise NotImplementedError

    def feedback_events(self, z: Tensor, indices: Optional[Tensor]) -> Tensor:
        """The feedback current w_b^T * unpool(z) from the postsynaptic spikes z alone (by events)."""
        raise NotImplementedError

    def forward_fan_out(self, dtype: torch.dtype, device) -> Tensor:
        """Synapses each presynaptic neuron drives, in the pre shape (SynOps = spikes x fan-out)."""
        raise NotImplementedError

    def feedback_fan_out(self, dtype: torch.dtype, device) -> Tensor:
        """Synapses each postsynaptic neuron drives back, in the post shape."""
        raise NotImplementedError

    # -- NIR (spikeep.training.nir_export passes the nir module in) ----------------------------------------
    def nir_refusal(self) -> Optional[str]:
        """Why NIR cannot express this interaction at all (None: it can)."""
        return f"a {type(self).__name__}, which export does not know"

    def nir_nodes(self, nir, k: int) -> list[tuple[str, object]]:
        """(name, node) of the forward path from the presynaptic layer's spikes to the postsynaptic
        neurons' input current, in order."""
        raise NotImplementedError

    def nir_feedback(self, nir) -> tuple[Optional[object], str]:
        """(node, "") of the feedback path, or (None, why NIR cannot express it)."""
        return None, f"feedback of a {type(self).__name__}"


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _cast(w: Tensor, dtype: Optional[torch.dtype], weight: Optional[Tensor]) -> Tensor:
    return weight if weight is not None else w if dtype is None else w.to(dtype)


def _bilinear_delta(corr, qa: Tensor, pa: Tensor, qb: Tensor, pb: Tensor) -> Tensor:
    """corr(qa, pa) - corr(qb, pb) for corr bilinear, as corr(qa - qb, (pa + pb)/2) + corr((qa + qb)/2, pa - pb)
    (one correlation when qa is qb: the clamped input of the first layer)."""
    if qa is qb:
        return corr(qa, pa - pb)
    return (corr(qa - qb, pa + pb) + corr(qa + qb, pa - pb)) * 0.5


def _kernel_offsets(pos: Tensor, k: int, stride: int, padding: int, size: int, forward: bool
                    ) -> tuple[Tensor, Tensor]:
    """Positions reached along one axis by events at `pos` through kernel taps 0..k-1, (E, k), and a
    mask of those that exist. forward: output o with o s - p + tap = pos; feedback: input o s - p + tap."""
    tap = torch.arange(k, device=pos.device)
    if forward:
        num = pos[:, None] + padding - tap[None, :]
        out = torch.div(num, stride, rounding_mode="floor")
        ok = (num % stride == 0) & (out >= 0) & (out < size)
    else:
        out = pos[:, None] * stride - padding + tap[None, :]
        ok = (out >= 0) & (out < size)
    return out, ok


def _scatter_slices(b: Tensor, y: Tensor, x: Tensor, ok: Tensor, slices: Tensor, batch: int,
                    hw: tuple[int, int], channels: int) -> Tensor:
    """Add each event's kernel slices (E, k, k, C) at (b, :, y, x) of a (batch, C, h, w) current."""
    h, w = hw
    flat = (b[:, None, None] * h + y[:, :, None]) * w + x[:, None, :]  # (E, k, k)
    out = slices.new_zeros(batch * h * w, channels)
    out.index_add_(0, flat[ok], slices[ok])
    return out.view(batch, h, w, channels).permute(0, 3, 1, 2)


class Dense(Interaction):
    """All-to-all synapses, phi = s_post . (W s_pre + b); W has nn.Linear's layout (out, in)."""
    kind = "dense"

    def __init__(self, pre_shape: tuple[int, ...], n_out: int, scale: float = 1.0):
        super().__init__()
        self.pre_shape = tuple(pre_shape)
        n_in = math.prod(self.pre_shape)
        self.post_shape = self.current_shape = (n_out,)
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        self.bias = nn.Parameter(torch.empty(n_out))
        _standard_init(self.weight, self.bias, n_in, scale)

    def forward_drive(self, pre: Tensor) -> tuple[Tensor, None]:
        """dphi/ds_post = W s_pre + b. Returns (drive, pooling indices = None)."""
        return F.linear(pre.flatten(1), self.weight, self.bias), None

    def feedback_drive(self, post: Tensor, indices: None = None) -> Tensor:
        """dphi/ds_pre = W_b^T s_post, in the shape of the presynaptic layer."""
        return (post @ self.feedback_weight).view(post.shape[0], *self.pre_shape)

    def forward_current(self, z: Tensor) -> Tensor:
        return F.linear(z.flatten(1), self.weight)

    def drive_from_current(self, u: Tensor, route: Optional[Tensor] = None) -> tuple[Tensor, None]:
        return u + self.bias, None

    def phi(self, pre: Tensor, post: Tensor) -> Tensor:
        """Per-sample phi = s_post . (W s_pre + b)."""
        return (post * F.linear(pre.flatten(1), self.weight, self.bias)).sum(1)

    def local_update(self, pre: Tensor, post: Tensor) -> Grads:
        """Batch-mean dphi/dW = <s_post s_pre^T>, dphi/db = <s_post>: pre and post only."""
        n = pre.shape[0]
        return {"weight": post.t() @ pre.flatten(1) / n, "bias": post.sum(0) / n}

    def local_update_delta(self, pre_a: Tensor, post_a: Tensor, pre_b: Tensor, post_b: Tensor) -> Grads:
        n = pre_a.shape[0]
        qa = pre_a.flatten(1)
        qb = qa if pre_b is pre_a else pre_b.flatten(1)
        dw = _bilinear_delta(lambda q, p: p.t() @ q, qa, post_a, qb, post_b)
        return {"weight": dw / n, "bias": (post_a - post_b).sum(0) / n}

    flattens_input = True

    def pre_drive(self, pre: Tensor, bias: bool = True, dtype: Optional[torch.dtype] = None,
                  weight: Optional[Tensor] = None) -> Tensor:
        b = self.bias if bias else None
        if dtype is not None:
            pre, b = pre.to(dtype), None if b is None else b.to(dtype)
        return F.linear(pre.flatten(1), _cast(self.weight, dtype, weight), b)

    def feedback(self, U: Tensor, memory_format: torch.memory_format = torch.contiguous_format,
                 dtype: Optional[torch.dtype] = None, weight: Optional[Tensor] = None) -> Tensor:
        if dtype is not None:
            U = U.to(dtype)
        out = (U @ _cast(self.feedback_weight, dtype, weight)).view(U.shape[0], *self.pre_shape)
        return out.contiguous(memory_format=memory_format) if out.dim() == 4 else out

    def forward_rows(self) -> Tensor:
        return self.weight.t()

    def feedback_rows(self) -> Tensor:
        return self.feedback_weight

    def forward_fan_out(self, dtype: torch.dtype, device) -> Tensor:
        return torch.full(self.pre_shape, float(self.post_shape[0]), dtype=dtype, device=device)

    def feedback_fan_out(self, dtype: torch.dtype, device) -> Tensor:
        return torch.full(self.post_shape, float(math.prod(self.pre_shape)), dtype=dtype, device=device)

    def nir_refusal(self) -> Optional[str]:
        return None

    def nir_nodes(self, nir, k: int) -> list[tuple[str, object]]:
        nodes = []
        if k > 0 and len(self.pre_shape) > 1:  # a conv layer below: flatten it
            nodes.append((f"flatten_{k}", nir.Flatten(input_type={"input": np.array(self.pre_shape)}, start_dim=0,
                                                      end_dim=-1)))
        return nodes + [(f"affine_{k}", nir.Affine(weight=_np(self.weight), bias=_np(self.bias)))]

    def nir_feedback(self, nir) -> tuple[Optional[object], str]:
        if len(self.pre_shape) == 1:
            return nir.Linear(weight=_np(self.feedback_weight.t())), ""
        return None, "dense synapse into a conv layer: NIR has no node to unflatten W^T z"

    def extra_repr(self) -> str:
        return f"{math.prod(self.pre_shape)} -> {self.post_shape[0]}"


class SoftmaxReadout(Dense):
    """w_out of the softmax readout y_hat = softmax(w_out s_N + b_out) (Eq. 17). It sits outside the
    dynamics: it takes no part in Phi, only in the cost of the nudged phases, Phi^beta = Phi - beta CE."""

    def cost_update(self, s_last: Tensor, target: Tensor, beta: float) -> Grads:
        """Batch-mean dPhi^beta/dw_out = -beta dCE/dw_out (Eq. 18) from s_N and the label."""
        if beta == 0.0:
            return {name: torch.zeros_like(p) for name, p in self.named_parameters()}
        n = s_last.shape[0]
        err = torch.softmax(self.forward_drive(s_last)[0], dim=1) - target  # dCE/dz
        s_n = s_last.flatten(1)
        return {"weight": -beta * (err.t() @ s_n) / n, "bias": -beta * err.sum(0) / n}


class Conv(Interaction):
    """Convolutional synapses followed by pooling P: phi = s_post . P(w * s_pre + b).

    `pool` is one letter: 'm' 2x2 max-pool, 'a' 2x2 avg-pool, 'i' none. Shapes are per sample,
    fixed at construction, so no step computes a shape.
    """
    kind = "conv"

    def __init__(self, pre_shape: tuple[int, int, int], out_channels: int, kernel: int,
                 stride: int = 1, padding: int = 0, pool: str = "m", scale: float = 1.0):
        super().__init__()
        if pool not in POOLS:
            known = ", ".join(f"'{k}' ({v})" for k, v in POOLS.items())
            raise ValueError(f"unknown pooling letter {pool!r}; use one of {known}")
        c, h, w = pre_shape
        for name, v, lo in (("kernel", kernel, 1), ("stride", stride, 1), ("padding", padding, 0)):
            if int(v) != v or v < lo:
                raise ValueError(f"conv {name} must be an integer >= {lo}, got {v!r}")
        hc = (h + 2 * padding - kernel) // stride + 1
        wc = (w + 2 * padding - kernel) // stride + 1
        if hc < 1 or wc < 1 or (pool != "i" and (hc < 2 or wc < 2)):
            raise ValueError(f"conv (kernel {kernel}, stride {stride}, padding {padding}, pool {pool!r}) "
                             f"does not fit an input of shape {tuple(pre_shape)}")
        self.pre_shape = (c, h, w)
        self.conv_hw = (hc, wc)
        self.current_shape = (out_channels, hc, wc)
        self.post_shape = (out_channels, hc // 2, wc // 2) if pool != "i" else (out_channels, hc, wc)
        self.kernel, self.stride, self.padding, self.pool_kind = kernel, stride, padding, pool
        # transposed convolution must give back the input size exactly (stride > 1 leaves a remainder)
        self.output_padding = (h - ((hc - 1) * stride - 2 * padding + kernel),
                               w - ((wc - 1) * stride - 2 * padding + kernel))
        self.weight = nn.Parameter(torch.empty(out_channels, c, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(out_channels))
        _standard_init(self.weight, self.bias, c * kernel * kernel, scale)

    # -- pooling and its adjoint ------------------------------------------------------------------
    def pool(self, z: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """P(z), with the max-pool indices (None for other poolings)."""
        if self.pool_kind == "m":
            return max_pool_2x2(z)
        if self.pool_kind == "a":
            return F.avg_pool2d(z, 2, 2), None
        return z, None

    def unpool(self, g: Tensor, indices: Optional[Tensor]) -> Tensor:
        """Adjoint of the pooling: dP(z)/dz^T g, in the conv output's shape."""
        if self.pool_kind == "m":  # route each value back to the position that won the max
            return max_unpool_2x2(g, indices, self.conv_hw)
        if self.pool_kind == "a":  # spread each value over its 2x2 window, 1/4 each
            up = g.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).mul_(0.25)
            hc, wc = self.conv_hw
            return F.pad(up, (0, wc - up.shape[3], 0, hc - up.shape[2]))
        return g

    # -- drives -------------------------------------------------------------------------------------
    def forward_drive(self, pre: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """dphi/ds_post = P(w * s_pre + b); also returns the max-pool indices (None otherwise)."""
        return self.pool(F.conv2d(pre, self.weight, self.bias, self.stride, self.padding))

    def feedback_drive(self, post: Tensor, indices: Optional[Tensor]) -> Tensor:
        """dphi/ds_pre = w_b^T * unpool(s_post): max-unpool with `indices`, then transposed conv."""
        return F.conv_transpose2d(self.unpool(post, indices), self.feedback_weight, None, self.stride,
                                  self.padding, self.output_padding)

    def forward_current(self, z: Tensor) -> Tensor:
        return F.conv2d(z, self.weight, None, self.stride, self.padding)

    def drive_from_current(self, u: Tensor, route: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if route is None or self.pool_kind != "m":
            return self.pool(u + self.bias.view(1, -1, 1, 1))
        idx = max_pool_2x2(route)[1]  # the bias is per channel: it moves no window's winner
        return take_2x2(u, idx) + self.bias.view(1, -1, 1, 1), idx

    def phi(self, pre: Tensor, post: Tensor) -> Tensor:
        return (post * self.forward_drive(pre)[0]).sum((1, 2, 3))

    def local_update(self, pre: Tensor, post: Tensor) -> Grads:
        """Batch-mean dphi/dw, dphi/db from the states of the two layers only.

        dphi/dw correlates s_pre with the unpooled s_post; the pooling indices are those of
        this very state (a max-pool synapse knows which of its inputs won).
        """
        n = pre.shape[0]
        indices = self.forward_drive(pre)[1] if self.pool_kind == "m" else None
        g = self.unpool(post, indices)
        dw = conv2d_weight(pre, self.weight.shape, g, self.stride, self.padding)
        return {"weight": dw / n, "bias": post.sum((0, 2, 3)) / n}

    def _unpooled(self, pre: Tensor, post: Tensor) -> Tensor:
        """s_post routed back through the pooling with the indices of this very state."""
        return self.unpool(post, self.forward_drive(pre)[1] if self.pool_kind == "m" else None)

    def local_update_delta(self, pre_a: Tensor, post_a: Tensor, pre_b: Tensor, post_b: Tensor) -> Grads:
        """Each phase keeps its own max-pool indices; the update is bilinear in (pre, unpooled post)."""
        n = pre_a.shape[0]
        shape, stride, padding = self.weight.shape, self.stride, self.padding
        dw = _bilinear_delta(lambda q, g: conv2d_weight(q, shape, g, stride, padding),
                             pre_a, self._unpooled(pre_a, post_a), pre_b, self._unpooled(pre_b, post_b))
        return {"weight": dw / n, "bias": (post_a - post_b).sum((0, 2, 3)) / n}

    def pre_drive(self, pre: Tensor, bias: bool = True, dtype: Optional[torch.dtype] = None,
                  weight: Optional[Tensor] = None) -> Tensor:
        b = self.bias if bias else None
        if dtype is not None:
            pre, b = pre.to(dtype), None if b is None else b.to(dtype)
        return F.conv2d(pre, _cast(self.weight, dtype, weight), b, self.stride, self.padding)

    def route(self, u: Tensor, post: Tensor, kernels: str = "torch", u_prev: Optional[Tensor] = None,
              dU_dtype: Optional[torch.dtype] = None) -> Pooled:
        if u_prev is None and torch.is_grad_enabled() and (u.requires_grad or post.requires_grad):  # autograd
            P, idx = self.pool(u)
            return Pooled(P, self.unpool(post, idx))
        return IMPLS[kernels][0](u, post, self.pool_kind, u_prev, dU_dtype)

    def feedback(self, U: Tensor, memory_format: torch.memory_format = torch.contiguous_format,
                 dtype: Optional[torch.dtype] = None, weight: Optional[Tensor] = None) -> Tensor:
        if dtype is not None:
            U = U.to(dtype)
        return F.conv_transpose2d(U, _cast(self.feedback_weight, dtype, weight), None, self.stride, self.padding,
                                  self.output_padding)

    by_kernel_slices = True

    def forward_events(self, z: Tensor) -> Tensor:
        """Each spike (b, c, i, j) adds the kernel slice W[:, c, ky, kx] at the outputs it reaches."""
        b, c, i, j = z.nonzero().unbind(1)
        k, (ho, wo) = self.kernel, self.conv_hw
        oy, ok_y = _kernel_offsets(i, k, self.stride, self.padding, ho, True)
        ox, ok_x = _kernel_offsets(j, k, self.stride, self.padding, wo, True)
        slices = self.weight.permute(1, 2, 3, 0)[c]  # (E, ky, kx, C_out)
        return _scatter_slices(b, oy.clamp(0, ho - 1), ox.clamp(0, wo - 1), ok_y[:, :, None] & ok_x[:, None, :],
                               slices, z.shape[0], (ho, wo), self.current_shape[0])

    def feedback_events(self, z: Tensor, indices: Optional[Tensor]) -> Tensor:
        """Each spike is routed back through the pooling (`indices`: this step's max-pool winners), then
        every routed event (b, co, o_y, o_x) of weight v adds v W_b[co, :, ky, kx] at the inputs it reaches."""
        g = self.unpool(z, indices)
        b, co, oy, ox = g.nonzero().unbind(1)
        v = g[b, co, oy, ox]
        k, (_, h, w) = self.kernel, self.pre_shape
        iy, ok_y = _kernel_offsets(oy, k, self.stride, self.padding, h, False)
        ix, ok_x = _kernel_offsets(ox, k, self.stride, self.padding, w, False)
        slices = self.feedback_weight.permute(0, 2, 3, 1)[co] * v[:, None, None, None]  # (E, ky, kx, C_in)
        return _scatter_slices(b, iy.clamp(0, h - 1), ix.clamp(0, w - 1), ok_y[:, :, None] & ok_x[:, None, :],
                               slices, z.shape[0], (h, w), self.pre_shape[0])

    def forward_fan_out(self, dtype: torch.dtype, device) -> Tensor:
        ones = torch.ones(1, *self.current_shape, dtype=dtype, device=device)
        return F.conv_transpose2d(ones, torch.ones_like(self.weight), None, self.stride, self.padding,
                                  self.output_padding)[0]

    def feedback_fan_out(self, dtype: torch.dtype, device) -> Tensor:
        ones = torch.ones(1, *self.pre_shape, dtype=dtype, device=device)
        cnt = F.conv2d(ones, torch.ones_like(self.weight), None, self.stride, self.padding)  # per conv output
        if self.pool_kind == "a":  # a spike goes back to all 4 positions of its window (1/4 each)
            return (4 * F.avg_pool2d(cnt, 2, 2))[0]
        if self.pool_kind == "m":  # to the window's winner: counted as the window's largest fan-out (a bound)
            return F.max_pool2d(cnt, 2, 2)[0]
        return cnt[0]

    def nir_refusal(self) -> Optional[str]:
        if self.pool_kind == "m":
            return "it max-pools: NIR has no max-pool node; train with average pooling (model.pools 'a')"
        return None

    def nir_nodes(self, nir, k: int) -> list[tuple[str, object]]:
        avg = self.pool_kind == "a"  # average = the 2x2 sum of a conv carrying the 1/4
        f = 0.25 if avg else 1.0
        nodes = [(f"conv_{k}", nir.Conv2d(input_shape=tuple(self.pre_shape[1:]), weight=_np(self.weight) * f,
                                          stride=self.stride, padding=self.padding, dilation=1, groups=1,
                                          bias=_np(self.bias) * f))]
        if avg:
            nodes.append((f"sumpool_{k}", nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                                        padding=np.array([0, 0]))))
        return nodes

    def nir_feedback(self, nir) -> tuple[Optional[object], str]:
        return None, "conv synapse: a transposed convolution through the pooling's adjoint, which NIR cannot express"

    def to_memory_format(self, memory_format: torch.memory_format) -> None:
        for p in (self.weight, getattr(self, "weight_b", None)):
            if p is not None:
                p.data = p.data.contiguous(memory_format=memory_format)

    def extra_repr(self) -> str:
        return (f"{self.pre_shape} -> {self.post_shape}, kernel={self.kernel}, stride={self.stride}, "
                f"padding={self.padding}, pool={self.pool_kind!r}")


class _Unidirectional:
    """Separate feedback weights w_b (no bias), initialised independently of the forward weights w_f
    (Laborieux et al. 2021, section 2.4): the feedback drive goes through w_b. A max-pool synapse
    unpools its feedback with the indices of its forward pooling, the only information w_f and w_b
    share. The local update of w_b is its vector-field term (Eq. 20), dF/dw_b . s = the correlation of
    the same two layers as for w_f (pre, unpooled post): equal to w_f's, so the estimators need no
    change; `kolen_pollack` (learning.estimators) adds the shared update with leakage (Eq. 21).
    There is no energy when w_b != w_f: `phi` is the forward terms (Phi of the tied network)."""
    param_names = ("weight", "bias", "weight_b")

    def _init_feedback(self, fan_in: int, scale: float) -> None:
        self.weight_b = nn.Parameter(torch.empty_like(self.weight))
        _standard_init(self.weight_b, None, fan_in, scale)

    @property
    def feedback_weight(self) -> Tensor:
        return self.weight_b

    def local_update(self, pre: Tensor, post: Tensor) -> Grads:
        g = super().local_update(pre, post)
        return {**g, "weight_b": g["weight"]}

    def local_update_delta(self, pre_a: Tensor, post_a: Tensor, pre_b: Tensor, post_b: Tensor) -> Grads:
        g = super().local_update_delta(pre_a, post_a, pre_b, post_b)
        return {**g, "weight_b": g["weight"]}


class UniDense(_Unidirectional, Dense):
    """Dense synapses with separate feedback weights w_b (same layout as W)."""
    kind = "unidense"

    def __init__(self, pre_shape: tuple[int, ...], n_out: int, scale: float = 1.0):
        super().__init__(pre_shape, n_out, scale)
        self._init_feedback(math.prod(self.pre_shape), scale)


class UniConv(_Unidirectional, Conv):
    """Convolutional synapses with separate feedback kernels w_b (same layout as w, used transposed)."""
    kind = "uniconv"

    def __init__(self, pre_shape: tuple[int, int, int], out_channels: int, kernel: int,
                 stride: int = 1, padding: int = 0, pool: str = "m", scale: float = 1.0):
        super().__init__(pre_shape, out_channels, kernel, stride, padding, pool, scale)
        self._init_feedback(pre_shape[0] * kernel * kernel, scale)
