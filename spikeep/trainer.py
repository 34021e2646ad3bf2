"""Training: the loop. One gradient estimate per mini-batch from the learner (EP or BPTT), any
torch.optim optimizer on top, in a run folder that survives crashes and resumes bit for bit.

    train(cfg, run_dir)           the whole run: folder, checkpoints, resume, divergence checks,
                                  data-parallel over torch.distributed when started by torchrun

Randomness: the data order comes from one generator (its state at the start of each epoch is
checkpointed, so a run resumed mid-epoch replays the same permutation), random signs from a second one,
checkpointed as it is; augmentation and dropout masks are keyed per sample (seed, epoch, sample index:
spikeep.data.keyed_uniform). A process of a distributed run holds its shard of each epoch
(spikeep.distributed) and draws only for its own samples.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .build import build_network, engine_name, make_learner, make_optimizer, make_plasticity, make_scheduler
from .validation import check_config, config_from_dict
from .torch_settings import resolve_device, set_threads
from .checkpoint import TrainState
from .config import Config, read_json_config
from .data import DROPOUT_STREAM, Split, augment_keyed, check_labels, keyed_uniform, prepare_data
from .distributed import Dist, any_process, average_gradients, barrier, batches_per_epoch, epoch_shard, \
    global_batch_size, join_process_group, on_main, place, sum_over_processes
from .evaluation import Evaluation, evaluate
from .files import StorageError, remove_stale_temporaries, write_json_atomic
from .runfolder import RunLock, _kind, check_run_dir, refuse_existing_run
from .core.network import EqNetwork
from .methods import Learner, SpikingEP, WarmStarts
from .checks import DivergenceError, FiniteChecks
from .epoch_stats import EpochStats
from .learning.alignment import alignment_angles
from .hardware.energy import energy_columns
from .plots import spike_pictures
from .spiking.simulator import probe_phases
from .traces import TraceRecorder, layer_specs
from .checkpoint_files import CHECKPOINT_FORMAT, CheckpointError, check_run_id, check_state_dict, load_checkpoint, save_checkpoint
from .epoch_files import write_epoch_files
from .logs import close_logger, get_logger, log_traceback_to_file
from .provenance import environment, git_commit
from .runfolder import new_run_dir


class TrainResult(NamedTuple):
    net: torch.nn.Module
    history: list[dict]  # one dict of metrics per epoch
    run_dir: Optional[Path]


def train(cfg: Optional[Config] = None, run_dir: Optional[str | Path] = None, *, resume: bool = False,
          progress: bool = True, echo: bool = True, base_dir: str | Path = "runs",
          overwrite: bool = False) -> TrainResult:
    """Train cfg.model on cfg.data in a run folder.

    resume=True continues the run in `run_dir` from its checkpoint (cfg is then read from the folder);
    otherwise a new folder is made (runs/<name>/<timestamp> unless run_dir is given). A given run_dir
    that holds anything is refused (overwrite=True moves it aside first, deleting nothing). Nothing is
    created before the config, the data and the device are known good; one process writes a folder
    at a time (runfolder.RunLock). Under torchrun only process 0 touches the folder.
    """
    procs = join_process_group()
    ckpt = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run folder")
        run_dir, cfg, ckpt = on_main(procs, lambda: _resumable(check_run_dir(Path(run_dir))))
    elif run_dir is not None and procs.main:
        run_dir = check_run_dir(Path(run_dir))
        if not overwrite:
            refuse_existing_run(run_dir)  # early, before the data is read
    if cfg is None:
        raise ValueError("train needs a config (or resume=True with a run folder)")
    check_config(cfg)
    ds = prepare_data(cfg.data)
    check_labels(ds, cfg.model.n_classes)
    procs, device = place(procs, resolve_device(cfg.dynamics.device))
    if not resume:
        # ties the folder's checkpoints to it; one id for every process
        cfg = dataclasses.replace(cfg, run_id=on_main(procs, lambda: uuid.uuid4().hex[:16]))
    locks: list[RunLock] = []  # process 0's lock on the folder (kept here: a lock is not sent to others)
    try:
        run_dir = on_main(procs, lambda: _open_run_dir(cfg, run_dir, resume, overwrite, base_dir, locks))
        if procs.main:
            remove_stale_temporaries(run_dir)
        return _logged(cfg, ds, run_dir, ckpt, procs, device, echo, progress and procs.main)
    finally:
        for lock in locks:
            lock.release()


def _open_run_dir(cfg: Config, run_dir: Optional[Path], resume: bool, overwrite: bool, base_dir,
                  locks: list) -> Path:
    """(process 0) The run folder made, or found for a resume, and locked; config.json written."""
    if resume:
        locks.append(RunLock(run_dir).acquire())
        return run_dir
    if run_dir is None:
        run_dir = new_run_dir(cfg.name, base_dir)
    else:
        aside = refuse_existing_run(run_dir, overwrite)
        if aside is not None:
            print(f"spikeep: the run that was in {run_dir} was moved to {aside}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    locks.append(RunLock(run_dir).acquire())
    refuse_existing_run(run_dir)  # nothing came in between (another writer that got here first)
    write_json_atomic(run_dir / "config.json", cfg.to_dict())
    return run_dir


def _logged(cfg: Config, ds, run_dir: Path, ckpt, procs: Dist, device, echo: bool, progress: bool) -> TrainResult:
    """_train with the run's log open; divergence and storage errors logged with where to go on."""
    log = get_logger(run_dir, enabled=procs.main, echo=echo)
    try:
        return _train(cfg, ds, run_dir, ckpt, procs, device, log, progress)
    except (DivergenceError, StorageError) as e:
        ck = run_dir / "checkpoint.pt"
        msg = f"{e}; the run stops. " + (_last_checkpoint_words(ck, run_dir) if ck.exists()
                                         else "No checkpoint had been written yet.")
        log.error(msg)
        raise type(e)(msg) if isinstance(e, DivergenceError) else StorageError(msg, e.errno) from None
    except Exception:
        log_traceback_to_file(log, "the run stopped on this error:")
        raise
    finally:
        close_logger(log)


