"""Typed reading: a dict (from TOML, --set items or a run folder's config.json) into the sections'
dataclasses; unknown keys, wrong types, non-finite numbers and out-of-range integers are errors that
name the key and where it came from."""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Union

from .sections import Config, ConfigError


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for alt in typing.get_args(tp):
            try:
                return _check_type(value, alt, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _from_dict(tp, value, where)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be a finite number, got {value!r}")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -2**63 <= value < 2**63:
                raise ConfigError(f"{where}: {value} is out of range (a 64-bit integer is needed)")
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where + ': ' if where else ''}unknown key {key!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def parse_config(data: dict[str, Any], source: str = "<dict>", validate: bool = True) -> Config:
    """A typed Config from a dict, with the checks plain data allows; errors name `source`."""
    try:
        cfg = _from_dict(Config, data, "")
        return cfg.validate() if validate else cfg
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    """'section.key=value' as (path, value): the value is read as TOML, a bare word as a string."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


# the configs shipped inside the package (spikeep/config/shipped/*.toml), found by name from any folder
SHIPPED = Path(__file__).resolve().parent / "shipped"


def shipped_configs() -> dict[str, Path]:
    """The configs shipped with spikeep, by name (file stem) -> path."""
    return {p.stem: p for p in sorted(SHIPPED.glob("*.toml"))}


def resolve_config(path_or_name: Union[str, Path]) -> Path:
    """A config file from a path, or from the name of a shipped config ('quickstart' or 'quickstart.toml'
    -> spikeep/config/shipped/quickstart.toml). An existing file always wins; a plain name that is neither a
    file here nor a shipped config is an error that lists the shipped ones."""
    path = Path(path_or_name)
    if path.exists() or len(path.parts) != 1:
        return path
    shipped = shipped_configs()
    name = path.stem if path.suffix == ".toml" else path.name
    if name in shipped:
        return shipped[name]
    raise ConfigError(f"config not found: {path_or_name} is neither a file nor the name of a shipped config "
                      f"({', '.join(shipped) or 'none found'}; `spikeep configs` lists them)")


def read_toml(path: Union[str, Path]) -> dict[str, Any]:
    """A TOML config file (or a shipped config's name, see resolve_config) as a dict, `name` defaulting to the file's stem (spikeep.training.validation.load_config
    turns it into a validated Config). A top-level `base = "other.toml"` (relative to this file's folder)
    starts from that file's settings, section by section, and this file's keys win; bases may have bases.
    A base that is no file there but a shipped config's name ("quickstart.toml") is that shipped config."""
    path = resolve_config(path)
    data = _read_toml_with_bases(path, [])
    data.setdefault("name", path.stem)
    return data


def _read_toml_with_bases(path: Path, chain: list[Path]) -> dict[str, Any]:
    data = _read_one_toml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be the name of another config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if not base_path.is_file() and len(Path(base).parts) == 1 and Path(base).stem in shipped_configs():
        base_path = shipped_configs()[Path(base).stem].resolve()  # a shipped config's name, from a file elsewhere
    here = [*chain, path.resolve()]
    if base_path in here:
        raise ConfigError(f"{path}: base {base!r} makes a loop: " + " -> ".join(str(p) for p in [*here, base_path]))
    if not base_path.is_file():
        raise ConfigError(f"{path}: base config file not found: {base_path}")
    merged = _read_toml_with_bases(base_path, here)
    merged.pop("name", None)  # a run is named after the file asked for, not its base
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}  # a section: key by key
        else:
            merged[key] = value
    return merged


def _read_one_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file (give a .toml file or a shipped config's name, e.g. quickstart)")
    if not path.is_file():
        shipped = path.stem in shipped_configs() and path.suffix == ".toml"
        raise ConfigError(f"config file not found: {path}" + (f" (the configs once in models/ and spikeep/configs/ "
                                                             f"ship inside the package now: give its name, {path.stem})" if shipped else ""))
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the config as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def with_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply --set items one at a time; an item that names an unknown key or has a wrong type is
    blamed on itself, not on the file."""
    import copy

    try:
        _from_dict(Config, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    for item in overrides:
        trial = apply_overrides(copy.deepcopy(data), [item])
        try:
            _from_dict(Config, trial, "")
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}") from None
        data = trial
    return data


def read_json_config(path: Union[str, Path]) -> dict[str, Any]:
    """A run folder's config.json as a dict; a damaged file is an error that names it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.parent} is not a spikeep run folder (no config.json)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: damaged (not valid JSON: {e}); the run's config cannot be read") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: damaged (valid JSON, but {type(data).__name__} {json.dumps(data)[:40]} instead of "
                          f"a config's table of sections); the run's config cannot be read")
    return data
