"""Divergence checks: NaN or inf in states, gradients, weights or the loss, read from the device in one
go every few iterations and reported with the first layer and iteration that went wrong."""
from __future__ import annotations

from typing import Optional

import torch

from .data_parallel import Dist, any_process


class DivergenceError(FloatingPointError):
    """NaN or inf in states, gradients or weights; the message names the layer and iteration."""


class FiniteChecks:
    """Finite checks of an iteration recorded as flags on the device and read in one go every few
    iterations (`check`), so iterations run without host-device synchronisation; the error still
    names the first layer and iteration that went wrong. Every process of a distributed run checks at
    the same iterations (one tiny all-reduce)."""

    def __init__(self):
        self.pending: list[tuple[str, list[str], str, torch.Tensor]] = []

    def add(self, named: list[tuple[str, torch.Tensor]], what: str, where: str) -> None:
        self.pending.append((what, [n for n, _ in named], where, torch.stack([torch.isfinite(t).all() for _, t in named])))

    def add_loss(self, loss: Optional[torch.Tensor], where: str) -> None:
        """An infinite or NaN loss is divergence too (states can stay finite while the output overflows)."""
        if loss is not None:
            self.pending.append(("loss", ["output"], where, torch.isfinite(loss).all()[None]))

    def check(self, procs: Optional[Dist] = None) -> None:
        pending, self.pending = self.pending, []
        ok = bool(torch.stack([f.all() for *_, f in pending]).all()) if pending else True  # one sync
        if procs is not None and any_process(procs, not ok) and ok:
            raise DivergenceError(f"NaN or inf in another process by {pending[-1][2] if pending else 'now'}")
        if ok:
            return
        for what, names, where, flags in pending:
            if not bool(flags.all()):
                if what == "loss":
                    raise DivergenceError(f"the loss is inf or NaN at {where} (the network's output overflows: "
                                          f"weights too large?)")
                raise DivergenceError(f"NaN or inf in the {what} of layer {names[int((~flags).nonzero()[0])]} at {where}")
