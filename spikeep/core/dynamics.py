"""Relaxation to equilibrium: the free phase (beta = 0) and the nudged phases (beta != 0).

One loop for every neuron model: a Relaxer (core.relaxer; the eager one by default) runs the network's
steps in blocks, optionally stopping early. Two stopping rules (dynamics.stop):

  "max_change"  the first checked step whose largest change of any neuron is below `tol` (absolute);
  "relative"    `Settling`: every layer's change over the last check interval, relative to the size
                of the phases' difference that EP's estimate is made of (see Settling).

Each check reads one number from the device, after a block of `every` steps (none inside a block: on
CUDA a block is one replayed graph).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from .network import EqNetwork, Inputs, State
from .relaxer import EAGER, Relaxer

Tensor = torch.Tensor


class Relaxed(NamedTuple):
    state: State
    steps: int  # steps actually run
    delta: float  # max |s_T - s_{T-1}| over all neurons at the end (nan if not measured); Settling: the ratio
    gaps: Optional[Tensor] = None  # Settling, nudged phases: per layer, the batch's mean |s^beta - s*| (L2)


class Settling(NamedTuple):
    """dynamics.stop = "relative": a phase ends once, at `patience` checks in a row, every layer k is
    estimated to lie within rtol * g_k of its equilibrium. The estimate is the geometric tail of the
    last check interval's change c_k (per sample, L2 over the layer's neurons, the batch's largest):
    c_k q / (1 - q), with q = c_k / c_k' the contraction observed between this interval and the one
    before (q >= 1: not converging, never settled); a slow contraction thus asks for a smaller change
    than a fast one. g_k is the size of what EP's estimate is a difference of (Laborieux et al. 2021,
    Eq. 3: s^beta - s*, which is O(beta)): the batch's mean |s_k^beta - s_k*| (L2). A nudged phase
    measures it as it goes, from its own start s*; a free phase has no s^beta yet and takes `gaps`, the
    last nudged phases' (a training run's previous batch); without them it runs its whole budget.
    Unlike an absolute tolerance on the largest single change, this does not tighten as the network
    learns and its equilibria slow down, and a sample whose change dips once does not end the phase."""
    rtol: float
    every: int = 10
    patience: int = 2
    gaps: Optional[Tensor] = None  # (layers,) a free phase's reference
    # the free phase's rtol (None: rtol). Measured (analysis/results/schedules): a looser one can hand the
    # nudged phases the basin of another equilibrium, which no nudged budget undoes (cosine 0.92-0.94)
    free_rtol: Optional[float] = None

    def with_gaps(self, gaps: Optional[Tensor]) -> "Settling":
        return self._replace(gaps=gaps)


def layer_distances(a: State, b: State) -> Tensor:
    """(layers, batch): for each sample, the L2 norm of each layer's a - b (the difference formed first)."""
    return torch.stack([(x - y).flatten(1).norm(dim=1) for x, y in zip(a, b)])


def _check_steps(T: int, what: str) -> None:
    if not isinstance(T, int) or T <= 0:
        raise ValueError(f"{what} must be a positive number of steps, got {T!r}")


def relax(net: EqNetwork, inp: Inputs, state: State, T: int, beta: float = 0.0,
          tol: float = 0.0, every: int = 1, settling: Optional[Settling] = None,
          origin: Optional[State] = None, relaxer: Relaxer = EAGER) -> Relaxed:
    """Run s_{t+1} = sigma(dPhi^beta/ds) for at most T steps from `state`, by `relaxer`.

    With tol > 0 the loop stops at the first check whose last step's largest change is below tol; a
    check follows each block of `every` steps (1: each step; the last block may be shorter). With `settling` (which then replaces tol and every)
    it stops by that rule, measuring the phase's gap from `origin` (a nudged phase's s*; None: a free
    phase). Runs under no_grad unless autograd is wanted by the caller (BPTT relaxes with the same step).
    """
    _check_steps(T, "T")
    _check_steps(every, "the convergence check interval")
    if (torch.is_tensor(beta) or beta != 0.0) and inp.target is None:
        raise ValueError("a nudged phase (beta != 0) needs labels y")
    if not isinstance(relaxer, Relaxer):
        raise TypeError(f"relaxer must be a core.relaxer.Relaxer, got {type(relaxer).__name__}")
    if settling is not None:
        _check_steps(settling.every, "the convergence check interval")
        return _relax_settling(lambda s, n: relaxer.advance(net, inp, s, beta, n).state, state, T, settling, origin)
    size = relaxer.block_size(every if tol > 0 else T)
    done, delta = 0, float("nan")
    while done < T:
        n = min(size, T - done)
        state, res = relaxer.run_block(net, inp, state, beta, n)
        done += n
        if tol > 0:
            delta = float(res)  # one sync per block
            if delta < tol:
                break
    return Relaxed(state, done, delta)


def _relax_settling(advance: Callable[[State, int], State], state: State, T: int, rule: Settling,
                    origin: Optional[State]) -> Relaxed:
    """relax() with the relative rule (Settling): blocks of rule.every steps, one device read per check."""
    done, calm, ratio, gaps, before = 0, 0, float("nan"), None, None
    rtol = rule.rtol if origin is not None or rule.free_rtol is None else rule.free_rtol
    while done < T:
        new = advance(state, min(rule.every, T - done))
        done += min(rule.every, T - done)
        if origin is not None:
            gaps = layer_distances(new, origin).mean(1)
        ref = gaps if origin is not None else rule.gaps
        if ref is not None:
            change = layer_distances(new, state).amax(1)
            if before is not None:
                ratio = float(_tail_over_gap(change, before, ref).max())
                calm = calm + 1 if ratio < rtol else 0
            before = change
        state = new
        if calm >= rule.patience:
            break
    return Relaxed(state, done, ratio, gaps)


def _tail_over_gap(change: Tensor, before: Tensor, gap: Tensor) -> Tensor:
    """Per layer: the distance left to equilibrium, c q / (1 - q) with q = c / c_before, over the gap;
    infinite where it is not contracting (q >= 1) or the gap is 0 (the nudge has not reached the layer)."""
    q = change / before.clamp_min(torch.finfo(change.dtype).tiny)
    tail = torch.where(q < 1, change * q / (1 - q).clamp_min(1e-12), torch.full_like(change, float("inf")))
    tail = torch.where(change == 0, torch.zeros_like(change), tail)  # nothing moves: settled
    return torch.where(gap > 0, tail / gap, torch.full_like(change, float("inf")))


@torch.no_grad()
def free_phase(net: EqNetwork, inp: Inputs, T1: int, state: State | None = None,
               tol: float = 0.0, every: int = 1, settling: Optional[Settling] = None,
               relaxer: Relaxer = EAGER) -> Relaxed:
    """First phase: from `state` (zeros by default) to the free equilibrium s*."""
    _check_steps(T1, "T1")
    state = net.init_state(inp.x.shape[0]) if state is None else state
    return relax(net, inp, state, T1, 0.0, tol, every, settling, relaxer=relaxer)


@torch.no_grad()
def nudged_phase(net: EqNetwork, inp: Inputs, s_free: State, T2: int, beta: float,
                 tol: float = 0.0, every: int = 1, settling: Optional[Settling] = None,
                 relaxer: Relaxer = EAGER) -> Relaxed:
    """Nudged phase: from s* with the loss pulling the output, for any beta != 0 (+ or -)."""
    _check_steps(T2, "T2")
    if not torch.is_tensor(beta) and beta == 0.0:
        raise ValueError("a nudged phase needs beta != 0")
    return relax(net, inp, s_free, T2, beta, tol, every, settling, s_free, relaxer)