def _last_checkpoint_words(ck: Path, run_dir: Path) -> str:
    """What the last checkpoint of a stopped run holds: finite weights can still be far off (a run that
    diverges passes through weights of 1e30 before they overflow), so say how large they are and where
    the best weights are."""
    try:
        state = load_checkpoint(ck)["model"]
        largest = max(float(v.abs().max()) for v in state.values() if torch.is_tensor(v) and v.numel())
    except Exception:  # noqa: BLE001 (the words are a courtesy: never hide the divergence itself)
        return f"The last checkpoint is {ck}."
    best = run_dir / "best.pt"
    where = f"; the best weights are in {best}" if best.is_file() else ""
    if largest > 1e6:
        return (f"The last checkpoint, {ck}, holds weights up to {largest:.3g}: the run was already diverging "
                f"when it was written, so resuming it would diverge again (lower the learning rates){where}.")
    return f"The last good checkpoint is {ck} (largest weight {largest:.3g}){where}."


def _resumable(run_dir: Path) -> tuple[Path, Config, dict]:
    """The config and checkpoint of a run folder to resume, refusing (and touching nothing) a folder
    without a usable checkpoint or with one that belongs to another run."""
    cfg_path = run_dir / "config.json"
    if not run_dir.is_dir() or not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a spikeep run folder (no config.json)")
    cfg = config_from_dict(read_json_config(cfg_path), str(cfg_path))
    ck = run_dir / "checkpoint.pt"
    if ck.exists() and not ck.is_file():
        raise CheckpointError(f"{ck} is not a regular file (a {_kind(ck)}), so it cannot be a checkpoint; "
                                   f"nothing was changed")
    if not ck.is_file():
        there = ", ".join(sorted(p.name for p in run_dir.iterdir())) or "nothing"
        raise CheckpointError(
            f"{run_dir}: no checkpoint.pt to resume from (the folder holds {there}); nothing was changed. "
            f"A run killed before its first checkpoint cannot be resumed: start it anew with "
            f"`spikeep train CONFIG` (checkpoints are written every epoch and every train.checkpoint_every "
            f"iterations)")
    ckpt = load_checkpoint(ck)
    check_run_id(ck, ckpt, cfg.run_id, run_dir)
    with torch.device("meta"):  # the weights fit the config's network: refused before the folder is locked
        check_state_dict(ck, ckpt["model"], EqNetwork(cfg.model))
    return run_dir, cfg, ckpt


