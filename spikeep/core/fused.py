"""The elementwise half of a layer update, as at most two kernels per layer.

A relaxation step of a layer k (Laborieux et al. 2021, Eq. 8) is two convolutions (the forward drive
u_k = w_k * s_{k-1} + b_k before pooling, and the feedback from the layer above) and elementwise work
around them. That work is grouped here into two functions, each one kernel on a GPU:

    pool_unpool(u, s, kind)   P = pool(u) (the pooled forward drive of layer k) and, with the same
                              window winners, U = unpool(s) (s_k routed back to the positions that won,
                              what the transposed convolution of synapse k turns into the feedback of
                              layer k-1). With `u_prev`: also dU = U - U_prev, formed exactly in the
                              state dtype (the incremental precision convolves only that change).
    settle(P, F, act, ...)    s = act(P + F * m + beta * n), the new state of the layer (F: feedback
                              drive, m: dropout mask, n: nudge), optionally with ds = s - s_prev.

The max-pool tie rule is the one of core.interactions.max_pool_2x2: the first maximum in row-major
window order (top-left, top-right, bottom-left, bottom-right) wins, on every device and layout.

Two implementations with the same results: `impl="torch"` (plain PyTorch, any device; what the tests
compare everything with) and `impl="triton"` (Triton kernels, CUDA; on the CPU under Triton's
interpreter, TRITON_INTERPRET=1, which is how CI checks them).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .pooling import _windows, max_pool_2x2, max_unpool_2x2
from .activations import ACTIVATIONS as _ACTS

Tensor = torch.Tensor
ACT_IDS = {"identity": 0, "my_hard_sig": 1, "hard_sigmoid": 2, "sigmoid": 3, "tanh": 4}


class Pooled(NamedTuple):
    P: Tensor  # pooled forward drive, the layer's shape
    U: Tensor  # the layer's state routed back through the pooling, the pre-pool shape
    dU: Optional[Tensor] = None  # U - U_prev (incremental precision), in dU_dtype


def _fmt(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# -- plain PyTorch (reference) --------------------------------------------------------------------------

def pool_unpool_torch(u: Tensor, s: Tensor, kind: str, u_prev: Optional[Tensor] = None,
                      dU_dtype: Optional[torch.dtype] = None) -> Pooled:
    """P = pool(u), U = unpool(s) with the winners of u (see the module docstring)."""
    if kind == "m":
        if u.device.type == "cpu":  # PyTorch's CPU kernels keep the first maximum (tested)
            P, idx = max_pool_2x2(u)
            U = max_unpool_2x2(s, idx, u.shape[2:])
        else:
            w = _windows(u)
            P = torch.maximum(torch.maximum(w[0], w[1]), torch.maximum(w[2], w[3]))
            k = torch.where(w[0] == P, 0, torch.where(w[1] == P, 1, torch.where(w[2] == P, 2, 3)))
            U = torch.zeros_like(u, memory_format=_fmt(u))
            for q, view in enumerate(_windows(U)):
                view.copy_(torch.where(k == q, s, torch.zeros((), dtype=s.dtype, device=s.device)))
        U = U.contiguous(memory_format=_fmt(u))
    elif kind == "a":
        P = F.avg_pool2d(u, 2, 2)
        up = s.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).mul_(0.25)
        U = F.pad(up, (0, u.shape[3] - up.shape[3], 0, u.shape[2] - up.shape[2])).contiguous(memory_format=_fmt(u))
    else:  # no pooling (conv 'i' and dense layers)
        P, U = u, s
    dU = None
    if u_prev is not None:
        dU = (U - u_prev).to(dU_dtype or U.dtype)
    return Pooled(P, U, dU)


def _scaled_nudge(nudge: Tensor, beta) -> Tensor:
    """beta * nudge, beta a number or one value per sample (along the batch dimension)."""
    if torch.is_tensor(beta):
        return nudge * beta.reshape(-1, *([1] * (nudge.dim() - 1)))
    return nudge * beta


def settle_torch(P: Tensor, Fb: Optional[Tensor], act: str, mask: Optional[Tensor] = None,
                 nudge: Optional[Tensor] = None, s_prev: Optional[Tensor] = None,
                 ds_dtype: Optional[torch.dtype] = None, beta=None, owned: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """s = act(P + Fb * mask + beta * nudge) and, given s_prev, ds = s - s_prev (in ds_dtype). beta None:
    `nudge` is already scaled. P is written into only if `owned` (a fresh drive; never the batch's constant
    input drive) and autograd is off; the activation runs in place on a fresh sum."""
    grad = torch.is_grad_enabled()
    own = owned and not grad
    z = P if Fb is None else P + (Fb if mask is None else Fb * mask)
    if nudge is not None:
        if beta is None or torch.is_tensor(beta):
            z = z + (nudge if beta is None else _scaled_nudge(nudge, beta))
        else:  # one fused multiply-add, as the reference step has always done it
            z = z.add_(nudge, alpha=beta) if z is not P or own else z.add(nudge, alpha=beta)
    a = _ACTS[act]
    s = a.fn_(z) if (z is not P or own) and not grad else a.fn(z)
    ds = None if s_prev is None else (s - s_prev).to(ds_dtype or s.dtype)
    return s, ds


# -- Triton ----------------------------------------------------------------------------------------------

try:  # Triton is optional: without it the "triton" implementation is not offered
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 (any import failure means: not available)
    triton = None


def triton_available() -> bool:
    """Whether the Triton kernels can run: Triton importable (CUDA device, or TRITON_INTERPRET=1 on the CPU)."""
    return triton is not None


if triton is not None:
    @triton.jit
    def _act(z, ACT: tl.constexpr):
        if ACT == 1:  # (1 + hardtanh(z - 1)) / 2, in core.activations' order of operations
            z = (tl.minimum(tl.maximum(z - 1.0, -1.0), 1.0) + 1.0) * 0.5
        elif ACT == 2:  # (1 + hardtanh(2 z - 1)) / 2
            z = (tl.minimum(tl.maximum(z * 2.0 - 1.0, -1.0), 1.0) + 1.0) * 0.5
        elif ACT == 3:
            z = 1.0 / (1.0 + tl.exp(-4.0 * (z - 0.5)))
        elif ACT == 4:
            e = tl.exp(-2.0 * tl.abs(z))
            t = (1.0 - e) / (1.0 + e)
            z = tl.where(z >= 0, t, -t)
        return z

    @triton.jit
    def _ld(ptr, idx, ok, F64: tl.constexpr):
        v = tl.load(ptr + idx, mask=ok, other=0.0)
        if F64:
            v = v.to(tl.float64)
        else:
            v = v.to(tl.float32)
        return v

    @triton.jit
    def _pooled_position(idx, C, Ho, Wo, CL: tl.constexpr):
        """(batch, channel, row, column) of flat pooled indices, walked in the layout's memory order:
        NHWC (CL) has channels fastest, NCHW columns."""
        if CL:
            n3, n2, n1 = C, Wo, Ho
        else:
            n3, n2, n1 = Wo, Ho, C
        x3 = idx % n3
        r = idx // n3
        x2 = r % n2
        r = r // n2
        x1 = r % n1
        b = r // n1
        if CL:
            c, i, j = x3, x1, x2
        else:
            c, i, j = x1, x2, x3
        return b, c, i, j

    @triton.jit
    def maxpool_unpool_kernel(u_ptr, s_ptr, p_ptr, U_ptr, dU_ptr, n, C, Ho, Wo,
                              su0, su1, su2, su3, ss0, ss1, ss2, ss3,
                              CL: tl.constexpr, HAS_PREV: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
        # one lane per pooled element; lanes walk the elements in the memory order of the layout
        pid = tl.program_id(0)
        idx = pid * BLOCK + tl.arange(0, BLOCK)
        ok = idx < n
        b, c, i, j = _pooled_position(idx, C, Ho, Wo, CL)
        base = b * su0 + c * su1 + (2 * i) * su2 + (2 * j) * su3
        o00 = base
        o01 = base + su3
        o10 = base + su2
        o11 = base + su2 + su3
        z00 = _ld(u_ptr, o00, ok, F64)
        z01 = _ld(u_ptr, o01, ok, F64)
        z10 = _ld(u_ptr, o10, ok, F64)
        z11 = _ld(u_ptr, o11, ok, F64)
        m = tl.maximum(tl.maximum(z00, z01), tl.maximum(z10, z11))
        w0 = z00 == m  # first maximum in row-major window order
        w1 = (z01 == m) & (~w0)
        w2 = (z10 == m) & (~w0) & (~w1)
        w3 = (~w0) & (~w1) & (~w2)
        so = b * ss0 + c * ss1 + i * ss2 + j * ss3
        sv = tl.load(s_ptr + so, mask=ok, other=0.0)
        tl.store(p_ptr + so, m.to(p_ptr.dtype.element_ty), mask=ok)
        zero = tl.zeros_like(sv)
        v0 = tl.where(w0, sv, zero)
        v1 = tl.where(w1, sv, zero)
        v2 = tl.where(w2, sv, zero)
        v3 = tl.where(w3, sv, zero)
        if HAS_PREV:  # U holds U_prev: write dU = U - U_prev, then U
            d0 = v0 - tl.load(U_ptr + o00, mask=ok, other=0.0)
            d1 = v1 - tl.load(U_ptr + o01, mask=ok, other=0.0)
            d2 = v2 - tl.load(U_ptr + o10, mask=ok, other=0.0)
            d3 = v3 - tl.load(U_ptr + o11, mask=ok, other=0.0)
            tl.store(dU_ptr + o00, d0.to(dU_ptr.dtype.element_ty), mask=ok)
            tl.store(dU_ptr + o01, d1.to(dU_ptr.dtype.element_ty), mask=ok)
            tl.store(dU_ptr + o10, d2.to(dU_ptr.dtype.element_ty), mask=ok)
            tl.store(dU_ptr + o11, d3.to(dU_ptr.dtype.element_ty), mask=ok)
        tl.store(U_ptr + o00, v0.to(U_ptr.dtype.element_ty), mask=ok)
        tl.store(U_ptr + o01, v1.to(U_ptr.dtype.element_ty), mask=ok)
        tl.store(U_ptr + o10, v2.to(U_ptr.dtype.element_ty), mask=ok)
        tl.store(U_ptr + o11, v3.to(U_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def settle_kernel(p_ptr, f_ptr, m_ptr, n_ptr, sp_ptr, s_ptr, ds_ptr, n,
                      HAS_F: tl.constexpr, HAS_M: tl.constexpr, HAS_N: tl.constexpr, HAS_PREV: tl.constexpr,
                      ACT: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        idx = pid * BLOCK + tl.arange(0, BLOCK)
        ok = idx < n
        z = _ld(p_ptr, idx, ok, F64)
        if HAS_F:
            f = _ld(f_ptr, idx, ok, F64)
            if HAS_M:
                f = f * _ld(m_ptr, idx, ok, F64)
            z = z + f
        if HAS_N:
            z = z + _ld(n_ptr, idx, ok, F64)
        s = _act(z, ACT).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + idx, s, mask=ok)
        if HAS_PREV:
            d = s - tl.load(sp_ptr + idx, mask=ok, other=0.0)
            tl.store(ds_ptr + idx, d.to(ds_ptr.dtype.element_ty), mask=ok)



def _kernels() -> dict:
    if triton is None:
        raise RuntimeError("the triton implementation needs the triton package (pip install triton)")
    return {"maxpool": maxpool_unpool_kernel, "settle": settle_kernel}


BLOCK = 1024


def pool_unpool_triton(u: Tensor, s: Tensor, kind: str, u_prev: Optional[Tensor] = None,
                       dU_dtype: Optional[torch.dtype] = None) -> Pooled:
    """pool_unpool_torch as one Triton kernel (max-pool); other poolings fall back to PyTorch.
    With u_prev, that tensor is overwritten with U (and returned as U)."""
    if kind != "m":
        return pool_unpool_torch(u, s, kind, u_prev, dU_dtype)
    fmt = _fmt(u)
    B, C, H, W = u.shape
    Ho, Wo = H // 2, W // 2
    P = torch.empty(s.shape, dtype=s.dtype, device=s.device).contiguous(memory_format=fmt) if s.dim() == 4 else \
        torch.empty_like(s)
    s = s.contiguous(memory_format=fmt)
    if u_prev is not None:
        U = u_prev
        dU = torch.empty(U.shape, dtype=dU_dtype or U.dtype, device=U.device).contiguous(memory_format=_fmt(U))
        if (H % 2 or W % 2):
            dU.zero_()
    else:
        U = (torch.zeros if (H % 2 or W % 2) else torch.empty)(u.shape, dtype=s.dtype, device=s.device)
        U = U.contiguous(memory_format=fmt)
        dU = U  # unused
    n = B * C * Ho * Wo
    grid = (triton.cdiv(n, BLOCK),)
    _kernels()["maxpool"][grid](u, s, P, U, dU, n, C, Ho, Wo, *u.stride(), *s.stride(),
                                CL=fmt == torch.channels_last, HAS_PREV=u_prev is not None,
                                F64=u.dtype == torch.float64, BLOCK=BLOCK)
    return Pooled(P, U, dU if u_prev is not None else None)


def settle_triton(P: Tensor, Fb: Optional[Tensor], act: str, mask: Optional[Tensor] = None,
                  nudge: Optional[Tensor] = None, s_prev: Optional[Tensor] = None,
                  ds_dtype: Optional[torch.dtype] = None, beta=None, owned: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """settle_torch as one Triton kernel (the nudge scaled by beta before it); every operand must have P's
    shape and strides (else PyTorch)."""
    if nudge is not None and beta is not None:
        nudge, beta = _scaled_nudge(nudge, beta), None
    if torch.is_grad_enabled() and P.requires_grad:  # under autograd: the differentiable PyTorch form
        return settle_torch(P, Fb, act, mask, nudge, s_prev, ds_dtype)
    ops = [t for t in (Fb, mask, nudge, s_prev) if t is not None]
    dense = P.is_contiguous() or P.is_contiguous(memory_format=torch.channels_last)
    if not dense or any(t.shape != P.shape or t.stride() != P.stride() for t in ops):
        return settle_torch(P, Fb, act, mask, nudge, s_prev, ds_dtype)
    s = torch.empty_like(P)
    ds = torch.empty_like(P, dtype=ds_dtype or P.dtype) if s_prev is not None else s
    n = P.numel()
    grid = (triton.cdiv(n, BLOCK),)
    _kernels()["settle"][grid](P, Fb if Fb is not None else P, mask if mask is not None else P,
                               nudge if nudge is not None else P, s_prev if s_prev is not None else P, s, ds, n,
                               HAS_F=Fb is not None, HAS_M=mask is not None, HAS_N=nudge is not None,
                               HAS_PREV=s_prev is not None, ACT=ACT_IDS[act], F64=P.dtype == torch.float64,
                               BLOCK=BLOCK)
    return s, (ds if s_prev is not None else None)


IMPLS = {"torch": (pool_unpool_torch, settle_torch), "triton": (pool_unpool_triton, settle_triton)}
