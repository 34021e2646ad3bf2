"""Spike propagation: how one step's spikes become synaptic currents, by two interchangeable back ends.

* dense: matrix products (or convolutions) over the whole 0/1 spike tensor;
* event: only the neurons that spiked send anything, as on a chip with fan-out lists.
  Dense synapses: each neuron owns one row holding every dense synapse it drives, [W_{k+1}^T | W_{b,k}]
  (forward targets, then feedback targets through the synapse's feedback weights); the rows of the
  neurons that spiked are summed with embedding_bag.
  Conv synapses (convolutional fan-out): a spike at (c, i, j) adds its kernel slice W[:, c, ky, kx]
  to the pre-pool currents of the output positions (o_y, o_x) with o s - p + k = (i, j); feedback
  goes the other way: a spike of the pooled layer is routed back through the pooling (to the window's
  max-pool winner, or 1/4 to each position of an average-pool window) and each such event adds the
  transposed slice W_b[co, :, ky, kx] to the input positions it reaches. Work grows with the spikes
  times the fan-out (the SynOps), not with the layer's size.

Both back ends give the same spikes and currents (tested in float64).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..core.interactions import Conv, Dense
from ..core.network import EqNetwork

Tensor = torch.Tensor
Tables = list[Optional[Tensor]]


def check_spikes(z: Tensor, what: str = "spike tensor") -> Tensor:
    """Refuse a tensor that is not made of 0s and 1s (a spike tensor)."""
    if not torch.is_tensor(z):
        raise TypeError(f"{what} must be a tensor of 0/1 spikes, got {type(z).__name__}")
    bad = (z != 0) & (z != 1)
    if bool(bad.any()):
        v = z[bad].flatten()[0].item()
        raise ValueError(f"{what} must hold only 0 and 1 (spikes), found {v!r} "
                         f"({int(bad.sum())} of {z.numel()} entries)")
    return z


def _bags(z: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the neurons that spiked in each sample, as embedding_bag (input, offsets)."""
    flat = z.flatten(1)
    j = flat.nonzero()[:, 1]  # row-major: grouped by sample
    if flat.shape[0] == 1:
        return j, torch.zeros(1, dtype=j.dtype, device=j.device)
    counts = flat.sum(1, dtype=j.dtype) if flat.is_floating_point() else flat.count_nonzero(1)
    return j, counts.cumsum(0).sub_(counts)


def fan_out_tables(net: EqNetwork, include_input: bool = True) -> Tables:
    """Per source layer (input first), one row per neuron holding every dense synapse it drives, as a
    chip stores them: [W_{k+1}^T | W_{b,k}] (forward targets, then feedback targets; a conv synapse's
    part is left out: it propagates by kernel slices). None where a layer drives no dense synapse,
    and for the input without `include_input` (constant-current input sends no spikes). Weights only
    change between batches: build once per batch."""
    syn, n = net.synapses, len(net.synapses)
    tables: Tables = []
    for k in range(-1, n):  # k = -1: the input layer (Poisson or given spikes)
        parts = []
        if k == -1 and not include_input:
            tables.append(None)
            continue
        if k + 1 < n and isinstance(syn[k + 1], Dense):
            parts.append(syn[k + 1].weight.t())
        if k >= 1 and isinstance(syn[k], Dense):
            parts.append(syn[k].feedback_weight)
        tables.append(torch.cat(parts, 1).contiguous() if parts else None)
    return tables


def event_currents(z: Tensor, table: Tensor) -> Tensor:
    """Sum, per sample, the table rows of the neurons that spiked: (B, targets)."""
    j, off = _bags(z)
    return F.embedding_bag(j, table, off, mode="sum")


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


def conv_forward_events(syn: Conv, z: Tensor) -> Tensor:
    """Pre-pool forward current W * z of a conv synapse from the spikes z of its input layer alone:
    each spike (b, c, i, j) adds the kernel slice W[:, c, ky, kx] at the outputs it reaches."""
    b, c, i, j = z.nonzero().unbind(1)
    k, (ho, wo) = syn.kernel, syn.conv_hw
    oy, ok_y = _kernel_offsets(i, k, syn.stride, syn.padding, ho, True)
    ox, ok_x = _kernel_offsets(j, k, syn.stride, syn.padding, wo, True)
    slices = syn.weight.permute(1, 2, 3, 0)[c]  # (E, ky, kx, C_out)
    return _scatter_slices(b, oy.clamp(0, ho - 1), ox.clamp(0, wo - 1), ok_y[:, :, None] & ok_x[:, None, :],
                           slices, z.shape[0], (ho, wo), syn.current_shape[0])


def conv_feedback_events(syn: Conv, z: Tensor, indices: Optional[Tensor]) -> Tensor:
    """Feedback current W_b^T * unpool(z) of a conv synapse from the spikes z of its output layer: each
    spike is routed back through the pooling (`indices`: this step's max-pool winners), then every
    routed event (b, co, o_y, o_x) of weight v adds v W_b[co, :, ky, kx] at the inputs it reaches."""
    g = syn.unpool(z, indices)
    b, co, oy, ox = g.nonzero().unbind(1)
    v = g[b, co, oy, ox]
    k, (_, h, w) = syn.kernel, syn.pre_shape
    iy, ok_y = _kernel_offsets(oy, k, syn.stride, syn.padding, h, False)
    ix, ok_x = _kernel_offsets(ox, k, syn.stride, syn.padding, w, False)
    slices = syn.feedback_weight.permute(0, 2, 3, 1)[co] * v[:, None, None, None]  # (E, ky, kx, C_in)
    return _scatter_slices(b, iy.clamp(0, h - 1), ix.clamp(0, w - 1), ok_y[:, :, None] & ok_x[:, None, :],
                           slices, z.shape[0], (h, w), syn.pre_shape[0])


def propagate(net: EqNetwork, z: Tensor, k: int, table: Optional[Tensor], event: bool
              ) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The currents layer k's spikes (k = -1: input spikes) send this step: (W_{k+1} z to the layer
    above, pre-pool for a conv synapse; W_{b,k}^T z to the layer below), by events when `event`
    (`table`: the layer's dense fan-out rows, or None if it drives no dense synapse), densely
    otherwise; None where the target is absent or a conv synapse's feedback must wait for this
    step's pooling indices (see conv_feedback_events)."""
    syn, n = net.synapses, len(net.synapses)
    up_syn = syn[k + 1] if k + 1 < n else None
    down_syn = syn[k] if k >= 1 else None
    if not event:
        up = up_syn.forward_current(z) if up_syn is not None else None
        down = down_syn.feedback_drive(z) if isinstance(down_syn, Dense) else None
        return up, down
    up = down = None
    if table is not None:  # every dense synapse of the layer at once
        out = event_currents(z, table)
        n_up = up_syn.post_shape[0] if isinstance(up_syn, Dense) else 0
        if isinstance(up_syn, Dense):
            up = out[:, :n_up]
        if isinstance(down_syn, Dense):
            down = out[:, n_up:].view(z.shape[0], *down_syn.pre_shape)
    if isinstance(up_syn, Conv):
        up = conv_forward_events(up_syn, z)
    return up, down
