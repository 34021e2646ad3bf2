"""The Python API: what a script or a notebook needs, each one documented function or class, all
exported by `spikeep` itself (`import spikeep` stays light: this module loads on first use).

    load_config(path_or_name, overrides)  a shipped config's name ('quickstart') or a TOML file, plus
                                          'section.key=value' items -> a validated Config
    configs()                             the shipped configs: name -> path
    build_network(cfg)                    the config's network (EqNetwork), initialised from train.seed
    learner(cfg, net)                     its learner; learner.estimate(x, y) writes the batch's gradient
                                          estimate (EP, or BPTT) into .grad: any torch.optim step follows
    load_data(cfg)                        the config's data set: .train and .test (x, y), normalised as configured
    relax(net, x, T)                      the free phase (or a nudged one, with y and beta) from inputs x
    ep_estimate(net, x, y, ...)           one EP estimate into .grad (rate networks)
    Model(net, cfg)                       a network as a classifier: model(x) -> class scores of the free phase
    load(run_dir)                         a run folder's best (or last) weights as a Model (weights_only=True)
    evaluate(run_dir)                     test accuracy and loss of a run folder's weights (`spikeep evaluate`)
    train(cfg, run_dir)                   a whole training run into a run folder (`spikeep train`)

A training loop of one's own, with torch.optim and a DataLoader (examples/train_from_python.py):

    cfg = spikeep.load_config("quickstart")
    net = spikeep.build_network(cfg)
    learner = spikeep.learner(cfg, net)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for x, y in loader:
        opt.zero_grad()
        learner.estimate(x, y)
        opt.step()              # nothing else to call: the learner sees the new weights
    scores = spikeep.Model(net, cfg)(x_test)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from .training.build import build_network as _build_network, make_learner
from .config import Config, shipped_configs
from .core.dynamics import Relaxed, relax as _relax
from .core.network import EqNetwork, State
from .core.relaxer import EAGER, Relaxer
from .data import Dataset, check_labels, prepare_data
from .training.evaluation import evaluate_run, load_run
from .learning.ep import EPResult, ep_gradients
from .training.learners import FreeEquilibrium, Learner
from .training.torch_settings import set_threads
from .training.trainer import TrainResult, train as _train
from .training.validation import load_config

__all__ = ["load_config", "configs", "build_network", "learner", "load_data", "relax", "ep_estimate", "Model",
           "load", "evaluate", "train"]
Tensor = torch.Tensor
PathLike = Union[str, Path]


def configs() -> dict[str, Path]:
    """The configs shipped inside spikeep, by name (what `load_config` and `spikeep train NAME` take)."""
    return shipped_configs()


def build_network(cfg: Config, device: Optional[Union[str, torch.device]] = None) -> EqNetwork:
    """The config's network (an EqNetwork: `net.layers`, `net.parameters()`, `net.logits(state)`),
    initialised from train.seed on dynamics.device (or `device`) in dynamics.dtype (how it relaxes is the
    learner's relaxer, of dynamics.engine / schedule / precision). Like `spikeep train`, it applies the config's process-wide torch settings:
    CUDA precision flags, deterministic kernels (train.deterministic) and the CPU threads of
    train.threads (0: spikeep's choice, one thread for networks without conv layers, measured fastest)."""
    net = _build_network(cfg, torch.device(device) if device is not None else None)
    set_threads(cfg)
    return net


def learner(cfg: Config, net: EqNetwork) -> Learner:
    """The learner of a config for `net`: rate EP (one-sided, random-sign, symmetric), BPTT, or spiking
    EP for model.neurons = 'spiking'. `learner.estimate(x, y)` runs the phases and writes the gradient
    estimate of the batch into each parameter's .grad (returns a StepResult: per-sample loss, logits,
    free state, steps); `learner.free_equilibrium(x)` gives the free phase's state. No call is needed
    after an optimizer step."""
    return make_learner(cfg, net)


def load_data(cfg: Config) -> Dataset:
    """The data set of cfg.data (`.train` and `.test`, each (x, y) tensors, x normalised as configured),
    its labels checked against model.n_classes."""
    ds = prepare_data(cfg.data)
    check_labels(ds, cfg.model.n_classes)
    return ds


def relax(net: EqNetwork, x: Tensor, T: int = 20, *, y: Optional[Tensor] = None, beta: float = 0.0,
          state: Optional[State] = None, tol: float = 0.0, relaxer: Relaxer = EAGER) -> Relaxed:
    """At most T steps of the rate dynamics s <- sigma(dPhi^beta/ds) from `state` (zeros by default) with
    inputs x: the free phase (beta = 0), or a nudged phase towards labels y (beta != 0, usually from the
    free state). With tol > 0 it stops once no neuron moves by more than tol. Returns Relaxed(state,
    steps, delta): the state is one tensor per layer. `relaxer` (core.relaxer.Relaxer) says how the steps
    run: schedule, precision, kernels (default: the eager reference)."""
    with torch.no_grad():
        inp = net.prepare(x, y)
        return _relax(net, inp, net.init_state(inp.x.shape[0]) if state is None else state, T, beta, tol,
                      relaxer=relaxer)


def ep_estimate(net: EqNetwork, x: Tensor, y: Tensor, estimator: str = "symmetric", beta: float = 0.5,
                T1: int = 20, T2: int = 4, *, tol: float = 0.0,
                generator: Optional[torch.Generator] = None) -> EPResult:
    """One EP estimate of the loss gradient on the batch (x, y), written into .grad (Laborieux et al. 2021):
    a free phase of T1 steps, nudged phase(s) of T2 steps with +beta (and -beta for 'symmetric'), and
    the estimator's difference of dPhi/dtheta. Rate networks; `learner(cfg, net)` covers every method.
    Returns EPResult (s_free, per-sample loss, logits, steps, beta, ...)."""
    return ep_gradients(net, x, y, estimator, beta, T1, T2, tol, generator)


class Model(torch.nn.Module):
    """A network as a classifier: `model(x)` runs the free phase of the config (T1 steps, or the spiking
    simulator's budget) on inputs x, shape (B, *model.input_shape) and normalised as `load_data` gives
    them, and returns class scores (B, n_classes): the softmax readout's logits, or the output layer for
    squared error. `model.predict(x)` is their argmax; `model.net` the EqNetwork, `model.cfg` its config."""

    def __init__(self, net: EqNetwork, cfg: Config):
        super().__init__()
        self.net, self.cfg = net, cfg
        self.learner = make_learner(cfg, net)

    @torch.no_grad()
    def free_equilibrium(self, x: Tensor) -> FreeEquilibrium:
        """The free phase's state (spike rates for spiking networks), steps and counts."""
        return self.learner.free_equilibrium(x)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net.logits(self.learner.free_equilibrium(x).state)

    def predict(self, x: Tensor) -> Tensor:
        return self.forward(x).argmax(1)


def load(run_dir: PathLike, weights: str = "best", device: Optional[str] = None) -> Model:
    """A run folder's best (`weights="best"`) or last ("last") weights as a Model, checked against the
    run's config (run id, names, shapes) and loaded with torch.load(weights_only=True); `device`
    overrides the config's."""
    if weights not in ("best", "last"):
        raise ValueError(f"weights must be 'best' or 'last', got {weights!r}")
    cfg, net, _ = load_run(run_dir, weights, device)
    return Model(net, cfg).eval()


def evaluate(run_dir: PathLike, weights: str = "best", device: Optional[str] = None) -> dict:
    """Test loss and accuracy (%) of a run folder's weights on its config's test set, as a dict."""
    return evaluate_run(run_dir, weights, device)


def train(cfg: Union[Config, PathLike, None] = None, run_dir: Optional[PathLike] = None, *, overrides: Optional[list[str]] = None,
          resume: bool = False, progress: Optional[bool] = None, echo: bool = True, base_dir: PathLike = "runs",
          overwrite: bool = False) -> TrainResult:
    """A whole training run, as `spikeep train` does it: a config (or a config's name or file, with
    `overrides`) trained into `run_dir` (default runs/<name>/<timestamp>; one that holds anything is
    refused unless overwrite=True, which moves it aside), with checkpoints, metrics.csv, best.pt.
    resume=True continues the run in run_dir (cfg None). progress: tqdm bars (None: only when stderr is
    a terminal); echo: log lines to the console. Returns TrainResult(net, history, run_dir)."""
    if isinstance(cfg, (str, Path)) and not resume:
        cfg = load_config(cfg, overrides)
    elif overrides:
        raise ValueError("overrides go with a config's name or file; change a Config object directly")
    return _train(cfg, run_dir, resume=resume, progress=progress, echo=echo, base_dir=base_dir,
                  overwrite=overwrite)
