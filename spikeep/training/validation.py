"""A config checked against the package: activation and pooling names, spiking and synapse parameters,
chip profiles, shapes that fit together; and the one entry point that reads a config file.

    load_config(path, overrides)   TOML file (or a shipped config's name) + --set items -> a validated Config
    config_from_dict(data, source) a dict (e.g. a run folder's config.json) -> a validated Config
    check_config(cfg)              every check, with the key named in the error
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..config import (Config, ConfigError, PlasticityConfig, SpikingConfig, parse_config, read_toml, resolve_config,
                     with_overrides)
from ..core.fused import triton_available
from ..core.interactions import POOLS
from ..core.network import EqNetwork
from ..core.activations import get_activation
from ..data import DATA_SHAPES
from ..hardware.chips import apply_profile, chip_input_for, get_profile
from ..learning.plasticity import SynapseSpec
from ..spiking.neurons import NeuronParams
from ..spiking.simulator import DEFAULT_CONV_CROSSOVER, DEFAULT_CROSSOVER, SpikingParams


def spiking_params(s: SpikingConfig) -> SpikingParams:
    v_min = -math.inf if s.v_min == "none" else float(s.v_min)  # "none": no lower bound (NIR's IF)
    return SpikingParams(NeuronParams(s.theta, s.leak, s.refractory, v_min, s.reset), s.syn_alpha, s.trace_tau,
                         s.window, s.rate_tol, s.settle_statistic, s.settle_quantile, s.encoding, s.backend,
                         DEFAULT_CROSSOVER if s.crossover < 0 else s.crossover,
                         DEFAULT_CONV_CROSSOVER if s.conv_crossover < 0 else s.conv_crossover, s.pool_alpha)


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
    if cfg.dynamics.stop == "relative" and (cfg.model.neurons != "rate" or cfg.estimator.name == "bptt"):
        raise ConfigError("dynamics.stop = 'relative' measures EP's nudged phases: it is for rate EP "
                          f"(model.neurons = {cfg.model.neurons!r}, estimator.name = {cfg.estimator.name!r}); "
                          "use 'max_change'")
    _check_engine(cfg)
    if cfg.dynamics.warm_start != "none" and (cfg.model.neurons != "rate" or cfg.estimator.name == "bptt"):
        raise ConfigError("dynamics.warm_start is for rate EP (model.neurons = 'rate', an EP estimator)")
    if cfg.model.neurons != "rate" and (cfg.dynamics.schedule != "sync" or cfg.dynamics.precision == "bf16_incremental"):
        raise ConfigError("dynamics.schedule and precision = 'bf16_incremental' are for rate networks; spiking "
                          "networks run the [spiking] simulator")
    _check_chip_input(cfg)
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


def _check_chip_input(cfg: Config) -> None:
    """A rate code needs inputs in [0, 1]: chip_input = 'spikes' with a constant current prices the input
    spikes of p = x per step, which normalised inputs (data.mean, data.std) are not."""
    p, s = cfg.plasticity, cfg.spiking
    if not p.profile or cfg.model.neurons != "spiking" or s.encoding != "current":
        return
    mode = chip_input_for(get_profile(p.profile), s.chip_input, s.encoding)
    if mode == "spikes" and cfg.data.mean:
        raise ConfigError(f"spiking.chip_input = 'spikes' (chip profile {p.profile!r}) prices the input as "
                          f"rate-coded spikes with p = pixel value per step, which needs inputs in [0, 1]; "
                          f"data.mean / data.std normalise them: drop them or set spiking.chip_input = 'bias'")


def _check_engine(cfg: Config) -> None:
    """dynamics.engine = 'triton' runs Triton kernels on a CUDA device (or, slowly, in Triton's interpreter
    with TRITON_INTERPRET=1): refused here, before any run folder exists, where neither is possible."""
    d = cfg.dynamics
    if d.engine != "triton" or cfg.model.neurons != "rate":  # spiking networks run their own simulator
        return
    if not triton_available():
        raise ConfigError("dynamics.engine = 'triton' needs the triton package (not importable here); use "
                          "engine = 'fused' or 'auto'")
    on_cpu = d.device == "cpu" or (d.device == "auto" and not torch.cuda.is_available())
    if on_cpu and os.environ.get("TRITON_INTERPRET") != "1":
        where = "dynamics.device = 'cpu'" if d.device == "cpu" else "no CUDA device here (device 'auto')"
        raise ConfigError(f"dynamics.engine = 'triton' runs its kernels on a CUDA device, and this run is on the CPU "
                          f"({where}); use engine = 'fused' (the same layer updates in PyTorch) or 'auto', or "
                          f"set TRITON_INTERPRET=1 to run the kernels in Triton's slow interpreter")


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
    """Read a TOML config (a file, or the name of a shipped config such as 'quickstart') into a validated
    Config; `overrides` are 'section.key=value' strings. Errors name the file, or the --set item they
    come from."""
    overrides = list(overrides or [])
    path = resolve_config(path)
    data = with_overrides(read_toml(path), overrides, str(path))
    return config_from_dict(data, str(path) + (f" with --set {' '.join(overrides)}" if overrides else ""))
