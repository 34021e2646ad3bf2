"""Spike propagation: how one step's spikes become synaptic currents, by two interchangeable back ends.

* dense: matrix products (or convolutions) over the whole 0/1 spike tensor;
* event: only the neurons that spiked send anything, as on a chip with fan-out lists.
  Dense synapses (fan-out rows): each neuron owns one row holding every dense synapse it drives, [W_{k+1}^T | W_{b,k}]
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
        up = syn[k + 1].forward_rows() if k + 1 < n else None
        down = syn[k].feedback_rows() if k >= 1 else None
        parts += [r for r in (up, down) if r is not None]
        tables.append(torch.cat(parts, 1).contiguous() if parts else None)
    return tables


def event_currents(z: Tensor, table: Tensor) -> Tensor:
    """Sum, per sample, the table rows of the neurons that spiked: (B, targets)."""
    j, off = _bags(z)
    return F.embedding_bag(j, table, off, mode="sum")


def propagate(net: EqNetwork, z: Tensor, k: int, table: Optional[Tensor], event: bool
              ) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The currents layer k's spikes (k = -1: input spikes) send this step: (W_{k+1} z to the layer
    above, pre-pool for a conv synapse; W_{b,k}^T z to the layer below), by events when `event`
    (`table`: the layer's dense fan-out rows, or None if it drives no dense synapse), densely
    otherwise; None where the target is absent or a conv synapse's feedback must wait for this
    step's pooling indices (Interaction.feedback_events)."""
    syn, n = net.synapses, len(net.synapses)
    up_syn = syn[k + 1] if k + 1 < n else None
    down_syn = syn[k] if k >= 1 else None
    up_rows = up_syn is not None and not up_syn.by_kernel_slices
    down_rows = down_syn is not None and not down_syn.by_kernel_slices
    if not event:
        up = up_syn.forward_current(z) if up_syn is not None else None
        down = down_syn.feedback_drive(z) if down_rows else None
        return up, down
    up = down = None
    if table is not None:  # every fan-out row of the layer at once
        out = event_currents(z, table)
        n_up = up_syn.post_shape[0] if up_rows else 0
        if up_rows:
            up = out[:, :n_up]
        if down_rows:
            down = out[:, n_up:].view(z.shape[0], *down_syn.pre_shape)
    if up_syn is not None and up_syn.by_kernel_slices:
        up = up_syn.forward_events(z)
    return up, down
