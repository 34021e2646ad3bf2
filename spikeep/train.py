"""Training: one EP (or BPTT) estimate per mini-batch, any torch.optim optimizer on top, in a run
folder that survives crashes and resumes bit for bit.

    build_network(cfg) -> EqNetwork       make_optimizer / make_scheduler -> SGD with one lr per layer
    train_step(...)     -> gradients in .grad from EP or BPTT
    evaluate(...)       -> loss and accuracy after a free phase of T1 steps
    train(cfg, run_dir) -> the whole loop (run folder, checkpoints, resume, divergence checks,
                           data-parallel over torch.distributed when started by torchrun)

Randomness: the data order comes from one generator (its state at the start of each epoch is
checkpointed, so a run resumed mid-epoch replays the same permutation), augmentation and random
signs from a second one, checkpointed as it is. Every process of a distributed run draws the same
numbers and takes its own slice of each global batch.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import runs
from .bptt import bptt_gradients
from .config import Config, config_from_dict
from .data import Split, augment, batches, load_dataset, normalize
from .dynamics import free_phase
from .estimators import ep_gradients
from .network import EqNetwork, State
from .spiking import SpikingSimulator, spiking_ep_gradients

if TYPE_CHECKING:
    from .plasticity import Plasticity

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class DivergenceError(FloatingPointError):
    """NaN or inf in states, gradients or weights; the message names the layer and iteration."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here; use device = 'cpu'")
    return dev


def build_network(cfg: Config, device: Optional[torch.device] = None) -> EqNetwork:
    """The network of cfg.model, initialised from cfg.train.seed, on the device and dtype asked for."""
    torch.manual_seed(cfg.train.seed)
    net = EqNetwork(cfg.model)
    net = net.to(device=device or resolve_device(cfg.dynamics.device), dtype=DTYPES[cfg.dynamics.dtype])
    return net.use_channels_last(cfg.dynamics.channels_last)


def make_optimizer(net: EqNetwork, cfg: Config) -> torch.optim.Optimizer:
    """SGD with one learning rate per layer (readout last), as in Laborieux et al. 2021; weight
    decay applies to weights and biases alike, as in the paper's code."""
    t = cfg.train
    groups = [{"params": list(layer.parameters()), "lr": lr} for layer, lr in zip(net.layers, t.lrs)]
    return torch.optim.SGD(groups, lr=t.lrs[0], momentum=t.momentum, weight_decay=t.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config):
    """torch's CosineAnnealingLR(T_max, eta_min), stepped once per epoch. Past T_max it does not
    stay at eta_min: the cosine goes on, so the learning rate climbs again (see README)."""
    t = cfg.train
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.T_max or t.epochs, eta_min=t.eta_min)
    return None


_SIMULATOR: dict = {}  # the last (network, spiking params) -> simulator, kept across batches


def spiking_simulator(net: EqNetwork, cfg: Config) -> SpikingSimulator:
    """One SpikingSimulator per network and settings, reused across batches and evaluations, so its
    fan-out counts are computed once and its fan-out tables only when the weights changed."""
    key = (id(net), cfg.spiking.params())
    sim = _SIMULATOR.get(key)
    if sim is None or sim.net is not net:
        _SIMULATOR.clear()  # one entry: no network is kept alive beyond the latest
        sim = _SIMULATOR[key] = SpikingSimulator(net, cfg.spiking.params())
    return sim


class StepOutput(NamedTuple):
    loss: torch.Tensor  # per-sample loss at the free equilibrium
    logits: torch.Tensor
    state: State  # free equilibrium (spike rates for spiking networks)
    spikes: float = 0.0  # spiking networks: spikes of all phases of the batch
    synops: float = 0.0  # and their synaptic events (input spikes' included)


