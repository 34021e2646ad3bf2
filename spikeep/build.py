"""From a config to objects: the one place that turns plain data (spikeep.config) into a network,
a learner, an optimizer, a scheduler and chip-like synapses, and that validates a config against the
package (activation and pooling names, spiking and synapse parameters, chip profiles).

    load_config(path, overrides)   TOML file + --set items -> a validated Config
    config_from_dict(data, source) a dict (e.g. a run folder's config.json) -> a validated Config
    build_network(cfg)             the network, initialised from train.seed, on its device and dtype
    make_learner(cfg, net)         RateEP, SpikingEP or BPTT
    make_optimizer / make_scheduler / make_plasticity
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .config import Config, ConfigError, PlasticityConfig, SpikingConfig, parse_config, read_toml, with_overrides
from .core.engine import FusedEngine
from .core.fused import triton_available
from .core.interactions import POOLS
from .core.network import EqNetwork
from .core.neurons import get_activation
from .data import DATA_SHAPES
from .hardware.chips import apply_profile
from .learners import BPTT, Learner, RateEP, SpikingEP, WarmStarts
from .learning.plasticity import Plasticity, SynapseSpec
from .spiking.neurons import NeuronParams
from .spiking.simulator import DEFAULT_CONV_CROSSOVER, DEFAULT_CROSSOVER, SpikingParams

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# -- configs ------------------------------------------------------------------------------------------

def spiking_params(s: SpikingConfig) -> SpikingParams:
    return SpikingParams(NeuronParams(s.theta, s.leak, s.refractory, s.v_min), s.syn_alpha, s.trace_tau,
                         s.window, s.rate_tol, s.settle_statistic, s.settle_quantile, s.encoding, s.backend,
                         DEFAULT_CROSSOVER if s.crossover < 0 else s.crossover,
                         DEFAULT_CONV_CROSSOVER if s.conv_crossover < 0 else s.conv_crossover)


def synapse_spec(p: PlasticityConfig) -> SynapseSpec:
    return SynapseSpec(p.bits, p.scale, p.rounding, p.threshold, p.device, p.levels, p.nu_p, p.nu_d,
                       p.noise, p.headroom)


def check_config(cfg: Config) -> Config:
    """Every check of a config: the package's names and parameters, then the plain-data checks."""
    try:
        get_activation(cfg.model.activation)
    except ValueError as e:
        raise ConfigError(f"model.activation: {e}") from None
    for c in cfg.model.pools:
        if c not in POOLS:
            known = ", ".join(f"'{k}' ({v})" for k, v in POOLS.items())
            raise ConfigError(f"model.pools: unknown pooling letter {c!r}; use one of {known}")
    cfg.validate()
    for what, make, section in (("plasticity: ", synapse_spec, cfg.plasticity),
                                ("[spiking] ", spiking_params, cfg.spiking)):
        try:
            make(section)
        except ValueError as e:
            raise ConfigError(f"{what}{e}") from None
    if cfg.dynamics.device != "auto":
        try:
            torch.device(cfg.dynamics.device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"dynamics.device: {cfg.dynamics.device!r} is not a device; use 'cpu', 'cuda', "
                              f"'cuda:N' or 'auto'") from None
    if cfg.dynamics.warm_start != "none" and (cfg.model.neurons != "rate" or cfg.estimator.name == "bptt"):
        raise ConfigError("dynamics.warm_start is for rate EP (model.neurons = 'rate', an EP estimator)")
    if cfg.model.neurons != "rate" and (cfg.dynamics.schedule != "sync" or cfg.dynamics.precision == "bf16_incremental"):
        raise ConfigError("dynamics.schedule and precision = 'bf16_incremental' are for rate networks; spiking "
                          "networks run the [spiking] simulator")
    want = DATA_SHAPES.get(cfg.data.name)
    if want is not None and tuple(cfg.model.input_shape) != want:
        raise ConfigError(f"model.input_shape {cfg.model.input_shape} does not match the images of data.name = "
                          f"{cfg.data.name!r}, {list(want)}")
    try:
        with torch.device("meta"):  # the layers fit together (shapes only, no memory)
            EqNetwork(cfg.model)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """A validated Config from a dict: chip profile filled in, types and values checked; errors
    name `source`."""
    try:
        data = apply_profile(dict(data))
    except ValueError as e:
        raise ConfigError(f"{source}: plasticity.profile: {e}") from None
    cfg = parse_config(data, source, validate=False)
    try:
        return check_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> Config:
    """Read a TOML config into a validated Config; `overrides` are 'section.key=value' strings. Errors
    name the file, or the --set item they come from."""
    overrides = list(overrides or [])
    data = with_overrides(read_toml(path), overrides, str(path))
    return config_from_dict(data, str(path) + (f" with --set {' '.join(overrides)}" if overrides else ""))


