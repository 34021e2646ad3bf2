"""The running train metrics of an epoch (accuracy, loss, spikes, events, steps), checkpointed."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch


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