def train_step(net: EqNetwork, x: torch.Tensor, y: torch.Tensor, cfg: Config,
               generator: Optional[torch.Generator] = None) -> StepOutput:
    """Write the configured gradient estimate into .grad; returns loss, logits, state (and counts)."""
    d, e = cfg.dynamics, cfg.estimator
    if cfg.model.neurons == "spiking":  # local rule on spike rates, same .grad convention
        s = cfg.spiking
        r = spiking_ep_gradients(spiking_simulator(net, cfg), x, y, e.name, e.beta, s.T1, s.T2, generator)
        c = r.counts
        return StepOutput(r.ep.loss, r.ep.logits, r.ep.s_free, float(c.spikes.sum()),
                          float(c.synops.sum()) + c.input_synops)
    if e.name == "bptt":
        r, _ = bptt_gradients(net, x, y, d.T1, e.truncate)
        return StepOutput(r.loss, r.logits, r.s_last)
    r = ep_gradients(net, x, y, e.name, e.beta, d.T1, d.T2, d.tol, generator)
    return StepOutput(r.loss, r.logits, r.s_free)


class Evaluation(NamedTuple):
    loss: float  # mean per-sample loss at the free equilibrium
    acc: float  # accuracy in %
    spikes: float  # spiking networks: spikes per inference (free phase, one sample); nan for rates
    synops: float  # synaptic events per inference (input spikes' included); nan for rates


@torch.no_grad()
def free_equilibrium(net: EqNetwork, x: torch.Tensor, cfg: Config, y: Optional[torch.Tensor] = None,
                     generator: Optional[torch.Generator] = None):
    """The free phase of cfg's neuron model: (state or spike rates, (spikes, synops) summed or None)."""
    inp = net.prepare(x, y)
    if cfg.model.neurons == "spiking":
        ph = spiking_simulator(net, cfg).run_phase(inp, None, cfg.spiking.T1, 0.0, generator)
        c = ph.counts
        return ph.rates, (float(c.spikes.sum()), float(c.synops.sum()) + c.input_synops)
    return free_phase(net, inp, cfg.dynamics.T1, tol=cfg.dynamics.tol).state, None


@torch.no_grad()
def evaluate(net: EqNetwork, split: Split, cfg: Config) -> Evaluation:
    """Mean loss and accuracy (in %) at the free equilibrium (T1 steps); spikes and SynOps per
    inference for spiking networks (Poisson input drawn from a fixed seed, so evaluations repeat)."""
    dev = net.synapses[0].weight.device
    gen = torch.Generator(device=dev).manual_seed(cfg.train.seed) if cfg.spiking.encoding == "poisson" else None
    total, loss_sum, correct, spikes, synops = 0, 0.0, 0, 0.0, 0.0
    for x, y in batches(split, cfg.train.eval_batch_size):
        x, y = x.to(dev), y.to(dev)
        s, counts = free_equilibrium(net, x, cfg, None, gen)
        loss_sum += float(net.loss(s, y).sum())
        correct += int((net.logits(s).argmax(1) == y).sum())
        total += y.shape[0]
        if counts is not None:
            spikes, synops = spikes + counts[0], synops + counts[1]
    rate = cfg.model.neurons == "rate"
    return Evaluation(loss_sum / total, 100.0 * correct / total, math.nan if rate else spikes / total,
                      math.nan if rate else synops / total)


def first_nonfinite(named: list[tuple[str, torch.Tensor]]) -> Optional[str]:
    """Name of the first tensor holding NaN or inf, or None (one device sync in the normal case)."""
    ok = torch.stack([torch.isfinite(t).all() for _, t in named])
    return None if bool(ok.all()) else named[int((~ok).nonzero()[0])][0]