def _train(cfg: Config, ds, run_dir: Path, ckpt, procs: Dist, device, log, progress: bool) -> TrainResult:
    threads = set_threads(cfg)
    st, learner = _training_state(cfg, ds, run_dir, ckpt, procs, device, log)
    n_batches = batches_per_epoch(ds.train.y.shape[0], cfg.train.batch_size, procs)
    recorder = _open_recorder(cfg, run_dir, st, ds.test, ckpt, n_batches) if procs.main else None
    if recorder is not None and recorder.moved_aside is not None:
        log.warning(f"{run_dir / 'traces.h5'} was damaged and cannot be continued: kept as "
                    f"{recorder.moved_aside}; new traces start at the resumed iteration")
    B = cfg.train.batch_size
    log.info(f"{cfg.name}: {cfg.estimator.name} on {ds.name} ({ds.train.y.shape[0]} train, "
             f"{ds.test.y.shape[0]} test{' drawn at random' if cfg.data.test_subset else ''}), device {device}, "
             f"{procs.world} process(es)" + (f" x batch {B} = global batch {B * procs.world}, learning rates x "
                                           f"{lr_factor(cfg, procs.world):.4g} ({cfg.train.lr_scaling})"
                                           if procs.world > 1 else "")
             + f", {threads}, {sum(p.numel() for p in st.net.parameters())} parameters, run folder {run_dir}")
    # one process: the training set on the device once; several: each holds its shard of each epoch
    train_set = Split(ds.train.x.to(device), ds.train.y.to(device)) if procs.world == 1 else ds.train
    try:
        while st.epoch < cfg.train.epochs:
            seconds = _train_epoch(cfg, run_dir, procs, device, progress, train_set, st, learner, recorder)
            _end_epoch(cfg, run_dir, procs, log, ds.test, st, learner, recorder, seconds, n_batches)
    finally:
        if recorder is not None:
            recorder.close()
    return TrainResult(st.net, st.history, run_dir)


def lr_factor(cfg: Config, world: int) -> float:
    """How the learning rates scale with the number of processes (train.lr_scaling): the global batch
    is train.batch_size x world."""
    return {"none": 1.0, "linear": float(world), "sqrt": math.sqrt(world)}[cfg.train.lr_scaling]


def _training_state(cfg: Config, ds, run_dir: Path, ckpt, procs: Dist, device, log) -> tuple[TrainState, Learner]:
    """Network, optimizer, generators, plasticity, warm starts: fresh or restored from `ckpt`."""
    net = build_network(cfg, device)
    net.check_labels = False  # checked once for the whole data set above: no device sync per batch
    opt = make_optimizer(net, cfg, lr_factor(cfg, procs.world))
    step_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    # Poisson input draws on the run's device (the same generator on the CPU)
    device_gen = step_gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(cfg.train.seed + 2)
    warm = WarmStarts(cfg.dynamics.warm_start, net, ds.train.y.shape[0]) if cfg.dynamics.warm_start != "none" else None
    st = TrainState(net, opt, make_scheduler(opt, cfg), torch.Generator().manual_seed(cfg.train.seed),
                    step_gen, make_plasticity(cfg, net), device_gen=device_gen, warm=warm)
    if ckpt is not None:
        st.restore(ckpt, run_dir / "checkpoint.pt")
        log.info(f"resuming {run_dir} at epoch {st.epoch + 1}, batch {st.batch}")
        if st.history and procs.main:  # a crash may have come between the checkpoint and these files
            _write_epoch_files(run_dir, cfg, st.history)
    elif procs.main:
        d = cfg.dynamics
        write_json_atomic(run_dir / "env.json", environment(device, procs.world, {
            "mode": d.precision, "engine": engine_name(d, device), "schedule": d.schedule,
            "recompute_every": d.recompute_every, "warm_start": d.warm_start}))
    return st, make_learner(cfg, net, warm)


