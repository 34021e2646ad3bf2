"""A training run fitted to a number of minutes (train.minutes): the plan, and the deadline.

A run with a budget times a few training iterations after the first ones (compilation, CUDA-graph
capture and cuDNN plans happen there), then fixes its plan once: how many epochs fit, and the cosine's
T_max to match, so that the learning-rate schedule ends where the minutes do. Each epoch ends with an
evaluation of the test set, whose cost is bounded by T1 free steps per test image at the measured cost
of one image-step. The plan is written to the run folder (plan.json) and kept in the checkpoint, so a
resumed run follows the same plan, and `repeat` says how to run the same schedule without a budget.

Whatever the plan, the deadline holds: once the time left would not cover an evaluation of the test
set and a checkpoint, the run stops at the next batch boundary, checkpoints, evaluates and says it was
cut (the checkpoint resumes it, with a new budget for the new invocation).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from .data_parallel import any_process, sum_over_processes
from .files import write_json_atomic

PROBE_SKIP = 3  # iterations not timed: first-call costs (compilation, graph capture, autotuning)
PROBE_TIMED = 10  # iterations timed for the plan (at most a tenth of an epoch, at least one)


@dataclass(frozen=True)
class Plan:
    """The decision, as written to plan.json."""
    minutes: float  # the budget it was fitted to
    epochs: int  # epochs the run trains (at most train.epochs)
    T_max: int  # the cosine's period in epochs (train.scheduler = "cosine"), = epochs
    seconds_per_iteration: float  # measured
    iterations_per_epoch: int
    seconds_per_image_step: float  # measured: an iteration's time / (batch x its relaxation steps)
    evaluation_seconds: float  # bound: test images x T1 x seconds_per_image_step
    setup_seconds: float  # from the start of the budget to the first training iteration
    margin: float  # the planned time is the budget / margin
    timed_iterations: int

    def to_dict(self) -> dict:
        return {**asdict(self), "repeat": f"--set train.minutes=0 --set train.epochs={self.epochs} "
                                          f"--set train.T_max={self.T_max}"}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def make_plan(minutes: float, max_epochs: int, seconds_per_iteration: float, iterations_per_epoch: int,
              batch: int, steps_per_iteration: float, test_images: int, T1: int, setup_seconds: float,
              timed: int, margin: float = 1.1) -> Plan:
    """As many whole epochs (each with its evaluation) as fit into minutes / margin after the setup."""
    image_step = seconds_per_iteration / max(batch * steps_per_iteration, 1e-12)
    evaluation = test_images * T1 * image_step
    epoch = iterations_per_epoch * seconds_per_iteration + evaluation
    fit = math.floor((60.0 * minutes / margin - setup_seconds) / max(epoch, 1e-12))
    epochs = max(1, min(max_epochs, fit))
    return Plan(minutes, epochs, epochs, seconds_per_iteration, iterations_per_epoch, image_step, evaluation,
                setup_seconds, margin, timed)


class Deadline:
    """The budget's clock for this invocation (time.monotonic)."""

    def __init__(self, minutes: float, now: Optional[float] = None):
        self.start = time.monotonic() if now is None else now
        self.end = self.start + 60.0 * minutes

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.end - time.monotonic()


class Probe:
    """Times PROBE_TIMED iterations after the first PROBE_SKIP it sees (fewer where the epoch is shorter);
    `sync` waits for the device before each reading."""

    def __init__(self, sync):
        self.sync, self.first, self.t0, self.steps0, self.at = sync, None, None, 0, 0

    def after_iteration(self, iteration: int, steps: int, n_batches: int) -> Optional[tuple[float, float, int]]:
        """Call at the epoch's start (iteration = the batches done) and after each iteration with the
        epoch's relaxation steps so far; returns (seconds per iteration, steps per iteration, timed
        iterations) once measured."""
        if self.first is None:
            self.first = iteration
        if self.t0 is None:
            if iteration - self.first >= min(PROBE_SKIP, max(n_batches - self.first - 2, 0)):
                self.sync()
                self.t0, self.steps0, self.at = time.perf_counter(), steps, iteration
            return None
        if iteration - self.at >= min(PROBE_TIMED, max(1, n_batches // 10)) or iteration == n_batches:
            self.sync()
            n = iteration - self.at
            return (time.perf_counter() - self.t0) / n, (steps - self.steps0) / n, n
        return None


class Budget:
    """train.minutes in the loop (spikeep.training.time_budget): time a few iterations, fix the plan once (plan.json,
    the cosine's T_max), and cut the run at a batch boundary when the time left would not cover an
    evaluation and a checkpoint."""

    def __init__(self, cfg, device, test_images: int, run_dir: Path, log):
        self.deadline = Deadline(cfg.train.minutes)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.probe, self.test_images, self.run_dir, self.log = Probe(sync), test_images, run_dir, log
        self.setup: Optional[float] = None  # seconds from the budget's start to the first iteration
        self.cut = False

    def before_epoch(self, st, n_batches: int) -> None:
        if st.plan is None:  # (a probe that an epoch's end interrupted starts again)
            self.setup = self.deadline.elapsed() if self.setup is None else self.setup
            self.probe = Probe(self.probe.sync)
            self.probe.after_iteration(st.batch, st.stats.steps, n_batches)

    def after_iteration(self, cfg, st, procs, n_batches: int) -> None:
        """cfg: the run's Config; st: its TrainState (plan, sched, batch, stats); procs: data_parallel.Dist."""
        if st.plan is None and self.setup is not None:
            m = self.probe.after_iteration(st.batch, st.stats.steps, n_batches)
            if m is not None:
                it, steps = sum_over_processes(procs, [m[0], m[1]]) if procs.world > 1 else m[:2]
                it, steps = it / procs.world, steps / procs.world
                plan = make_plan(cfg.train.minutes, cfg.train.epochs, it, n_batches, cfg.train.batch_size, steps,
                                 self.test_images, cfg.dynamics.T1, self.setup, m[2], cfg.train.budget_margin)
                self._adopt(plan, st, procs)
        # the deadline: every iteration alone (a host clock, no device read); in a data-parallel run only at
        # the sync points, where the processes agree on it (one collective, not one per iteration)
        if st.plan is not None and st.batch < n_batches and (procs.world == 1 or st.batch % cfg.train.sync_every == 0):
            reserve = (st.plan["evaluation_seconds"] + 2 * st.plan["seconds_per_iteration"]
                       + min(5.0, 3.0 * cfg.train.minutes))  # + a checkpoint's writing
            due = self.deadline.left() < reserve
            self.cut = any_process(procs, due) if procs.world > 1 else due

    def _adopt(self, plan: Plan, st, procs) -> None:
        st.plan = plan.to_dict()
        if st.sched is not None and hasattr(st.sched, "T_max"):
            st.sched.T_max = plan.T_max  # no scheduler step has been taken yet: the whole cosine is the plan's
        if procs.main:
            write_json_atomic(self.run_dir / "plan.json", st.plan)
            self.log.info(f"time budget {plan.minutes:g} min: {plan.seconds_per_iteration:.3g} s per iteration "
                          f"({plan.iterations_per_epoch} per epoch), evaluation <= {plan.evaluation_seconds:.3g} s, "
                          f"setup {plan.setup_seconds:.3g} s: {plan.epochs} epoch(s), cosine T_max {plan.T_max} "
                          f"(plan.json; the same schedule without a budget: {st.plan['repeat']})")
