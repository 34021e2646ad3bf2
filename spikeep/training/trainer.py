"""Training: the loop. One gradient estimate per mini-batch from the learner (EP or BPTT), any
torch.optim optimizer on top, in a run folder that survives crashes and resumes bit for bit.

    train(cfg, run_dir)           the whole run: folder, checkpoints, resume, divergence checks,
                                  data-parallel over torch.distributed when started by torchrun

Randomness: the data order comes from one generator (its state at the start of each epoch is
checkpointed, so a run resumed mid-epoch replays the same permutation), random signs from a second one,
checkpointed as it is; augmentation and dropout masks are keyed per sample (seed, epoch, sample index:
spikeep.data.keyed_uniform). A process of a distributed run holds its shard of each epoch
(spikeep.training.data_parallel) and draws only for its own samples.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from tqdm.auto import tqdm

from .build import build_network, engine_name, make_learner, make_optimizer, make_plasticity, make_scheduler
from .train_state import TrainState
from .checkpoint_files import CHECKPOINT_FORMAT, save_checkpoint
from .divergence import DivergenceError, FiniteChecks
from ..config import Config
from ..data import DROPOUT_STREAM, Split, augment_keyed, check_labels, keyed_uniform, prepare_data
from .data_parallel import Dist, any_process, average_gradients, barrier, batches_per_epoch, epoch_shard, \
    global_batch_size, join_process_group, on_main, place, sum_over_processes
from .epochs import EpochStats, write_epoch_files
from .evaluation import Evaluation, evaluate
from .files import StorageError, remove_stale_temporaries, write_json_atomic
from ..hardware.energy import energy_columns
from ..learning.alignment import alignment_angles
from .train_log import close_logger, get_logger, log_traceback_to_file
from .learners import Learner, SpikingEP, WarmStarts
from .plots import spike_pictures
from .provenance import environment
from .run_folder import ACTIVE, RunLock, check_run_dir, last_checkpoint_words, open_run_dir, refuse_existing_run, \
    resumable
from ..spiking.metrics import ChipEvents
from ..spiking.simulator import probe_phases
from .time_budget import Budget
from .torch_settings import resolve_device, set_threads
from .trace_recording import open_recorder, record_snapshot
from ..traces import TraceRecorder
from .validation import check_config


class TrainResult(NamedTuple):
    net: torch.nn.Module
    history: list[dict]  # one dict of metrics per epoch
    run_dir: Optional[Path]
    main: bool = True  # this process is process 0 (the one that writes the run folder and reports)


def train(cfg: Optional[Config] = None, run_dir: Optional[str | Path] = None, *, resume: bool = False,
          progress: Optional[bool] = None, echo: bool = True, base_dir: str | Path = "runs",
          overwrite: bool = False) -> TrainResult:
    """Train cfg.model on cfg.data in a run folder.

    resume=True continues the run in `run_dir` from its checkpoint (cfg is then read from the folder);
    otherwise a new folder is made (runs/<name>/<timestamp> unless run_dir is given). A given run_dir
    that holds anything is refused (overwrite=True moves it aside first, deleting nothing). Nothing is
    created before the config, the data and the device are known good; one process writes a folder
    at a time (run_folder.RunLock). Under torchrun only process 0 touches the folder. progress: tqdm bars
    (None: only when stderr is a terminal, so logs and pipes get none).
    """
    procs = join_process_group()
    ckpt = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run folder")
        if cfg is not None or overwrite:
            raise ValueError("resume continues a run with the config stored in its folder: give no config "
                             "(and no overwrite)")
        run_dir, cfg, ckpt = on_main(procs, lambda: resumable(check_run_dir(Path(run_dir))))
    elif run_dir is not None and procs.main:
        run_dir = check_run_dir(run_dir, overwrite)
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
        run_dir = on_main(procs, lambda: open_run_dir(cfg, run_dir, resume, overwrite, base_dir, locks))
        if procs.main:
            remove_stale_temporaries(run_dir)
        if progress is None:
            progress = _stderr_is_terminal()
        return _logged(cfg, ds, run_dir, ckpt, procs, device, echo, progress and procs.main)
    finally:
        for lock in locks:
            lock.release()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def _logged(cfg: Config, ds, run_dir: Path, ckpt, procs: Dist, device, echo: bool, progress: bool) -> TrainResult:
    """_train with the run's log open; divergence and storage errors logged with where to go on."""
    log = get_logger(run_dir, enabled=procs.main, echo=echo)
    try:
        return _train(cfg, ds, run_dir, ckpt, procs, device, log, progress)
    except (DivergenceError, StorageError) as e:
        ck = run_dir / "checkpoint.pt"
        msg = f"{e}; the run stops. " + (last_checkpoint_words(ck, run_dir) if ck.exists()
                                         else "No checkpoint had been written yet.")
        log.error(msg)
        raise type(e)(msg) if isinstance(e, DivergenceError) else StorageError(msg, e.errno) from None
    except Exception:
        log_traceback_to_file(log, "the run stopped on this error:")
        raise
    finally:
        close_logger(log)