def _evaluate_sharded(learner: Learner, test_set: Split, cfg: Config, procs: Dist) -> Evaluation:
    """evaluate() on this process's share of the test set (samples rank, rank + world, ...), the sums
    reduced over processes (one all-reduce): the test set's numbers, whatever the number of processes."""
    if procs.world <= 1:
        return evaluate(learner, test_set, cfg)
    part = Split(test_set.x[procs.rank::procs.world], test_set.y[procs.rank::procs.world])
    n = part.y.shape[0]
    ev = evaluate(learner, part, cfg) if n else Evaluation(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    sums = sum_over_processes(procs, [n, ev.loss * n, ev.acc * n, ev.spikes * n, ev.synops * n, ev.steps,
                                    ev.neuron_updates * n, ev.input_ops * n])
    total = sums[0]
    return Evaluation(sums[1] / total, sums[2] / total, sums[3] / total, sums[4] / total, sums[5] / procs.world,
                      sums[6] / total, sums[7] / total)


def _epoch_row(cfg: Config, run_dir: Path, test_set: Split, learner: Learner, stats: EpochStats, ev: Evaluation,
               epoch: int, lr: float, train_seconds: float) -> dict:
    """The epoch's row of metrics.csv (and, for spiking networks, energy estimates and the spike pictures)."""
    net = learner.net
    row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc, "test_loss": ev.loss,
           "test_acc": ev.acc, "lr": lr, "seconds": train_seconds,
           "steps_per_batch": stats.steps / max(stats.batches, 1),
           "steps_free": stats.steps_free / max(stats.batches, 1),
           "steps_nudged": (stats.steps - stats.steps_free) / max(stats.nudged_phases, 1),
           "steps_inference": ev.steps,
           **{f"angle_{n}": float(a) for n, a in alignment_angles(net).items()}}
    if isinstance(learner, SpikingEP):
        row.update(spikes_per_inference=ev.spikes, synops_per_inference=ev.synops)
        row.update(energy_columns(cfg, ev, stats))
        dev = net.synapses[0].weight.device
        s = cfg.spiking
        phases = probe_phases(learner.sim, test_set.x[:4].to(dev), test_set.y[:4].to(dev), s.T1, s.T2,
                              cfg.estimator.beta, 4, torch.Generator(device=dev).manual_seed(cfg.train.seed))
        spike_pictures(phases, net.layer_names()[:len(net.synapses)], run_dir)
    return row


def _epoch_line(row: dict, ev: Evaluation, learner: Learner) -> str:
    spk = (f" | {ev.spikes:.0f} spikes, {ev.synops:.3g} SynOps per inference"
           if isinstance(learner, SpikingEP) else "")
    if row.get("energy_estimate_inference_J") is not None:
        spk += (f" | energy estimate {row['energy_estimate_inference_J']:.3g} J per inference, "
                f"{row['energy_estimate_learning_J']:.3g} J per training sample, from {row['energy_estimate_source']}"
                + (f"; leaves out {row['energy_estimate_leaves_out']}" if row["energy_estimate_leaves_out"] else "")
                + ("" if row["energy_figures_found_in_source"] else " (UNVERIFIED energy figure, see chips.py)"))
    return (f"epoch {row['epoch']}: train acc {row['train_acc']:.2f}% | test acc {ev.acc:.2f}% "
            f"(loss {ev.loss:.4f}) | lr {row['lr']:.3g} | {row['seconds']:.1f} s | steps per phase: free "
            f"{row['steps_free']:.1f}, nudged {row['steps_nudged']:.1f}, inference {ev.steps:.1f}{spk}")


def _write_epoch_files(run_dir: Path, cfg: Config, history: list[dict]) -> None:
    write_epoch_files(run_dir, history, cfg.train.epochs, f"{cfg.name} ({cfg.estimator.name})")


