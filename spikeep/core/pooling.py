"""2x2 pooling with one tie rule on every device and layout, and its adjoint (used by the interactions'
definitions and by core.fused's kernels)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _windows(z: Tensor) -> list[Tensor]:
    """The four positions of the 2x2 windows (top-left, top-right, bottom-left, bottom-right) as strided
    views: no copy, z's memory format kept."""
    h, w = z.shape[2] // 2 * 2, z.shape[3] // 2 * 2
    return [z[:, :, r:h:2, c:w:2] for r in (0, 1) for c in (0, 1)]


def max_pool_2x2(z: Tensor) -> tuple[Tensor, Tensor]:
    """2x2 max-pool with stride 2 (odd rows / columns dropped) and its tie rule: the first maximum of
    each window in row-major order (top-left, top-right, bottom-left, bottom-right) wins, whatever the
    memory format or device. Ties are common: a layer driven by its bias alone is flat, so every window
    of the next pooling is tied, and where the tie goes decides where the feedback goes.

    On the CPU PyTorch's own kernels (NCHW and NHWC) keep the first maximum (checked by a test), so
    they are used, ten times faster than the explicit rule; elsewhere (CUDA kernels make no promise)
    the explicit rule runs. Returns (values, indices for max_unpool_2x2), in z's memory format."""
    if z.device.type == "cpu":
        return F.max_pool2d(z, 2, 2, return_indices=True)
    return max_pool_2x2_explicit(z)


def max_unpool_2x2(g: Tensor, indices: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """The adjoint of max_pool_2x2: each value goes back to its window's winner, zeros elsewhere, in a
    map of out_hw (rows / columns the pooling dropped stay zero)."""
    if indices.dtype == torch.int64:  # flat indices of F.max_pool2d (CPU)
        return F.max_unpool2d(g, indices, 2, 2, output_size=out_hw)
    return max_unpool_2x2_explicit(g, indices, out_hw)


def take_2x2(z: Tensor, indices: Tensor) -> Tensor:
    """The values of z at the window winners `indices` of another map's max_pool_2x2 (either index
    format: F.max_pool2d's flat int64 indices or the explicit rule's uint8 window positions): a 2x2
    max-pool of z routed by another map's maxima. take_2x2(z, max_pool_2x2(z)[1]) is max_pool_2x2(z)[0]."""
    if indices.dtype == torch.int64:
        b, c, h, w = indices.shape
        return z.reshape(b, c, -1).gather(2, indices.reshape(b, c, -1)).view(b, c, h, w)
    z00, z01, z10, z11 = _windows(z)
    return torch.where(indices == 0, z00, torch.where(indices == 1, z01, torch.where(indices == 2, z10, z11)))


def max_pool_2x2_explicit(z: Tensor) -> tuple[Tensor, Tensor]:
    """max_pool_2x2 by its definition: returns (values, window position 0..3 of the winner, uint8) in
    z's memory format; under autograd the gradient goes to the winner only."""
    z00, z01, z10, z11 = _windows(z)
    with torch.no_grad():
        m = torch.maximum(torch.maximum(z00, z01), torch.maximum(z10, z11))
        k = torch.where(z00 == m, 0, torch.where(z01 == m, 1, torch.where(z10 == m, 2, 3))).to(torch.uint8)
    if not torch.is_grad_enabled() or not z.requires_grad:
        return m, k
    return torch.where(k == 0, z00, torch.where(k == 1, z01, torch.where(k == 2, z10, z11))), k


def max_unpool_2x2_explicit(g: Tensor, k: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """The adjoint of max_pool_2x2_explicit, in g's memory format. Four strided writes: deterministic
    on every device (F.max_unpool2d has no deterministic CUDA kernel)."""
    zero = g.new_zeros(())
    parts = [torch.where(k == q, g, zero) for q in range(4)]
    if torch.is_grad_enabled() and g.requires_grad:  # out of place, for autograd (BPTT, checks)
        b, c, h, w = g.shape
        up = torch.stack(parts, -1).reshape(b, c, h, w, 2, 2).transpose(3, 4).reshape(b, c, 2 * h, 2 * w)
        return F.pad(up, (0, out_hw[1] - 2 * w, 0, out_hw[0] - 2 * h))
    fmt = torch.channels_last if g.dim() == 4 and not g.is_contiguous() and \
        g.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = g.new_zeros(g.shape[0], g.shape[1], *out_hw).contiguous(memory_format=fmt)
    for view, part in zip(_windows(out), parts):
        view.copy_(part)
    return out