def _train(cfg: Config, ds, run_dir: Path, ckpt, procs: Dist, device, log, progress: bool) -> TrainResult:
    threads = set_threads(cfg)
    st, learner = _training_state(cfg, ds, run_dir, ckpt, procs, device, log)
    n_batches = batches_per_epoch(ds.train.y.shape[0], cfg.train.batch_size, procs)
    recorder = open_recorder(cfg, run_dir, st, ds.test, ckpt, n_batches) if procs.main else None
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
    budget = Budget(cfg, device, ds.test.y.shape[0], run_dir, log) if cfg.train.minutes else None
    try:
        while st.epoch < _epochs(cfg, st):
            seconds = _train_epoch(cfg, run_dir, procs, device, progress, train_set, st, learner, recorder, budget)
            if budget is not None and budget.cut:
                _end_cut(cfg, run_dir, procs, log, ds.test, st, learner, recorder, seconds, n_batches)
                break
            _end_epoch(cfg, run_dir, procs, log, ds.test, st, learner, recorder, seconds, n_batches)
        if cfg.train.half_weights and procs.main:
            save_checkpoint(run_dir / "weights_fp16.pt", _half(_weights_file(st, cfg, st.epoch, st.history[-1]["test_acc"]
                                                                             if st.history else float("nan"))))
    finally:
        if recorder is not None:
            recorder.close()
    return TrainResult(st.net, st.history, run_dir, procs.main)


def _epochs(cfg: Config, st: TrainState) -> int:
    """The epochs the run trains: train.epochs, or its time budget's plan."""
    return st.plan["epochs"] if st.plan is not None else cfg.train.epochs


def _half(weights: dict) -> dict:
    """A weights file with its floating-point tensors in float16 (load_state_dict casts them back)."""
    return {**weights, "model": {k: v.half() if v.is_floating_point() else v for k, v in weights["model"].items()},
            "dtype": "float16"}


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
    learner = make_learner(cfg, net, warm)
    st = TrainState(net, opt, make_scheduler(opt, cfg), torch.Generator().manual_seed(cfg.train.seed),
                    step_gen, make_plasticity(cfg, net), device_gen=device_gen, warm=warm, learner=learner)
    if ckpt is not None:
        st.restore(ckpt, run_dir / "checkpoint.pt")
        if not procs.main:  # the checkpoint's sums are every process's (_stats_of_every_process): process 0 holds them
            st.stats.seen, st.stats.correct, st.stats.loss_sum = 0, 0, 0.0
        log.info(f"resuming {run_dir} at epoch {st.epoch + 1}, batch {st.batch}")
        if st.history and procs.main:  # a crash may have come between the checkpoint and these files
            _write_epoch_files(run_dir, cfg, st)
    elif procs.main:
        d = cfg.dynamics
        write_json_atomic(run_dir / "env.json", environment(device, procs.world, {
            "mode": d.precision, "engine": engine_name(d, device), "schedule": d.schedule,
            "recompute_every": d.recompute_every, "warm_start": d.warm_start}))
    return st, learner


def _evaluate_sharded(learner: Learner, test_set: Split, cfg: Config, procs: Dist) -> Evaluation:
    """evaluate() on this process's share of the test set (samples rank, rank + world, ...), the sums
    reduced over processes (one all-reduce): the test set's numbers, whatever the number of processes."""
    if procs.world <= 1:
        return evaluate(learner, test_set, cfg)
    part = Split(test_set.x[procs.rank::procs.world], test_set.y[procs.rank::procs.world])
    n = part.y.shape[0]
    spiking = isinstance(learner, SpikingEP)
    ev = evaluate(learner, part, cfg) if n else Evaluation(0.0, 0.0, 0.0, 0.0, 0.0,
                                                           ChipEvents() if spiking else None)
    per_inference = list(ev.events) if spiking else []
    sums = sum_over_processes(procs, [n, ev.loss * n, ev.acc * n, ev.spikes * n, ev.synops * n, ev.steps]
                              + [v * n for v in per_inference])
    total = sums[0]
    return Evaluation(sums[1] / total, sums[2] / total, sums[3] / total, sums[4] / total, sums[5] / procs.world,
                      ChipEvents(*(v / total for v in sums[6:])) if spiking else None)


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
    spk += _energy_words(row)
    return (f"epoch {row['epoch']}: train acc {row['train_acc']:.2f}% | test acc {ev.acc:.2f}% "
            f"(loss {ev.loss:.4f}) | lr {row['lr']:.3g} | {row['seconds']:.1f} s | steps per phase: free "
            f"{row['steps_free']:.1f}, nudged {row['steps_nudged']:.1f}, inference {ev.steps:.1f}{spk}")


