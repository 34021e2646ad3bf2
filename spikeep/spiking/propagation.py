"""Spike propagation: how one step's spikes become synaptic currents, by two interchangeable back ends.

* dense: matrix products (or convolutions) over the whole 0/1 spike tensor;
* event: each neuron owns one row holding every synapse it drives, [W_{k+1}^T | W_{b,k}] (forward
  targets, then feedback targets through the synapse's feedback weights), as a chip stores its fan-out
  lists; the rows of the neurons that spiked are summed with embedding_bag.

Both give the same currents (tested in float64). Conv synapses propagate densely.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..core.interactions import Dense
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
    """Per source layer (input first), one row per neuron holding every synapse it drives, as a chip
    stores them: [W_{k+1}^T | W_{b,k}] (forward targets, then feedback targets). None where a conv
    synapse is involved (those propagate densely), and for the input without `include_input`
    (constant-current input sends no spikes). Weights only change between batches: build once per batch."""
    syn, n = net.synapses, len(net.synapses)
    tables: Tables = []
    for k in range(-1, n):  # k = -1: the input layer (Poisson or given spikes)
        parts = []
        if k == -1 and not include_input:
            tables.append(None)
            continue
        if k + 1 < n:
            parts.append(syn[k + 1].weight.t() if isinstance(syn[k + 1], Dense) else None)
        if k >= 1:
            parts.append(syn[k].feedback_weight if isinstance(syn[k], Dense) else None)
        tables.append(torch.cat(parts, 1).contiguous() if parts and all(t is not None for t in parts) else None)
    return tables


def event_currents(z: Tensor, table: Tensor) -> Tensor:
    """Sum, per sample, the table rows of the neurons that spiked: (B, targets)."""
    j, off = _bags(z)
    return F.embedding_bag(j, table, off, mode="sum")


def propagate(net: EqNetwork, z: Tensor, k: int, table: Optional[Tensor], event: bool
              ) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The currents layer k's spikes (k = -1: input spikes) send this step: (W_{k+1} z to the layer
    above, W_{b,k}^T z to the layer below), by events when `event` and a table exist, densely
    otherwise; None where the target is absent or a conv synapse must wait for its pooling indices."""
    syn, n = net.synapses, len(net.synapses)
    if table is not None and event:
        out = event_currents(z, table)
        n_up = syn[k + 1].post_shape[0] if k + 1 < n else 0
        up = out[:, :n_up] if k + 1 < n else None
        down = out[:, n_up:].view(z.shape[0], *syn[k].pre_shape) if k >= 1 else None
        return up, down
    up = syn[k + 1].forward_current(z) if k + 1 < n else None
    down = syn[k].feedback_drive(z) if k >= 1 and isinstance(syn[k], Dense) else None
    return up, down