def _open_recorder(cfg: Config, run_dir: Path, st: TrainState, test_set: Split, ckpt,
                   n_batches: int) -> Optional[TraceRecorder]:
    tc = cfg.traces
    if not tc.enabled:
        return None
    probe = (test_set.x[:tc.probe].numpy(), test_set.y[:tc.probe].numpy()) if tc.probe else None
    resume_it = None if ckpt is None else int(ckpt["epoch"]) * n_batches + int(ckpt["batch"])
    attrs = {"spikeep_version": __version__, "config": json.dumps(cfg.to_dict()), "seed": cfg.train.seed,
             "git_commit": git_commit() or "", **_normalisation_attrs(cfg)}
    quantized, pl = {}, st.plasticity
    if pl is not None and pl.spec.device == "linear":  # memristor conductances stay float
        quantized = {n: (q.scale, pl.spec.bits) for n, q in pl.layers.items()}
    return TraceRecorder(run_dir / "traces.h5", layer_specs(st.net, tc.sample, tc.seed, quantized), attrs=attrs,
                         compression=tc.compression, gzip_level=tc.gzip_level, chunk=tc.chunk,
                         flush_every=_flush_interval(cfg), probe=probe, resume_iteration=resume_it)


def _normalisation_attrs(cfg: Config) -> dict:
    """How the inputs (and the probe batch in the file) were normalised, as plain attributes."""
    d = cfg.data
    how = ("x = (pixel / 255 - input_mean[c]) / input_std[c] per channel c" if d.mean
           else "x = pixel / 255 (no per-channel normalisation)")
    return {"dataset": d.name, "input_mean": np.asarray(d.mean, dtype=np.float64),
            "input_std": np.asarray(d.std, dtype=np.float64), "input_normalisation": how}


def _flush_interval(cfg: Config) -> int:
    """How many rows a trace flush writes: traces.flush_every, or fewer when checkpoints come more often
    (every checkpoint flushes the traces first), so trace chunks are each written once, whole, and the
    file does not grow with dead copies of rewritten compressed chunks."""
    every = cfg.traces.flush_every
    if cfg.train.checkpoint_every:
        every = min(every, cfg.train.checkpoint_every)
    return every


def _snapshot(recorder: TraceRecorder, learner: Learner, iteration: int, epoch: int) -> None:
    net = learner.net
    weights = {n: l.weight for n, l in zip(net.layer_names(), net.layers)}
    biases = {n: l.bias for n, l in zip(net.layer_names(), net.layers)}
    states = None
    if recorder.probe is not None:
        x, y = (torch.from_numpy(a).to(net.synapses[0].weight.device) for a in recorder.probe)
        states = dict(zip(net.layer_names(), learner.free_equilibrium(x).state))
    recorder.snapshot(iteration, epoch, weights, biases, states)


class _Epoch(NamedTuple):
    """What an epoch's iterations share."""
    number: int  # 1-based
    shard: torch.Tensor  # this process's samples of the epoch (indices into the training set), in order
    data: Split  # what `positions` index: the whole set on the device (one process) or the shard's samples
    n_batches: int
    layer_weights: dict


def _train_epoch(cfg: Config, run_dir: Path, procs: Dist, device, progress: bool, train_set: Split,
                 st: TrainState, learner: Learner, recorder: Optional[TraceRecorder]) -> float:
    """The batches of one epoch from where the state stands; returns the epoch's training seconds.
    Nothing is read from the device inside an iteration except every train.sync_every iterations
    (finite checks, progress bar), before every checkpoint and at the epoch's end."""
    ep = _start_epoch(cfg, procs, device, train_set, st)
    t0 = time.perf_counter() - st.stats.seconds
    bar = tqdm(total=ep.n_batches, initial=st.batch, desc=f"epoch {ep.number}/{cfg.train.epochs}",
               disable=not progress, leave=False)
    checks = FiniteChecks()
    while st.batch < ep.n_batches:
        before = _iteration(cfg, procs, train_set, st, learner, recorder, ep, checks)
        st.batch += 1
        st.stats.batches += 1
        checkpoint_now = _sync_point(cfg, procs, st, ep.n_batches, checks, bar)
        if recorder is not None:
            it_global = st.epoch * ep.n_batches + st.batch
            recorder.record(it_global, ep.number, ep.layer_weights, before,
                            {n: w.grad for n, w in ep.layer_weights.items()}, alignment_angles(st.net))
            if cfg.traces.full_every and it_global % cfg.traces.full_every == 0:
                _snapshot(recorder, learner, it_global, ep.number)
        bar.update()
        if checkpoint_now and procs.main:
            st.stats.seconds = time.perf_counter() - t0
            if recorder is not None:
                recorder.flush()  # traces up to the checkpoint are on disk before it is
            st.save(run_dir / "checkpoint.pt", cfg)
        if checkpoint_now:
            st.saved_at = time.monotonic()  # every process: the next time-based checkpoint is agreed on
    bar.close()
    return time.perf_counter() - t0