def check_finite(named: list[tuple[str, torch.Tensor]], what: str, where: str, ddp: "Dist" = None) -> None:
    """Raise DivergenceError naming the layer and iteration. In a distributed run every process
    learns of it (one tiny all-reduce), so none is left waiting in a collective."""
    bad = first_nonfinite(named)
    if ddp is not None and ddp.world > 1:
        flag = torch.tensor([0.0 if bad is None else 1.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if bad is None and flag.item() > 0:
            raise DivergenceError(f"NaN or inf in the {what} of another process at {where}")
    if bad is not None:
        raise DivergenceError(f"NaN or inf in the {what} of layer {bad} at {where}")


# -- distributed -----------------------------------------------------------------------------------

class Dist(NamedTuple):
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: Config) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.dynamics.device)
    if world <= 1:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def average_gradients(net: EqNetwork, n_local: int, n_global: int) -> None:
    """.grad <- the mean over the global batch: sum_r n_r * grad_r / n (one all-reduce)."""
    params = list(net.parameters())
    flat = torch.cat([p.grad.reshape(-1) for p in params]) * n_local
    dist.all_reduce(flat)
    flat /= n_global
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


# -- the loop ---------------------------------------------------------------------------------------

class TrainResult(NamedTuple):
    net: EqNetwork
    history: list[dict]  # one dict of metrics per epoch
    run_dir: Optional[Path]


def _prepare_data(cfg: Config):
    d = cfg.data
    ds = load_dataset(d.name, d.root, d.subset, d.download, d.npz, d.subset_seed)
    return normalize(ds.train, d.mean, d.std), normalize(ds.test, d.mean, d.std), ds.name


def _fresh_stats() -> dict:
    return {"seen": 0, "correct": 0, "loss_sum": 0.0, "seconds": 0.0, "spikes": 0.0, "synops": 0.0,
            "updates": 0.0}


