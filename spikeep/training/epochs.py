"""What a run keeps of each epoch: the running train metrics of the epoch in progress (accuracy, loss,
spikes, events, steps; EpochStats, checkpointed), and the per-epoch files of the run folder: metrics.csv,
summary.json, curves.png (and angles.png), rewritten whole and atomically after every epoch."""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch

from .files import write_json_atomic, write_text_atomic
from .plots import plot_angles, plot_curves


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
    events: dict = field(default_factory=dict)  # spiking networks: the events a chip pays for in every phase
    # (spikeep.spiking.metrics.ChipEvents as a dict: synops, spikes, neuron_updates, input_spikes, ...)
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
        # checkpoints before issue 30 kept neuron_updates and input_ops (events of a constant current
        # priced per step): they are dropped, so an epoch resumed from one counts its chip events from there
        d = {k: v for k, v in d.items() if k not in ("neuron_updates", "input_ops")}
        return cls(**d)


METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds",
                 "steps_per_batch",  # relaxation (simulation) steps of all phases, mean per training batch
                 "steps_free", "steps_nudged",  # mean steps of a free / of one nudged phase in training
                 "steps_inference",  # mean steps of the free phase at test time
                 "spikes_per_inference", "synops_per_inference",  # spiking networks
                 # spiking networks with a chip profile: ESTIMATES from the profile's literature figures
                 # per inference, part by part: input (spikes or bias writes), the network's synaptic
                 # events, neuron updates, spikes; then the totals
                 "energy_input_J", "energy_synaptic_J", "energy_neuron_J", "energy_spikes_J",
                 "energy_estimate_inference_J", "energy_estimate_learning_J",
                 "energy_input_mode",  # how the chip takes the input: "spikes" or "bias" (spiking.chip_input)
                 "energy_estimate_source",  # citation, table, kind of number (pre-silicon estimate, ...)
                 "energy_estimate_leaves_out",  # counted events the profile has no figure for ("" = none)
                 "energy_figures_found_in_source"]  # False: a figure used was not found in the source it is attributed to;
                                    # empty where no figure was used (a profile without figures)


def write_metrics(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    fields = [f for f in METRIC_FIELDS if any(f in h for h in history)] or METRIC_FIELDS[:8]
    fields += sorted({k for h in history for k in h if k.startswith("angle_")})  # unidirectional layers
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    write_text_atomic(path, buf.getvalue())


def summary(history: list[dict], total_seconds: float, epochs: int, extra: Optional[dict] = None) -> dict[str, Any]:
    """extra: more keys (a time budget's plan, a cut)."""
    best = max(history, key=lambda h: h["test_acc"])
    last = history[-1]
    return {"epochs_done": last["epoch"], "epochs": epochs, "finished": last["epoch"] == epochs, **(extra or {}),
            "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
            "final_test_acc": last["test_acc"], "final_test_loss": last["test_loss"],
            "final_train_acc": last["train_acc"], "final_train_loss": last["train_loss"],
            "train_seconds": total_seconds}


def write_epoch_files(run_dir: Path, history: list[dict], epochs: int, title: str, extra: Optional[dict] = None) -> None:
    """metrics.csv, summary.json and curves.png of the epochs so far (a run cut by its time budget: the
    row of the cut evaluation has a fractional epoch, epochs done + iterations done / per epoch)."""
    write_metrics(run_dir / "metrics.csv", history)
    whole = [h for h in history if float(h["epoch"]).is_integer()]  # a cut row's seconds go on in its epoch's row
    seconds = sum(h["seconds"] for h in whole) + (history[-1]["seconds"] if history[-1] not in whole else 0.0)
    write_json_atomic(run_dir / "summary.json", summary(history, seconds, epochs, extra))
    plot_curves(run_dir / "curves.png", history, title)
    if any(k.startswith("angle_") for k in history[-1]):
        plot_angles(run_dir / "angles.png", history, title)
