"""Typed configuration: plain dataclasses read from TOML (stdlib tomllib), with --set overrides.

Plain data only: this package imports nothing else of spikeep. Each section checks what it can know by
itself (types, ranges, lengths); the checks that need the package (activation and pooling names,
spiking and synapse parameters, chip profiles) run where the objects are built, in spikeep.training (build.py;
validation.py, whose `load_config` is the one entry point that reads and validates a config file).

    sections.py   the sections (dataclasses) and their own checks
    reading.py    typed reading of dicts, TOML files, --set overrides and run folders' config.json
"""
from .reading import (apply_overrides, parse_config, read_json_config, read_toml, resolve_config, shipped_configs,
                      with_overrides)
from .sections import (ESTIMATORS, Config, ConfigError, DataConfig, DynamicsConfig, EstimatorConfig, GDUConfig,
                       ModelConfig, PlasticityConfig, SpikingConfig, TraceConfig, TrainConfig)

__all__ = ["apply_overrides", "parse_config", "read_json_config", "read_toml", "resolve_config", "shipped_configs",
           "with_overrides", "ESTIMATORS", "Config",
           "ConfigError", "DataConfig", "DynamicsConfig", "EstimatorConfig", "GDUConfig", "ModelConfig",
           "PlasticityConfig", "SpikingConfig", "TraceConfig", "TrainConfig"]
