"""From a validated config (spikeep.validation) to objects: the network, its relaxation engine, the
learner, optimizer, scheduler and chip-like synapses.

    build_network(cfg)             the network, initialised from train.seed, on its device and dtype
    make_relaxer(cfg, device)      the Relaxer of cfg.dynamics (engine_name says which engine 'auto' is)
    make_learner(cfg, net)         RateEP, SpikingEP or BPTT, each with its relaxer
    make_optimizer / make_scheduler / make_plasticity
"""
from __future__ import annotations

from typing import Optional

import torch

from ..config import Config, ConfigError
from ..core.dynamics import Settling
from ..core.fused import triton_available
from ..core.relaxer import Relaxer, RelaxSettings
from ..core.network import EqNetwork
from .learners import BPTT, Learner, RateEP, SpikingEP, WarmStarts
from ..learning.plasticity import Plasticity
from .torch_settings import resolve_device, set_deterministic, set_precision
from .validation import spiking_params, synapse_spec

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_network(cfg: Config, device: Optional[torch.device] = None) -> EqNetwork:
    """The network of cfg.model, initialised from cfg.train.seed, on the device, dtype and precision
    asked for."""
    torch.manual_seed(cfg.train.seed)
    net = EqNetwork(cfg.model)
    net = net.to(device=device or resolve_device(cfg.dynamics.device), dtype=DTYPES[cfg.dynamics.dtype])
    set_precision(cfg.dynamics.precision)
    set_deterministic(cfg.train.deterministic)
    net.use_channels_last(cfg.dynamics.channels_last)
    return net


def engine_name(d, device: torch.device) -> str:
    """The engine dynamics.engine asks for on `device`: 'auto' is eager on the CPU (measured as fast as
    the fused layer updates there, analysis/bench_gpu.py) unless the schedule or precision needs a fused
    engine, and the Triton kernels on CUDA where Triton imports."""
    if d.engine != "auto":
        return d.engine
    if device.type == "cuda":
        return "triton" if triton_available() else "fused"
    return "fused" if d.schedule != "sync" or d.precision == "bf16_incremental" else "eager"


def relax_settings(cfg: Config, device: torch.device) -> RelaxSettings:
    """cfg.dynamics as the relaxer's settings. 'eager' is the reference: PyTorch kernels, no CUDA graphs,
    the nudged phases one after the other; 'fused' and 'triton' batch the +beta / -beta phases and capture
    CUDA graphs (dynamics.graphs)."""
    d = cfg.dynamics
    name = engine_name(d, device)
    if name == "triton" and not triton_available():
        raise ConfigError("dynamics.engine = 'triton' needs the triton package; use engine = 'fused' or 'auto'")
    return RelaxSettings(schedule=d.schedule, precision=d.precision, kernels="triton" if name == "triton" else "torch",
                         graphs=name != "eager" and d.graphs, batch_phases=name != "eager",
                         recompute_every=d.recompute_every)


def make_relaxer(cfg: Config, device: torch.device) -> Relaxer:
    """The Relaxer of cfg.dynamics on `device` (rate networks; spiking networks run their own simulator)."""
    return Relaxer(relax_settings(cfg, device))


def make_learner(cfg: Config, net: EqNetwork, warm: Optional[WarmStarts] = None) -> Learner:
    """The learner of cfg: spiking EP for spiking neurons, else BPTT or rate EP by estimator.name;
    `warm`: where rate EP's free phases start (dynamics.warm_start)."""
    d, e = cfg.dynamics, cfg.estimator
    if cfg.model.neurons == "spiking":
        s = cfg.spiking
        return SpikingEP(net, spiking_params(s), e.name, e.beta, s.T1, s.T2, e.kp_leak)
    relaxer = make_relaxer(cfg, net.synapses[0].weight.device)
    if e.name == "bptt":
        return BPTT(net, d.T1, e.truncate, d.tol, d.tol_every, relaxer)
    settling = Settling(d.rtol, d.tol_every, d.patience, free_rtol=d.free_rtol or None) if d.stop == "relative" else None
    return RateEP(net, e.name, e.beta, d.T1, d.T2, d.tol, d.tol_every, e.kp_leak, warm, settling, relaxer)


def make_optimizer(net: EqNetwork, cfg: Config, lr_factor: float = 1.0) -> torch.optim.Optimizer:
    """SGD with one learning rate per layer (readout last), as in Laborieux et al. 2021; weight
    decay applies to weights and biases alike, as in the paper's code. `lr_factor` scales every rate
    (data parallel: train.lr_scaling)."""
    t = cfg.train
    groups = [{"params": list(layer.parameters()), "lr": t.lrs[i] * lr_factor} for layer, i in zip(net.layers, net.lr_slots())]
    return torch.optim.SGD(groups, lr=t.lrs[0] * lr_factor, momentum=t.momentum, weight_decay=t.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config):
    """torch's CosineAnnealingLR(T_max, eta_min), stepped once per epoch. Past T_max it does not
    stay at eta_min: the cosine goes on, so the learning rate climbs again (see README)."""
    t = cfg.train
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.T_max or t.epochs, eta_min=t.eta_min)
    return None


def make_plasticity(cfg: Config, net: EqNetwork) -> Optional[Plasticity]:
    """Chip-like synapses of cfg.plasticity (None for float weights); puts the weights on the grid."""
    if not cfg.plasticity.bits:
        return None
    return Plasticity(net, synapse_spec(cfg.plasticity), cfg.plasticity.seed)