def _start_epoch(cfg: Config, procs: Dist, device, train_set: Split, st: TrainState) -> _Epoch:
    """The epoch's permutation (replayed from its saved generator state when resumed mid-epoch) and
    this process's shard of it, moved to the device (several processes: only the shard)."""
    if st.batch == 0:
        st.order_state = st.order_gen.get_state()  # what a resume mid-epoch needs to replay the order
    else:
        st.order_gen.set_state(st.order_state)
    n_train = train_set.y.shape[0]
    shard = epoch_shard(torch.randperm(n_train, generator=st.order_gen), procs)
    data = train_set if procs.world == 1 else Split(train_set.x[shard].to(device), train_set.y[shard].to(device))
    net = st.net
    return _Epoch(st.epoch + 1, shard.to(device), data, batches_per_epoch(n_train, cfg.train.batch_size, procs),
                  {n: l.weight for n, l in zip(net.layer_names(), net.layers)})


def _batch(cfg: Config, procs: Dist, st: TrainState, ep: _Epoch) -> tuple:
    """(x, y, sample indices, dropout mask) of this process's part of the iteration's global batch;
    augmentation and masks keyed by (seed, epoch, sample), so no process draws for another."""
    B, d = cfg.train.batch_size, cfg.data
    positions = slice(st.batch * B, (st.batch + 1) * B)
    idx = ep.shard[positions]
    where = idx if procs.world == 1 else positions  # one process: the set itself; several: the shard's copy
    x, y = ep.data.x[where], ep.data.y[where]
    if d.crop_padding or d.hflip:
        x = augment_keyed(x, cfg.train.seed, ep.number, idx, d.crop_padding, d.hflip, d.padding_mode)
    mask = None
    net = st.net
    if net.dropout_layer is not None:
        n = math.prod(net.layer_shapes[net.dropout_layer])
        mask = net.mask_from_uniform(keyed_uniform(cfg.train.seed, ep.number, idx, DROPOUT_STREAM, n))
    return x, y, idx, mask


def _iteration(cfg: Config, procs: Dist, train_set: Split, st: TrainState, learner: Learner,
               recorder: Optional[TraceRecorder], ep: _Epoch, checks: FiniteChecks):
    """One estimate and update; returns the traced synapses' values before the update (or None)."""
    net, opt = st.net, st.opt
    x, y, idx, mask = _batch(cfg, procs, st, ep)
    where = f"epoch {ep.number}, iteration {st.batch + 1}"
    opt.zero_grad(set_to_none=False)
    r = learner.estimate(x, y, st.step_gen, st.device_gen, mask, idx) if y.shape[0] > 0 else None
    if r is not None:
        _add_counts(st.stats, r)
        named_state = list(zip(net.layer_names(), r.state))
    else:  # a short last batch left this process nothing: it contributes zero
        for p in net.parameters():
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
        learner.skip(st.step_gen)  # the iteration's one shared draw (a random sign), so generators stay in step
        named_state = [("input", x)]
    checks.add(named_state, "state", where)
    checks.add_loss(r.loss if r is not None else None, where)
    if procs.world > 1:
        average_gradients(net, y.shape[0], global_batch_size(train_set.y.shape[0], cfg.train.batch_size, procs, st.batch))
    checks.add([(n, p.grad) for n, p in net.named_parameters()], "gradient", where)
    before = recorder.sample(ep.layer_weights) if recorder is not None else None
    opt.step()
    if st.plasticity is not None:  # each synapse realises its update on its own grid / device
        st.stats.updates = st.stats.updates + st.plasticity.apply()
    else:
        st.stats.updates = st.stats.updates + sum(w.numel() for w in ep.layer_weights.values())
    learner.weights_changed()
    checks.add(list(net.named_parameters()), "weights", where)
    if r is not None:
        st.stats.add_batch(r.loss, r.logits, y)
    return before


