"""The trainer's side of weight traces: opening traces.h5 for a run (fresh or resumed), the file's
attributes (version, config, normalisation), and full snapshots with the probe batch's equilibria."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import __version__
from .train_state import TrainState
from ..config import Config
from ..data import Split
from .learners import Learner
from .provenance import git_commit
from ..traces import TraceRecorder, layer_specs


def open_recorder(cfg: Config, run_dir: Path, st: TrainState, test_set: Split, ckpt,
                   n_batches: int) -> Optional[TraceRecorder]:
    tc = cfg.traces
    if not tc.enabled:
        return None
    probe = (test_set.x[:tc.probe].numpy(), test_set.y[:tc.probe].numpy()) if tc.probe else None
    resume_it = None if ckpt is None else int(ckpt["epoch"]) * n_batches + int(ckpt["batch"])
    attrs = {"spikeep_version": __version__, "config": json.dumps(cfg.to_dict()), "seed": cfg.train.seed,
             "git_commit": git_commit() or "", **normalisation_attrs(cfg)}
    quantized, pl = {}, st.plasticity
    if pl is not None and pl.spec.device == "linear":  # memristor conductances stay float
        quantized = {n: (q.scale, pl.spec.bits) for n, q in pl.layers.items()}
    return TraceRecorder(run_dir / "traces.h5", layer_specs(st.net, tc.sample, tc.seed, quantized), attrs=attrs,
                         compression=tc.compression, gzip_level=tc.gzip_level, chunk=tc.chunk,
                         flush_every=flush_interval(cfg), probe=probe, resume_iteration=resume_it)


def normalisation_attrs(cfg: Config) -> dict:
    """How the inputs (and the probe batch in the file) were normalised, as plain attributes."""
    d = cfg.data
    how = ("x = (pixel / 255 - input_mean[c]) / input_std[c] per channel c" if d.mean
           else "x = pixel / 255 (no per-channel normalisation)")
    return {"dataset": d.name, "input_mean": np.asarray(d.mean, dtype=np.float64),
            "input_std": np.asarray(d.std, dtype=np.float64), "input_normalisation": how}


def flush_interval(cfg: Config) -> int:
    """How many rows a trace flush writes: traces.flush_every, or fewer when checkpoints come more often
    (every checkpoint flushes the traces first), so trace chunks are each written once, whole, and the
    file does not grow with dead copies of rewritten compressed chunks."""
    every = cfg.traces.flush_every
    if cfg.train.checkpoint_every:
        every = min(every, cfg.train.checkpoint_every)
    return every


def record_snapshot(recorder: TraceRecorder, learner: Learner, iteration: int, epoch: int) -> None:
    net = learner.net
    weights = {n: l.weight for n, l in zip(net.layer_names(), net.layers)}
    biases = {n: l.bias for n, l in zip(net.layer_names(), net.layers)}
    states = None
    if recorder.probe is not None:
        x, y = (torch.from_numpy(a).to(net.synapses[0].weight.device) for a in recorder.probe)
        states = dict(zip(net.layer_names(), learner.free_equilibrium(x).state))
    recorder.snapshot(iteration, epoch, weights, biases, states)
