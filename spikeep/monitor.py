"""Monitoring a run: divergence checks, the running metrics of an epoch, energy estimates of chip
profiles, and the pictures of a spiking network at work."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch

from .config import Config
from .distributed import Dist, any_process
from .hardware.chips import energy_estimate, get_profile


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

    def check(self, ddp: Optional[Dist] = None) -> None:
        pending, self.pending = self.pending, []
        ok = bool(torch.stack([f.all() for *_, f in pending]).all()) if pending else True  # one sync
        if ddp is not None and any_process(ddp, not ok) and ok:
            raise DivergenceError(f"NaN or inf in another process by {pending[-1][2] if pending else 'now'}")
        if ok:
            return
        for what, names, where, flags in pending:
            if not bool(flags.all()):
                if what == "loss":
                    raise DivergenceError(f"the loss is inf or NaN at {where} (the network's output overflows: "
                                          f"weights too large?)")
                raise DivergenceError(f"NaN or inf in the {what} of layer {names[int((~flags).nonzero()[0])]} at {where}")


def _number(v):
    return v.item() if torch.is_tensor(v) else v


@dataclass
class EpochStats:
    """Running train metrics of the epoch in progress (checkpointed, so a resumed epoch goes on).
    Sums over batches stay on the device until read (`synced`), so iterations need no host sync."""
    seen: int = 0
    correct: Any = 0
    loss_sum: Any = 0.0
    seconds: float = 0.0
    spikes: float = 0.0  # spiking networks: spikes of every phase
    synops: float = 0.0  # and their synaptic events
    neuron_updates: float = 0.0  # neurons x steps of every phase
    input_ops: float = 0.0  # synaptic events of a constant input current in every phase
    updates: Any = 0.0  # synapses changed by the weight updates
    steps: int = 0  # relaxation (simulation) steps of every phase
    steps_free: int = 0  # of which the free phases ran these
    nudged_phases: int = 0  # nudged phases run (the other steps' count)
    batches: int = 0

    def add_batch(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.seen += y.shape[0]
        self.loss_sum = self.loss_sum + loss.sum().double()
        self.correct = self.correct + (logits.argmax(1) == y).sum()

    def synced(self) -> "EpochStats":
        """The same numbers as Python values (reads the device)."""
        return EpochStats(**{f.name: _number(getattr(self, f.name)) for f in fields(self)})

    @property
    def acc(self) -> float:
        return 100 * _number(self.correct) / max(self.seen, 1)

    @property
    def loss(self) -> float:
        return _number(self.loss_sum) / max(self.seen, 1)

    def state_dict(self) -> dict:
        return asdict(self.synced())

    @classmethod
    def from_state_dict(cls, d: dict) -> "EpochStats":
        return cls(**d)


def alignment_angles(net) -> dict[str, torch.Tensor]:
    """Angle in degrees between the forward and the feedback weights of every layer that has separate
    feedback weights (Laborieux et al. 2021, Fig. 5): 0 when aligned, about 90 for independent random
    weights. Computed in float64 on the device (read it when needed)."""
    out = {}
    for name, layer in zip(net.layer_names(), net.layers):
        wb = getattr(layer, "weight_b", None)
        if wb is not None:
            f, b = layer.weight.detach().double().flatten(), wb.detach().double().flatten()
            cos = (f @ b) / (f.norm() * b.norm()).clamp_min(1e-300)
            out[name] = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    return out


def energy(cfg: Config, ev, stats: EpochStats) -> dict:
    """Energy estimates from the chip profile's literature figures (if any): per inference (one free
    phase of the evaluation `ev`), and per training sample (its three phases plus its share of the
    iteration's weight updates); with the figures' source and what the estimate leaves out."""
    if not cfg.plasticity.profile:
        return {}
    prof = get_profile(cfg.plasticity.profile)
    seen = max(stats.seen, 1)
    inf = energy_estimate(prof, ev.spikes, ev.synops, 0.0, ev.neuron_updates, ev.input_ops)
    learn = energy_estimate(prof, stats.spikes / seen, stats.synops / seen, _number(stats.updates) / seen,
                            stats.neuron_updates / seen, stats.input_ops / seen)
    return {"energy_estimate_inference_J": inf["total"], "energy_estimate_learning_J": learn["total"],
            "energy_estimate_source": f"{prof.name}: {inf['source']}",
            "energy_estimate_leaves_out": "; ".join(sorted(set(inf["leaves_out"]) | set(learn["leaves_out"]))),
            "energy_figures_found_in_source": inf["verified"]}


def spike_pictures(sim, x: torch.Tensor, y: torch.Tensor, T1: int, T2: int, beta: float, names: list[str],
                   run_dir: Path, generator: Optional[torch.Generator] = None) -> None:
    """raster.png and rate_convergence.png of the three phases of a probe batch."""
    from .spiking.rasters import plot_rate_convergence, plot_raster
    from .spiking.simulator import probe_phases

    phases = probe_phases(sim, x, y, T1, T2, beta, x.shape[0], generator)
    plot_raster(phases, names, run_dir / "raster.png")
    plot_rate_convergence(phases, names, run_dir / "rate_convergence.png")