def _add_counts(stats: EpochStats, r) -> None:
    stats.spikes += r.spikes
    stats.synops += r.synops
    stats.neuron_updates += r.neuron_updates
    stats.input_ops += r.input_ops
    stats.steps += r.steps
    stats.steps_free += r.free_steps
    stats.nudged_phases += r.nudged_phases


def _sync_point(cfg: Config, procs: Dist, st: TrainState, n_batches: int, checks: FiniteChecks, bar) -> bool:
    """Where the run reads the device (finite checks, progress bar) and decides on a checkpoint (every
    checkpoint_every iterations, or checkpoint_minutes after the last one: the same in every process)."""
    every = cfg.train.checkpoint_every
    checkpoint_now = bool(every and st.batch % every == 0 and st.batch < n_batches)
    if checkpoint_now or st.batch % cfg.train.sync_every == 0 or st.batch == n_batches or cfg.traces.enabled:
        checks.check(procs)  # every process at the same iterations; traces record only checked ones
        bar.set_postfix(acc=f"{st.stats.acc:.2f}%", loss=f"{st.stats.loss:.4f}")
        if not checkpoint_now and st.batch < n_batches and cfg.train.checkpoint_minutes:
            due = time.monotonic() - st.saved_at >= 60 * cfg.train.checkpoint_minutes
            checkpoint_now = any_process(procs, due) if procs.world > 1 else due
    return checkpoint_now


def _end_epoch(cfg: Config, run_dir: Path, procs: Dist, log, test_set: Split, st: TrainState, learner: Learner,
               recorder: Optional[TraceRecorder], train_seconds: float, n_batches: int) -> None:
    """Evaluate (every process its share of the test set), write the epoch's row, best.pt, traces, the
    checkpoint and the epoch files (process 0)."""
    epoch, stats, opt = st.epoch + 1, st.stats.synced(), st.opt
    seen, correct, loss_sum = sum_over_processes(procs, [stats.seen, stats.correct, stats.loss_sum])
    stats.seen, stats.correct, stats.loss_sum = int(seen), int(correct), float(loss_sum)
    lr = opt.param_groups[0]["lr"]
    if st.sched is not None:
        st.sched.step()
    st.epoch, st.batch, st.stats = epoch, 0, EpochStats()
    ev = _evaluate_sharded(learner, test_set, cfg, procs)
    if not math.isfinite(ev.loss):
        raise DivergenceError(f"the test loss is {ev.loss} after epoch {epoch} (the network's output "
                              f"overflows: weights too large?)")
    if procs.main:
        row = _epoch_row(cfg, run_dir, test_set, learner, stats, ev, epoch, lr, train_seconds)
        st.history.append(row)
        if ev.acc > st.best["test_acc"]:
            st.best = {"test_acc": ev.acc, "epoch": epoch}
            save_checkpoint(run_dir / "best.pt", {"format": CHECKPOINT_FORMAT, "model": st.net.state_dict(),
                                                  "epoch": epoch, "test_acc": ev.acc, "config": cfg.to_dict()})
        if recorder is not None:
            it_end = epoch * n_batches
            if cfg.traces.full_each_epoch and not (cfg.traces.full_every and it_end % cfg.traces.full_every == 0):
                _snapshot(recorder, learner, it_end, epoch)
            recorder.flush()
        st.save(run_dir / "checkpoint.pt", cfg)
        _write_epoch_files(run_dir, cfg, st.history)
        log.info(_epoch_line(row, ev, learner))
    st.saved_at = time.monotonic()  # the epoch's checkpoint (every process keeps the same clock of it)
    barrier(procs)