def _energy_words(row: dict) -> str:
    """The log line's energy estimate, part by part, with its source and what it leaves out."""
    if "energy_estimate_source" not in row:
        return ""
    if row.get("energy_estimate_inference_J") is None:
        return f" | no energy estimate: {row['energy_estimate_source']}"
    g = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731 (a part without any figure)
    words = (f" | energy estimate {row['energy_estimate_inference_J']:.3g} J per inference (input "
             f"{g(row['energy_input_J'])} as {row['energy_input_mode']}, synaptic {g(row['energy_synaptic_J'])}, "
             f"neurons {g(row['energy_neuron_J'])}, spikes {g(row['energy_spikes_J'])}), "
             f"{row['energy_estimate_learning_J']:.3g} J per training sample, from {row['energy_estimate_source']}")
    if row["energy_estimate_leaves_out"]:
        words += f"; leaves out {row['energy_estimate_leaves_out']}"
    if row.get("energy_figures_found_in_source") is False:
        words += " (UNVERIFIED energy figure, see chips.py)"
    return words


def _weights_file(st: TrainState, cfg: Config, epoch: int, test_acc: float) -> dict:
    """best.pt's content (and weights/epoch_NNN.pt's): the weights, the epoch, its test accuracy, the config."""
    return {"format": CHECKPOINT_FORMAT, "model": st.net.state_dict(), "epoch": epoch, "test_acc": test_acc,
            "config": cfg.to_dict()}


def _write_epoch_files(run_dir: Path, cfg: Config, st: TrainState, cut: Optional[dict] = None) -> None:
    extra = {"plan": st.plan} if st.plan is not None else {}
    if cut is not None:
        extra["cut"] = cut
    write_epoch_files(run_dir, st.history, _epochs(cfg, st), f"{cfg.name} ({cfg.estimator.name})", extra)


class _Epoch(NamedTuple):
    """What an epoch's iterations share."""
    number: int  # 1-based
    shard: torch.Tensor  # this process's samples of the epoch (indices into the training set), in order
    data: Split  # what `positions` index: the whole set on the device (one process) or the shard's samples
    n_batches: int
    layer_weights: dict


def _train_epoch(cfg: Config, run_dir: Path, procs: Dist, device, progress: bool, train_set: Split,
                 st: TrainState, learner: Learner, recorder: Optional[TraceRecorder],
                 budget: Optional[Budget] = None) -> float:
    """The batches of one epoch from where the state stands; returns the epoch's training seconds.
    Nothing is read from the device inside an iteration except every train.sync_every iterations
    (finite checks, progress bar), before every checkpoint and at the epoch's end."""
    ep = _start_epoch(cfg, procs, device, train_set, st)
    t0 = time.perf_counter() - st.stats.seconds
    bar = _EpochBar(total=ep.n_batches, initial=st.batch, desc=f"epoch {ep.number}/{_epochs(cfg, st)}",
                    disable=not progress, leave=False)
    try:  # an error mid-epoch (divergence, a full disk) closes the bar first: its line starts clean
        checks = FiniteChecks()
        if budget is not None:
            budget.before_epoch(st, ep.n_batches)
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
                    record_snapshot(recorder, learner, it_global, ep.number)
            bar.update()
            saved_stats = _stats_of_every_process(procs, st.stats) if checkpoint_now else None  # a collective
            if checkpoint_now and procs.main:
                st.stats.seconds = saved_stats.seconds = time.perf_counter() - t0
                if recorder is not None:
                    recorder.flush()  # traces up to the checkpoint are on disk before it is
                st.save(run_dir / "checkpoint.pt", cfg, saved_stats)
            if checkpoint_now:
                st.saved_at = time.monotonic()  # every process: the next time-based checkpoint is agreed on
            if budget is not None:
                budget.after_iteration(cfg, st, procs, ep.n_batches)
                if budget.cut:
                    break
    finally:
        bar.close()
    return time.perf_counter() - t0


class _EpochBar(tqdm):
    """An epoch's progress bar. While it is drawn, run_folder.ACTIVE["bar"] holds it: a stop message
    (cli, at signal time) then starts on a line of its own instead of after the bar."""

    def __init__(self, *args, disable: bool = False, **kwargs):
        if not disable:
            ACTIVE["bar"] = self  # before it is drawn
        super().__init__(*args, disable=disable, **kwargs)

    def close(self) -> None:
        super().close()
        if ACTIVE.get("bar") is self:
            ACTIVE["bar"] = None


