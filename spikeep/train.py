"""Training: one EP (or BPTT) update per mini-batch, any torch.optim optimizer on top.

    build_network(cfg) -> EqNetwork      make_optimizer(net, cfg) -> SGD with one lr per layer
    train_step(...)     -> gradients in .grad from EP or BPTT, then optimizer.step()
    evaluate(...)       -> loss and accuracy after a free phase of T1 steps
    train(cfg)          -> the whole loop, with a tqdm bar per epoch
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional

import torch
from tqdm.auto import tqdm

from .bptt import bptt_gradients
from .config import Config
from .data import Split, batches, load_dataset
from .dynamics import free_phase
from .estimators import ep_gradients
from .network import EqNetwork

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here; use device = 'cpu'")
    return dev


def build_network(cfg: Config) -> EqNetwork:
    """The network of cfg.model, initialised from cfg.train.seed, on cfg.dynamics' device and dtype."""
    torch.manual_seed(cfg.train.seed)
    net = EqNetwork(cfg.model)
    net = net.to(device=resolve_device(cfg.dynamics.device), dtype=DTYPES[cfg.dynamics.dtype])
    return net.use_channels_last(cfg.dynamics.channels_last)


def make_optimizer(net: EqNetwork, cfg: Config) -> torch.optim.Optimizer:
    """SGD with one learning rate per layer (readout last), as in Laborieux et al. 2021."""
    t = cfg.train
    groups = [{"params": list(layer.parameters()), "lr": lr} for layer, lr in zip(net.layers, t.lrs)]
    return torch.optim.SGD(groups, lr=t.lrs[0], momentum=t.momentum, weight_decay=t.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config):
    t = cfg.train
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.T_max or t.epochs, eta_min=t.eta_min)
    return None


def train_step(net: EqNetwork, x: torch.Tensor, y: torch.Tensor, cfg: Config,
               generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the configured gradient estimate into .grad; returns (per-sample loss, logits)."""
    d, e = cfg.dynamics, cfg.estimator
    if e.name == "bptt":
        r, _ = bptt_gradients(net, x, y, d.T1, e.truncate)
        return r.loss, r.logits
    r = ep_gradients(net, x, y, e.name, e.beta, d.T1, d.T2, d.tol, generator)
    return r.loss, r.logits


@torch.no_grad()
def evaluate(net: EqNetwork, split: Split, cfg: Config) -> tuple[float, float]:
    """Mean loss and accuracy (in %) at the free equilibrium (T1 steps)."""
    dev = net.synapses[0].weight.device
    total, loss_sum, correct = 0, 0.0, 0
    for x, y in batches(split, cfg.train.eval_batch_size):
        x, y = x.to(dev), y.to(dev)
        inp = net.prepare(x, y)
        s = free_phase(net, inp, cfg.dynamics.T1, tol=cfg.dynamics.tol).state
        loss_sum += float(net.loss(s, inp.y).sum())
        correct += int((net.logits(s).argmax(1) == inp.y).sum())
        total += y.shape[0]
    return loss_sum / total, 100.0 * correct / total


class TrainResult(NamedTuple):
    net: EqNetwork
    history: list[dict]  # one dict of metrics per epoch


def train(cfg: Config, progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Train cfg.model on cfg.data; returns the trained network and per-epoch metrics."""
    cfg.validate()
    ds = load_dataset(cfg.data.name, cfg.data.root, cfg.data.subset, cfg.data.download)
    net = build_network(cfg)
    opt = make_optimizer(net, cfg)
    sched = make_scheduler(opt, cfg)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    dev = net.synapses[0].weight.device
    log(f"{cfg.name}: {cfg.estimator.name} on {ds.name} ({ds.train.y.shape[0]} train, "
        f"{ds.test.y.shape[0]} test), device {dev}, {sum(p.numel() for p in net.parameters())} parameters")
    history = []
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        seen, correct, loss_sum = 0, 0, 0.0
        n_batches = -(-ds.train.y.shape[0] // cfg.train.batch_size)
        bar = tqdm(batches(ds.train, cfg.train.batch_size, shuffle=True, generator=gen), total=n_batches,
                   desc=f"epoch {epoch}/{cfg.train.epochs}", disable=not progress, leave=False)
        for x, y in bar:
            x, y = x.to(dev), y.to(dev)
            opt.zero_grad(set_to_none=False)
            loss, logits = train_step(net, x, y, cfg, gen)
            opt.step()
            seen += y.shape[0]
            loss_sum += float(loss.sum())
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(acc=f"{100 * correct / seen:.2f}%", loss=f"{loss_sum / seen:.4f}")
        train_time = time.perf_counter() - t0
        lr = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        test_loss, test_acc = evaluate(net, ds.test, cfg)
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": 100 * correct / seen,
               "test_loss": test_loss, "test_acc": test_acc, "lr": lr, "seconds": train_time}
        history.append(row)
        log(f"epoch {epoch}: train acc {row['train_acc']:.2f}% | test acc {test_acc:.2f}% "
            f"(loss {test_loss:.4f}) | {train_time:.1f} s")
    return TrainResult(net, history)