@dataclass
class TrainState:
    """Everything a checkpoint holds: weights, optimizer and scheduler, both generators, where in
    the data the run is (`epoch` epochs done, `batch` batches of the next one), metrics so far."""
    net: EqNetwork
    opt: torch.optim.Optimizer
    sched: Optional[torch.optim.lr_scheduler.LRScheduler]
    order_gen: torch.Generator  # data order; its state at the epoch start is what is saved mid-epoch
    step_gen: torch.Generator  # augmentation and random signs
    plasticity: Optional["Plasticity"] = None  # chip-like synapses (None: float weights)
    epoch: int = 0
    batch: int = 0
    order_state: Optional[torch.Tensor] = None
    stats: dict = field(default_factory=_fresh_stats)  # running train metrics of the current epoch
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"test_acc": -1.0, "epoch": 0})

    def checkpoint(self, cfg: Config) -> dict:
        return {"format": runs.CHECKPOINT_FORMAT, "model": self.net.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else {},
                "epoch": self.epoch, "batch": self.batch,
                "order_rng": self.order_state if self.batch else self.order_gen.get_state(),
                "step_rng": self.step_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "epoch_stats": dict(self.stats), "history": self.history, "best": dict(self.best),
                "plasticity": self.plasticity.state_dict() if self.plasticity is not None else {},
                "config": cfg.to_dict()}

    def restore(self, ckpt: dict, path: Path) -> None:
        runs.check_state_dict(path, ckpt["model"], self.net)
        try:
            self.net.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            if self.sched is not None:
                self.sched.load_state_dict(ckpt["scheduler"])
            self.step_gen.set_state(ckpt["step_rng"])
            self.order_gen.set_state(ckpt["order_rng"])
            self.order_state = ckpt["order_rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt["batch"])
            self.stats, self.history, self.best = dict(ckpt["epoch_stats"]), list(ckpt["history"]), dict(ckpt["best"])
            if self.plasticity is not None:
                self.plasticity.load_state_dict(ckpt["plasticity"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise runs.CheckpointError(f"{path}: incomplete or foreign training state ({e})") from None


def _write_epoch_files(run_dir: Path, cfg: Config, history: list[dict]) -> None:
    runs.write_metrics(run_dir / "metrics.csv", history)
    runs.write_json_atomic(run_dir / "summary.json",
                           runs.summary(history, sum(h["seconds"] for h in history), cfg.train.epochs))
    runs.plot_curves(run_dir / "curves.png", history, f"{cfg.name} ({cfg.estimator.name})")


def train(cfg: Optional[Config] = None, run_dir: Optional[str | Path] = None, *, resume: bool = False,
          progress: bool = True, echo: bool = True, base_dir: str | Path = "runs") -> TrainResult:
    """Train cfg.model on cfg.data in a run folder.

    resume=True continues the run in `run_dir` from its checkpoint (cfg is then read from the folder);
    otherwise a new folder is made (runs/<name>/<timestamp> unless run_dir is given).
    """
    ckpt = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run folder")
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} is not a spikeep run folder (no config.json)")
        cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
        if (run_dir / "checkpoint.pt").exists():
            ckpt = runs.load_checkpoint(run_dir / "checkpoint.pt")
    if cfg is None:
        raise ValueError("train needs a config (or resume=True with a run folder)")
    cfg.validate()
    ddp, device = init_distributed(cfg)
    if not resume and ddp.main:
        run_dir = Path(run_dir) if run_dir is not None else runs.new_run_dir(cfg.name, base_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_json_atomic(run_dir / "config.json", cfg.to_dict())
    if ddp.world > 1:  # every process learns the folder rank 0 made
        box = [str(run_dir) if ddp.main else None]
        dist.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    log = runs.get_logger(run_dir, enabled=ddp.main, echo=echo)
    try:
        return _train(cfg, run_dir, ckpt, ddp, device, log, progress and ddp.main)
    except DivergenceError as e:
        ck = run_dir / "checkpoint.pt"
        msg = f"{e}; the run stops. " + (f"The last good checkpoint is {ck}." if ck.exists()
                                         else "No checkpoint had been written yet.")
        log.error(msg)
        raise DivergenceError(msg) from None
    finally:
        runs.close_logger(log)


def _train(cfg, run_dir, ckpt, ddp, device, log, progress) -> TrainResult:
    train_set, test_set, data_name = _prepare_data(cfg)
    net = build_network(cfg, device)
    opt = make_optimizer(net, cfg)
    st = TrainState(net, opt, make_scheduler(opt, cfg), torch.Generator().manual_seed(cfg.train.seed),
                    torch.Generator().manual_seed(cfg.train.seed + 1))
    if cfg.plasticity.bits:
        from .plasticity import Plasticity

        st.plasticity = Plasticity(net, cfg.plasticity.spec(), cfg.plasticity.seed)  # weights onto the grid
    if ckpt is not None:
        st.restore(ckpt, run_dir / "checkpoint.pt")
        log.info(f"resuming {run_dir} at epoch {st.epoch + 1}, batch {st.batch}")
        if st.history and ddp.main:  # a crash may have come between the checkpoint and these files
            _write_epoch_files(run_dir, cfg, st.history)
    elif ddp.main:
        runs.write_json_atomic(run_dir / "env.json", runs.environment(device, ddp.world))
    n_batches = math.ceil(train_set.y.shape[0] / cfg.train.batch_size)
    recorder = _make_recorder(cfg, run_dir, net, test_set, ckpt, n_batches, st.plasticity) if ddp.main else None
    log.info(f"{cfg.name}: {cfg.estimator.name} on {data_name} ({train_set.y.shape[0]} train, "
             f"{test_set.y.shape[0]} test), device {device}, {ddp.world} process(es), "
             f"{sum(p.numel() for p in net.parameters())} parameters, run folder {run_dir}")
    try:
        _loop(cfg, run_dir, ddp, device, log, progress, train_set, test_set, st, recorder)
    finally:
        if recorder is not None:
            recorder.close()
    return TrainResult(net, st.history, run_dir)


def _make_recorder(cfg, run_dir, net, test_set, ckpt, n_batches, plasticity=None):
    tc = cfg.traces
    if not tc.enabled:
        return None
    from . import __version__
    from .traces import TraceRecorder, layer_specs

    probe = None
    if tc.probe:
        probe = (test_set.x[:tc.probe].numpy(), test_set.y[:tc.probe].numpy())
    resume_it = None if ckpt is None else int(ckpt["epoch"]) * n_batches + int(ckpt["batch"])
    attrs = {"spikeep_version": __version__, "config": json.dumps(cfg.to_dict()), "seed": cfg.train.seed,
             "git_commit": runs.git_commit() or ""}
    quantized = {}
    if plasticity is not None and plasticity.spec.device == "linear":  # memristor conductances stay float
        quantized = {n: (q.scale, plasticity.spec.bits) for n, q in plasticity.layers.items()}
    return TraceRecorder(run_dir / "traces.h5", layer_specs(net, tc.sample, tc.seed, quantized), attrs=attrs,
                         compression=tc.compression, gzip_level=tc.gzip_level, chunk=tc.chunk,
                         flush_every=tc.flush_every, probe=probe, resume_iteration=resume_it)


def _snapshot(recorder, net, cfg, iteration, epoch):
    weights = {n: l.weight for n, l in zip(net.layer_names(), net.layers)}
    biases = {n: l.bias for n, l in zip(net.layer_names(), net.layers)}
    states = None
    if recorder.probe is not None:
        with torch.no_grad():
            x, y = (torch.from_numpy(a).to(net.synapses[0].weight.device) for a in recorder.probe)
            s, _ = free_equilibrium(net, x, cfg, y)
        states = dict(zip(net.layer_names(), s))
    recorder.snapshot(iteration, epoch, weights, biases, states)


def _energy(cfg: Config, ev: Evaluation, stats: dict) -> dict:
    """Energy estimates of the chip profile (if any and if it has figures): per inference, and per
    training sample (its three phases plus its share of the iteration's weight updates)."""
    if not cfg.plasticity.profile:
        return {}
    from .chips import energy_estimate, get_profile

    prof = get_profile(cfg.plasticity.profile)
    seen = max(stats["seen"], 1)
    inf = energy_estimate(prof, ev.spikes, ev.synops)
    learn = energy_estimate(prof, stats.get("spikes", 0.0) / seen, stats.get("synops", 0.0) / seen,
                            stats.get("updates", 0.0) / seen)
    return {"energy_inference_J": inf["total"], "energy_learning_J": learn["total"]}


def _spike_pictures(net: EqNetwork, cfg: Config, test_set: Split, run_dir: Path, probe: int = 4) -> None:
    """raster.png and rate_convergence.png of the three phases for the first test samples."""
    from .rasters import plot_rate_convergence, plot_raster
    from .spiking import probe_phases

    dev = net.synapses[0].weight.device
    x, y = test_set.x[:probe].to(dev), test_set.y[:probe].to(dev)
    gen = torch.Generator(device=dev).manual_seed(cfg.train.seed)
    s = cfg.spiking
    phases = probe_phases(spiking_simulator(net, cfg), x, y, s.T1, s.T2, cfg.estimator.beta, probe, gen)
    names = net.layer_names()[:len(net.synapses)]
    plot_raster(phases, names, run_dir / "raster.png")
    plot_rate_convergence(phases, names, run_dir / "rate_convergence.png")


def _loop(cfg, run_dir, ddp, device, log, progress, train_set, test_set, st: TrainState, recorder) -> None:
    net, opt, d = st.net, st.opt, cfg.data
    ckpt_path = run_dir / "checkpoint.pt"
    layer_weights = {n: l.weight for n, l in zip(net.layer_names(), net.layers)}
    train_x, train_y = train_set.x.to(device), train_set.y.to(device)
    n_train, B = train_y.shape[0], cfg.train.batch_size
    n_batches = math.ceil(n_train / B)
    while st.epoch < cfg.train.epochs:
        epoch = st.epoch + 1
        if st.batch == 0:
            st.order_state = st.order_gen.get_state()  # what a resume mid-epoch needs to replay the order
        else:
            st.order_gen.set_state(st.order_state)
        perm = torch.randperm(n_train, generator=st.order_gen).to(device)
        t0 = time.perf_counter() - st.stats["seconds"]
        bar = tqdm(total=n_batches, initial=st.batch, desc=f"epoch {epoch}/{cfg.train.epochs}",
                   disable=not progress, leave=False)
        while st.batch < n_batches:
            b = st.batch
            idx = perm[b * B:(b + 1) * B]
            x = train_x[idx]
            if d.crop_padding or d.hflip:
                x = augment(x, st.step_gen, d.crop_padding, d.hflip, d.padding_mode)
            y = train_y[idx]
            n_global = y.shape[0]
            if ddp.world > 1:
                part = torch.tensor_split(torch.arange(n_global), ddp.world)[ddp.rank].to(device)
                x, y = x[part], y[part]
            where = f"epoch {epoch}, iteration {b + 1}"
            opt.zero_grad(set_to_none=False)
            if y.shape[0] > 0:
                loss, logits, state, spikes, synops = train_step(net, x, y, cfg, st.step_gen)
                st.stats["spikes"] = st.stats.get("spikes", 0.0) + spikes
                st.stats["synops"] = st.stats.get("synops", 0.0) + synops
                named_state = list(zip(net.layer_names(), state))
            else:  # a short last batch left this process nothing: it contributes zero
                loss = logits = None
                for p in net.parameters():
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
                if cfg.estimator.name == "random_sign":
                    torch.randint(0, 2, (1,), generator=st.step_gen)  # keep the generators in step
                named_state = [("input", x)]
            check_finite(named_state, "state", where, ddp)
            if ddp.world > 1:
                average_gradients(net, y.shape[0], n_global)
            check_finite([(n, p.grad) for n, p in net.named_parameters()], "gradient", where)
            before = recorder.sample(layer_weights) if recorder is not None else None
            opt.step()
            if st.plasticity is not None:  # each synapse realises its update on its own grid / device
                st.stats["updates"] = st.stats.get("updates", 0.0) + st.plasticity.apply()
            else:
                st.stats["updates"] = st.stats.get("updates", 0.0) + sum(w.numel() for w in layer_weights.values())
            check_finite(list(net.named_parameters()), "weights", where)
            st.batch += 1
            it_global = st.epoch * n_batches + st.batch
            if recorder is not None:
                recorder.record(it_global, epoch, layer_weights, before,
                                {n: w.grad for n, w in layer_weights.items()})
                if cfg.traces.full_every and it_global % cfg.traces.full_every == 0:
                    _snapshot(recorder, net, cfg, it_global, epoch)
            if loss is not None:
                st.stats["seen"] += y.shape[0]
                st.stats["loss_sum"] += float(loss.sum())
                st.stats["correct"] += int((logits.argmax(1) == y).sum())
                bar.set_postfix(acc=f"{100 * st.stats['correct'] / st.stats['seen']:.2f}%",
                                loss=f"{st.stats['loss_sum'] / st.stats['seen']:.4f}")
            bar.update()
            every = cfg.train.checkpoint_every
            if every and st.batch % every == 0 and st.batch < n_batches and ddp.main:
                st.stats["seconds"] = time.perf_counter() - t0
                if recorder is not None:
                    recorder.flush()  # traces up to the checkpoint are on disk before it is
                runs.save_torch_atomic(ckpt_path, st.checkpoint(cfg))
        bar.close()
        train_seconds = time.perf_counter() - t0
        stats = st.stats
        if ddp.world > 1:  # the epoch's train metrics over every process's shard
            tot = torch.tensor([stats["seen"], stats["correct"], stats["loss_sum"]], dtype=torch.float64)
            dist.all_reduce(tot)
            stats.update(seen=int(tot[0]), correct=int(tot[1]), loss_sum=float(tot[2]))
        lr = opt.param_groups[0]["lr"]
        if st.sched is not None:
            st.sched.step()
        st.epoch, st.batch, st.stats = epoch, 0, _fresh_stats()
        if ddp.main:
            ev = evaluate(net, test_set, cfg)
            test_loss, test_acc = ev.loss, ev.acc
            row = {"epoch": epoch, "train_loss": stats["loss_sum"] / max(stats["seen"], 1),
                   "train_acc": 100 * stats["correct"] / max(stats["seen"], 1), "test_loss": test_loss,
                   "test_acc": test_acc, "lr": lr, "seconds": train_seconds}
            if cfg.model.neurons == "spiking":
                row.update(spikes_per_inference=ev.spikes, synops_per_inference=ev.synops)
                row.update(_energy(cfg, ev, stats))
                _spike_pictures(net, cfg, test_set, run_dir)
            st.history.append(row)
            if test_acc > st.best["test_acc"]:
                st.best = {"test_acc": test_acc, "epoch": epoch}
                runs.save_torch_atomic(run_dir / "best.pt", {"format": runs.CHECKPOINT_FORMAT,
                                                            "model": net.state_dict(), "epoch": epoch,
                                                            "test_acc": test_acc, "config": cfg.to_dict()})
            if recorder is not None:
                it_end = epoch * n_batches
                if cfg.traces.full_each_epoch and not (cfg.traces.full_every and it_end % cfg.traces.full_every == 0):
                    _snapshot(recorder, net, cfg, it_end, epoch)
                recorder.flush()
            runs.save_torch_atomic(ckpt_path, st.checkpoint(cfg))
            _write_epoch_files(run_dir, cfg, st.history)
            spk = (f" | {ev.spikes:.0f} spikes, {ev.synops:.3g} SynOps per inference"
                   if cfg.model.neurons == "spiking" else "")
            if row.get("energy_inference_J") is not None:
                spk += (f" | {cfg.plasticity.profile}: {row['energy_inference_J']:.3g} J per inference, "
                        f"{row['energy_learning_J']:.3g} J per training sample")
            log.info(f"epoch {epoch}: train acc {row['train_acc']:.2f}% | test acc {test_acc:.2f}% "
                     f"(loss {test_loss:.4f}) | lr {lr:.3g} | {train_seconds:.1f} s{spk}")
        if ddp.world > 1:
            dist.barrier()


def evaluate_run(run_dir: str | Path, which: str = "best", device: Optional[str] = None,
                 neurons: Optional[str] = None, overrides: Optional[list[str]] = None) -> dict:
    """Evaluate a run folder's best (or last) weights on its test set; `neurons` runs them in the
    other neuron model (e.g. rate-trained weights in the spiking twin), `overrides` are --set items."""
    from .config import apply_overrides

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a spikeep run folder (no config.json)")
    data = json.loads(cfg_path.read_text())
    if neurons:
        data.setdefault("model", {})["neurons"] = neurons
    apply_overrides(data, overrides or [])
    cfg = config_from_dict(data, str(cfg_path))
    if device:
        cfg.dynamics.device = device
    path = run_dir / ("best.pt" if which == "best" else "checkpoint.pt")
    ckpt = runs.load_checkpoint(path, "weights")
    net = build_network(cfg)
    runs.check_state_dict(path, ckpt["model"], net)
    net.load_state_dict(ckpt["model"])
    _, test_set, name = _prepare_data(cfg)
    ev = evaluate(net, test_set, cfg)
    out = {"run_dir": str(run_dir), "weights": path.name, "data": name, "neurons": cfg.model.neurons,
           "test_loss": ev.loss, "test_acc": ev.acc}
    if cfg.model.neurons == "spiking":
        out.update(spikes_per_inference=ev.spikes, synops_per_inference=ev.synops)
    return out
