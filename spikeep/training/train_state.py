"""The training state a checkpoint holds, and how it is saved and restored (bitwise resume)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..config import Config
from ..core.network import EqNetwork
from .learners import Learner, WarmStarts
from ..learning.plasticity import Plasticity
from .epochs import EpochStats
from .checkpoint_files import CHECKPOINT_FORMAT, CheckpointError, check_state_dict, save_checkpoint


@dataclass
class TrainState:
    """Everything a checkpoint holds: weights, optimizer and scheduler, both generators, where in
    the data the run is (`epoch` epochs done, `batch` batches of the next one), metrics so far."""
    net: EqNetwork
    opt: torch.optim.Optimizer
    sched: Optional[torch.optim.lr_scheduler.LRScheduler]
    order_gen: torch.Generator  # data order; its state at the epoch start is what is saved mid-epoch
    step_gen: torch.Generator  # augmentation and random signs
    plasticity: Optional[Plasticity] = None  # chip-like synapses (None: float weights)
    epoch: int = 0
    batch: int = 0
    order_state: Optional[torch.Tensor] = None
    stats: EpochStats = field(default_factory=EpochStats)  # running train metrics of the current epoch
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"test_acc": -1.0, "epoch": 0})
    device_gen: Optional[torch.Generator] = None  # augmentation, Poisson input on the run's device (CPU: step_gen)
    warm: Optional[WarmStarts] = None  # dynamics.warm_start states (None: "none")
    learner: Optional[Learner] = None  # what it carries between batches (Learner.state_dict)
    plan: Optional[dict] = None  # train.minutes: the plan the run follows (time_budget.Plan.to_dict)
    saved_at: float = field(default_factory=lambda: time.monotonic())  # when this process last saved (or started): not saved

    def __post_init__(self):
        if self.device_gen is None:
            self.device_gen = self.step_gen

    def checkpoint(self, cfg: Config, stats: Optional[EpochStats] = None) -> dict:
        """The checkpoint's contents; `stats` replaces the running statistics (a data-parallel run
        saves every process's sums, trainer._stats_of_every_process)."""
        return {"format": CHECKPOINT_FORMAT, "model": self.net.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else {},
                "epoch": self.epoch, "batch": self.batch,
                "order_rng": self.order_state if self.batch else self.order_gen.get_state(),
                "step_rng": self.step_gen.get_state(), "torch_rng": torch.get_rng_state(),
                **({"device_rng": self.device_gen.get_state()} if self.device_gen is not self.step_gen else {}),
                "epoch_stats": (self.stats if stats is None else stats).state_dict(), "history": self.history, "best": dict(self.best),
                "plasticity": self.plasticity.state_dict() if self.plasticity is not None else {},
                **({"warm_start": self.warm.state_dict()} if self.warm is not None else {}),
                **({"learner": self.learner.state_dict()} if self.learner is not None else {}),
                **({"plan": self.plan} if self.plan is not None else {}),
                "config": cfg.to_dict()}

    def restore(self, ckpt: dict, path: Path) -> None:
        check_state_dict(path, ckpt["model"], self.net)
        try:
            self.net.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            if self.sched is not None:
                self.sched.load_state_dict(ckpt["scheduler"])
            self.step_gen.set_state(ckpt["step_rng"])
            if self.device_gen is not self.step_gen:
                self.device_gen.set_state(ckpt["device_rng"])
            self.order_gen.set_state(ckpt["order_rng"])
            self.order_state = ckpt["order_rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt["batch"])
            self.stats = EpochStats.from_state_dict(ckpt["epoch_stats"])
            self.history, self.best = list(ckpt["history"]), dict(ckpt["best"])
            if self.plasticity is not None:
                self.plasticity.load_state_dict(ckpt["plasticity"])
            if self.warm is not None:
                self.warm.load_state_dict(ckpt["warm_start"])
            if self.learner is not None:
                self.learner.load_state_dict(ckpt.get("learner", {}))
            self.plan = ckpt.get("plan")
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{path}: incomplete or foreign training state ({e})") from None

    def save(self, path: Path, cfg: Config, stats: Optional[EpochStats] = None) -> None:
        save_checkpoint(path, self.checkpoint(cfg, stats))
        self.saved_at = time.monotonic()