def _stats_of_every_process(procs: Dist, stats: EpochStats) -> EpochStats:
    """The running statistics a mid-epoch checkpoint holds. Process 0 writes the checkpoint; in a
    data-parallel run its samples seen, correct and loss sum are summed over every process (as the
    epoch's end sums them), so that process 0 resumes with the whole run's partial sums and the others
    from zero (`_training_state`): each sample is counted once. Every process calls this."""
    return stats if procs.world <= 1 else _summed(procs, stats.synced())


def _summed(procs: Dist, s: EpochStats) -> EpochStats:
    """Synced statistics with samples seen, correct and loss sum added up over every process (in place)."""
    seen, correct, loss_sum = sum_over_processes(procs, [s.seen, s.correct, s.loss_sum])
    s.seen, s.correct, s.loss_sum = int(seen), int(correct), float(loss_sum)
    return s


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
    checks.add(list(net.named_parameters()), "weights", where)
    if r is not None:
        st.stats.add_batch(r.loss, r.logits, y)
    return before


def _add_counts(stats: EpochStats, r) -> None:
    stats.spikes += r.spikes
    stats.synops += r.synops
    if r.events is not None:
        stats.events = {k: stats.events.get(k, 0.0) + v for k, v in r.events._asdict().items()}
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
    epoch, stats, opt = st.epoch + 1, _summed(procs, st.stats.synced()), st.opt
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
            save_checkpoint(run_dir / "best.pt", _weights_file(st, cfg, epoch, ev.acc))
        if cfg.train.keep_epoch_weights:
            (run_dir / "weights").mkdir(exist_ok=True)
            save_checkpoint(run_dir / "weights" / f"epoch_{epoch:03d}.pt", _weights_file(st, cfg, epoch, ev.acc))
        if recorder is not None:
            it_end = epoch * n_batches
            if cfg.traces.full_each_epoch and not (cfg.traces.full_every and it_end % cfg.traces.full_every == 0):
                record_snapshot(recorder, learner, it_end, epoch)
            recorder.flush()
        st.save(run_dir / "checkpoint.pt", cfg)
        _write_epoch_files(run_dir, cfg, st)
        log.info(_epoch_line(row, ev, learner))
    st.saved_at = time.monotonic()  # the epoch's checkpoint (every process keeps the same clock of it)
    barrier(procs)


def _end_cut(cfg: Config, run_dir: Path, procs: Dist, log, test_set: Split, st: TrainState, learner: Learner,
             recorder: Optional[TraceRecorder], train_seconds: float, n_batches: int) -> None:
    """The time budget ran out mid-epoch: checkpoint where the run stands (a resume goes on from there),
    evaluate the test set, and write a row at the fractional epoch reached, marked as a cut."""
    stats = _summed(procs, st.stats.synced())
    st.stats.seconds = train_seconds  # the resumed epoch's clock goes on from here
    ck = None
    if procs.main:
        if recorder is not None:
            recorder.flush()
        ck = st.checkpoint(cfg)
        save_checkpoint(run_dir / "checkpoint.pt", ck)  # before the evaluation: resumable whatever happens
    ev = _evaluate_sharded(learner, test_set, cfg, procs)
    if procs.main:
        at = round(st.epoch + st.batch / n_batches, 4)
        row = _epoch_row(cfg, run_dir, test_set, learner, stats, ev, at, st.opt.param_groups[0]["lr"], train_seconds)
        st.history.append(row)
        if ev.acc > st.best["test_acc"]:
            st.best = {"test_acc": ev.acc, "epoch": at}
            save_checkpoint(run_dir / "best.pt", _weights_file(st, cfg, at, ev.acc))
        ck.update(history=st.history, best=dict(st.best))
        save_checkpoint(run_dir / "checkpoint.pt", ck)  # the same state, with the cut's row
        cut = {"epoch": st.epoch + 1, "iteration": st.batch, "iterations_per_epoch": n_batches, "at_epoch": at,
               "minutes": cfg.train.minutes}
        _write_epoch_files(run_dir, cfg, st, cut)
        log.info(_epoch_line(row, ev, learner))
        log.warning(f"the time budget ({cfg.train.minutes:g} min) cut the run in epoch {st.epoch + 1} of "
                    f"{_epochs(cfg, st)}, after iteration {st.batch} of {n_batches}: evaluated and checkpointed as "
                    f"it stands (`spikeep train --resume {run_dir}` goes on, with a new budget)")
    st.saved_at = time.monotonic()
    barrier(procs)