# -- objects --------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"dynamics.device = {name!r} asked for, but CUDA is not available here; use device = 'cpu'")
    return dev


def set_precision(precision: str) -> None:
    """Process-wide CUDA matmul / cuDNN settings of a precision: TF32 only for "tf32" (PyTorch lets
    cuDNN convolutions use TF32 by default; "strict" turns that off). No effect on CPU."""
    tf32 = precision == "tf32"  # bf16_incremental: its exact recomputations are float32, TF32 off
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def set_deterministic(on: bool) -> None:
    """Deterministic kernels everywhere (an error names any operation that has none), cuDNN without
    autotuning; cuBLAS needs its workspace setting before its first use."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def choose_threads(cfg: Config) -> tuple[int, str]:
    """CPU threads for torch and why (train.threads; see analysis/results/threads/ for the measurements)."""
    if cfg.train.threads > 0:
        return cfg.train.threads, "train.threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    if not cfg.model.channels:
        return 1, "auto: no conv layers"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores, cores - busy)), f"auto: conv layers, {cores} cores, {busy} busy by the 1-minute load"


def set_threads(cfg: Config) -> str:
    """Apply choose_threads (process-wide, like the precision flags); returns the line for the log."""
    n, why = choose_threads(cfg)
    torch.set_num_threads(n)
    return f"{n} CPU thread{'s' if n > 1 else ''} ({why})"


def build_network(cfg: Config, device: Optional[torch.device] = None) -> EqNetwork:
    """The network of cfg.model, initialised from cfg.train.seed, on the device, dtype and precision
    asked for."""
    torch.manual_seed(cfg.train.seed)
    net = EqNetwork(cfg.model)
    net = net.to(device=device or resolve_device(cfg.dynamics.device), dtype=DTYPES[cfg.dynamics.dtype])
    set_precision(cfg.dynamics.precision)
    set_deterministic(cfg.train.deterministic)
    net.use_drive_dtype(torch.bfloat16 if cfg.dynamics.precision == "bf16" else None)
    net.use_channels_last(cfg.dynamics.channels_last)
    return attach_engine(net, cfg)


def engine_name(d, device: torch.device) -> str:
    """The engine dynamics.engine asks for on `device`: 'auto' is eager on the CPU (measured as fast as
    the fused layer updates there, analysis/bench_gpu.py) unless the schedule or precision needs a fused
    engine, and the Triton kernels on CUDA where Triton imports."""
    if d.engine != "auto":
        return d.engine
    if device.type == "cuda":
        return "triton" if triton_available() else "fused"
    return "fused" if d.schedule != "sync" or d.precision == "bf16_incremental" else "eager"


def attach_engine(net: EqNetwork, cfg: Config) -> EqNetwork:
    """Give a rate network the relaxation engine of cfg.dynamics (spiking networks run their own simulator)."""
    d = cfg.dynamics
    name = engine_name(d, net.synapses[0].weight.device)
    if name == "eager" or cfg.model.neurons != "rate":
        return net.use_engine(None)
    if name == "triton" and not triton_available():
        raise ConfigError("dynamics.engine = 'triton' needs the triton package; use engine = 'fused' or 'auto'")
    return net.use_engine(FusedEngine(net, "triton" if name == "triton" else "torch", d.schedule,
                                      d.precision == "bf16_incremental", d.recompute_every, graphs=d.graphs))


def make_learner(cfg: Config, net: EqNetwork, warm: Optional[WarmStarts] = None) -> Learner:
    """The learner of cfg: spiking EP for spiking neurons, else BPTT or rate EP by estimator.name;
    `warm`: where rate EP's free phases start (dynamics.warm_start)."""
    d, e = cfg.dynamics, cfg.estimator
    if cfg.model.neurons == "spiking":
        s = cfg.spiking
        return SpikingEP(net, spiking_params(s), e.name, e.beta, s.T1, s.T2, e.kp_leak)
    if e.name == "bptt":
        return BPTT(net, d.T1, e.truncate, d.tol, d.tol_every)
    return RateEP(net, e.name, e.beta, d.T1, d.T2, d.tol, d.tol_every, e.kp_leak, warm)


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


def make_plasticity(cfg: Config, net: EqNetwork) -> Optional[Plasticity]:
    """Chip-like synapses of cfg.plasticity (None for float weights); puts the weights on the grid."""
    if not cfg.plasticity.bits:
        return None
    return Plasticity(net, synapse_spec(cfg.plasticity), cfg.plasticity.seed)
