"""Relaxation to equilibrium: the free phase (beta = 0) and the nudged phases (beta != 0).

One loop for every neuron model: it calls the network's pure `step` T times, optionally stopping
once the largest change of any neuron falls below `tol`. A network with a relaxation engine
(core.engine, EqNetwork.use_engine) runs its steps in blocks through that engine instead.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .network import EqNetwork, Inputs, State


class Relaxed(NamedTuple):
    state: State
    steps: int  # steps actually run
    delta: float  # max |s_T - s_{T-1}| over all neurons at the end (nan if not measured)


def _check_steps(T: int, what: str) -> None:
    if not isinstance(T, int) or T <= 0:
        raise ValueError(f"{what} must be a positive number of steps, got {T!r}")


def relax(net: EqNetwork, inp: Inputs, state: State, T: int, beta: float = 0.0,
          tol: float = 0.0, every: int = 1) -> Relaxed:
    """Run s_{t+1} = sigma(dPhi^beta/ds) for at most T steps from `state`.

    With tol > 0 the loop stops at the first checked step whose largest change is below tol; a check
    reads one number from the device, and runs every `every` steps (1: each step). Runs under no_grad
    unless autograd is wanted by the caller (BPTT relaxes with the same step function).
    """
    _check_steps(T, "T")
    _check_steps(every, "the convergence check interval")
    if (torch.is_tensor(beta) or beta != 0.0) and inp.target is None:
        raise ValueError("a nudged phase (beta != 0) needs labels y")
    engine = getattr(net, "engine", None)
    if engine is not None:
        return _relax_blocks(engine, inp, state, T, beta, tol, every)
    delta = float("nan")
    for t in range(T):
        new = net.step(inp, state, beta)
        if tol > 0 and (t + 1) % every == 0:
            delta = float(torch.stack([(a - b).abs().max() for a, b in zip(new, state)]).max())  # one sync
            state = new
            if delta < tol:
                return Relaxed(state, t + 1, delta)
        else:
            state = new
    return Relaxed(state, T, delta)


def _relax_blocks(engine, inp: Inputs, state: State, T: int, beta, tol: float, every: int) -> Relaxed:
    """relax() through an engine: blocks of steps (each one CUDA graph on a GPU); with tol > 0 a block
    is `every` steps and its residual is read after it (one sync per block, none inside)."""
    size = every if tol > 0 else T
    if engine.incremental:  # an exact recomputation opens every block
        size = min(size, engine.recompute_every)
    done, delta = 0, float("nan")
    while done < T:
        n = min(size, T - done)
        state, res = engine.run_block(inp, state, beta, n)
        done += n
        if tol > 0:
            delta = float(res)
            if delta < tol:
                break
    return Relaxed(state, done, delta)


@torch.no_grad()
def free_phase(net: EqNetwork, inp: Inputs, T1: int, state: State | None = None,
               tol: float = 0.0, every: int = 1) -> Relaxed:
    """First phase: from `state` (zeros by default) to the free equilibrium s*."""
    _check_steps(T1, "T1")
    state = net.init_state(inp.x.shape[0]) if state is None else state
    return relax(net, inp, state, T1, 0.0, tol, every)


@torch.no_grad()
def nudged_phase(net: EqNetwork, inp: Inputs, s_free: State, T2: int, beta: float,
                 tol: float = 0.0, every: int = 1) -> Relaxed:
    """Nudged phase: from s* with the loss pulling the output, for any beta != 0 (+ or -)."""
    _check_steps(T2, "T2")
    if not torch.is_tensor(beta) and beta == 0.0:
        raise ValueError("a nudged phase needs beta != 0")
    return relax(net, inp, s_free, T2, beta, tol, every)
