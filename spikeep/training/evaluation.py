"""Evaluation: loss and accuracy at the free equilibrium, of a network in training or of a run folder."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import torch

from .build import build_network, make_learner
from .validation import config_from_dict
from .torch_settings import set_threads
from ..core.network import EqNetwork
from ..config import Config, apply_overrides, read_json_config
from ..data import Split, batches, prepare_data
from .learners import Learner
from ..spiking.metrics import ChipEvents
from .checkpoint_files import check_run_id, check_state_dict, load_checkpoint


class Evaluation(NamedTuple):
    loss: float  # mean per-sample loss at the free equilibrium
    acc: float  # accuracy in %
    spikes: float  # spiking networks: spikes per inference (free phase, one sample); nan for rates
    synops: float  # synaptic events per inference (input spikes' included); nan for rates
    steps: float = 0.0  # mean steps of the free phase (per batch of eval_batch_size)
    events: Optional[ChipEvents] = None  # spiking networks: the events a chip pays for, per inference


@torch.no_grad()
def evaluate(learner: Learner, split: Split, cfg: Config) -> Evaluation:
    """Mean loss and accuracy (in %) at the free equilibrium; spikes and SynOps per inference for
    spiking networks (Poisson input drawn from a fixed seed, so evaluations repeat)."""
    net = learner.net
    dev = net.synapses[0].weight.device
    gen = torch.Generator(device=dev).manual_seed(cfg.train.seed) if cfg.spiking.encoding == "poisson" else None
    total, loss_sum, correct, spikes, synops, steps, n_batches = 0, 0.0, 0, 0.0, 0.0, 0, 0
    events: Optional[ChipEvents] = None
    for x, y in batches(split, cfg.train.eval_batch_size):
        x, y = x.to(dev), y.to(dev)
        eq = learner.free_equilibrium(x, gen)
        loss_sum += float(net.loss(eq.state, y).sum())
        correct += int((net.logits(eq.state).argmax(1) == y).sum())
        total += y.shape[0]
        spikes, synops = spikes + eq.spikes, synops + eq.synops
        steps, n_batches = steps + eq.steps, n_batches + 1
        if eq.events is not None:
            events = eq.events if events is None else events + eq.events
    return Evaluation(loss_sum / total, 100.0 * correct / total, spikes / total, synops / total,
                      steps / max(n_batches, 1), None if events is None else events.scaled(1 / total))


def load_run(run_dir: str | Path, which: str = "best", device: Optional[str] = None, neurons: Optional[str] = None,
             overrides: Optional[list[str]] = None) -> tuple[Config, EqNetwork, Path]:
    """A run folder's config and network with its best (or last) weights, checked against the run
    (run id, parameter names and shapes): (config, network, weights file). `neurons` swaps the neuron
    model, `overrides` are --set items."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a spikeep run folder (no config.json)")
    data = read_json_config(cfg_path)
    if neurons:
        data.setdefault("model", {})["neurons"] = neurons
    if device:  # before the checks: a device that cannot run the run's engine is refused with the config
        data.setdefault("dynamics", {})["device"] = device
    apply_overrides(data, overrides or [])
    cfg = config_from_dict(data, str(cfg_path))
    path = run_dir / ("best.pt" if which == "best" else "checkpoint.pt")
    ckpt = load_checkpoint(path, "weights")
    check_run_id(path, ckpt, cfg.run_id, run_dir)
    net = build_network(cfg)
    check_state_dict(path, ckpt["model"], net)
    net.load_state_dict(ckpt["model"])
    return cfg, net, path


def evaluate_run(run_dir: str | Path, which: str = "best", device: Optional[str] = None,
                 neurons: Optional[str] = None, overrides: Optional[list[str]] = None) -> dict:
    """Evaluate a run folder's best (or last) weights on its test set; `neurons` runs them in the
    other neuron model (e.g. rate-trained weights in the spiking twin), `overrides` are --set items."""
    cfg, net, path = load_run(run_dir, which, device, neurons, overrides)
    threads = set_threads(cfg)
    ds = prepare_data(cfg.data)
    ev = evaluate(make_learner(cfg, net), ds.test, cfg)
    out = {"run_dir": str(run_dir), "weights": path.name, "data": ds.name, "neurons": cfg.model.neurons,
           "test_samples": int(ds.test.y.shape[0]), "test_loss": ev.loss, "test_acc": ev.acc,
           "steps_inference": ev.steps, "threads": threads}
    if cfg.model.neurons == "spiking":
        out.update(spikes_per_inference=ev.spikes, synops_per_inference=ev.synops)
    return out
