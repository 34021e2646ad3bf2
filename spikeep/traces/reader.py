"""Reading trace files: while training writes them, after a crash, or finished; info and export."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import h5py
import numpy as np
import torch

from .format import READABLE, PER_ITERATION, PER_SNAPSHOT, SUMMARY_COLUMNS, TracesError, check_layout, open_for_reading


class LayerTraces:
    """One layer's traces: h5py datasets (slicing gives numpy arrays) and torch views."""

    def __init__(self, group: h5py.Group, name: str):
        self.group, self.name = group, name
        self.kind = group.attrs["kind"]
        self.weight_shape = tuple(int(v) for v in group.attrs["weight_shape"])
        self.sample_index = group["sample_index"][:]
        self.quantized = bool(group.attrs.get("quantized", False))
        self.scale = float(group.attrs["scale"]) if self.quantized else None

    def weights(self, index: Any = slice(None)) -> np.ndarray:
        """Full weight snapshots as floats (scale x code for quantized layers)."""
        if self.quantized:
            return self.scale * self.weight_code[index].astype(np.float64)
        return self.weight[index]

    def __getattr__(self, item: str) -> h5py.Dataset:
        if item in PER_ITERATION + PER_SNAPSHOT + ("sample_code", "weight_code", "angle") and item in self.group:
            d = self.group[item]
            d.refresh()  # see what a live writer has flushed since
            return d
        raise AttributeError(item)

    def torch(self, item: str, index: Any = slice(None)) -> torch.Tensor:
        return torch.from_numpy(np.asarray(getattr(self, item)[index]))

    def summary_columns(self) -> dict[str, np.ndarray]:
        s = self.summary[:]
        return {c: s[:, i] for i, c in enumerate(SUMMARY_COLUMNS)}


class Traces:
    """A trace file opened for reading (also while training writes it, or after a crash)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = open_for_reading(self.path)
        self.format = self.file.attrs.get("format")
        if self.format not in READABLE:
            self.file.close()
            raise TracesError(f"{self.path}: not a spikeep trace file (format {' or '.join(map(repr, READABLE))} "
                              f"expected, found {self.format!r})")
        try:
            check_layout(self.file, self.path)
        except TracesError:
            self.file.close()
            raise
        self.layers = list(self.file["layers"].keys())

    def _axis(self, name: str) -> np.ndarray:
        d = self.file[name]
        d.refresh()
        return d[:]

    # the time axes, as numpy arrays (refreshed: a live writer's newest rows included)
    iteration = property(lambda self: self._axis("iteration"), doc="iteration of each per-iteration row")
    epoch = property(lambda self: self._axis("epoch"), doc="epoch of each per-iteration row")
    snapshot_iteration = property(lambda self: self._axis("snapshot_iteration"), doc="iteration of each snapshot")
    snapshot_epoch = property(lambda self: self._axis("snapshot_epoch"), doc="epoch of each snapshot")

    @property
    def config(self) -> dict:
        return json.loads(self.file.attrs.get("config", "{}") or "{}")

    @property
    def attrs(self) -> dict:
        return dict(self.file.attrs)

    def __getitem__(self, name: str) -> LayerTraces:
        if name not in self.layers:
            raise TracesError(f"{self.path}: no layer {name!r}; layers: {', '.join(self.layers)}")
        return LayerTraces(self.file["layers"][name], name)

    def __iter__(self) -> Iterator[LayerTraces]:
        return (self[n] for n in self.layers)

    def n_rows(self) -> int:
        """Complete per-iteration rows (the time axis is written last)."""
        return len(self.iteration)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Traces":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open(path: str | Path) -> Traces:  # noqa: A001 - spikeep.traces.open, like h5py.File / np.load
    """Open a trace file for reading: `with spikeep.traces.open(run / "traces.h5") as t: ...`."""
    return Traces(path)


def info(path: str | Path) -> str:
    with open(path) as t:
        it = t.iteration
        lines = [f"{t.path} ({Path(t.path).stat().st_size / 2**20:.1f} MiB, format {t.format})",
                 f"iterations: {len(it)} rows" + (f", {it[0]}..{it[-1]}" if len(it) else ""),
                 f"snapshots: {len(t.snapshot_iteration)} at iterations {t.snapshot_iteration.tolist()[:10]}"
                 + (" ..." if len(t.snapshot_iteration) > 10 else ""),
                 f"seed {t.attrs.get('seed')}, git commit {t.attrs.get('git_commit') or '-'}",
                 f"{'layer':<10} {'kind':<6} {'weight shape':<20} {'sampled':>8}"]
        for lt in t:
            q = f"  quantized: {lt.group.attrs['bits']}-bit codes, scale {lt.scale:.4g}" if lt.quantized else ""
            lines.append(f"{lt.name:<10} {lt.kind:<6} {str(lt.weight_shape):<20} {len(lt.sample_index):>8}{q}")
    return "\n".join(lines)


def export(path: str | Path, layer: str, fmt: str, out: Optional[str | Path] = None) -> Path:
    """Write one layer's per-iteration traces as CSV (one row per iteration) or npz (everything)."""
    if fmt not in ("csv", "npz"):
        raise TracesError(f"unknown export format {fmt!r}; use csv or npz")
    with open(path) as t:
        lt = t[layer]
        n = t.n_rows()
        out = Path(out) if out else Path(path).with_name(f"{Path(path).stem}_{layer}.{fmt}")
        it, ep = t.iteration[:n], t.epoch[:n]
        sw, sd, sg, summ = (getattr(lt, k)[:n] for k in ("sample_weight", "sample_delta", "sample_grad", "summary"))
        if fmt == "npz":
            np.savez_compressed(out, iteration=it, epoch=ep, sample_index=lt.sample_index, sample_weight=sw,
                                sample_delta=sd, sample_grad=sg, summary=summ,
                                summary_columns=np.array(SUMMARY_COLUMNS), weight=lt.weights(), bias=lt.bias[:],
                                snapshot_iteration=t.snapshot_iteration,
                                **({"weight_code": lt.weight_code[:], "sample_code": lt.sample_code[:n],
                                    "scale": lt.scale} if lt.quantized else {}))
        else:
            cols = (["iteration", "epoch"] + [f"summary_{c}" for c in SUMMARY_COLUMNS]
                    + [f"{p}_{i}" for p in ("w", "dw", "grad") for i in lt.sample_index])
            data = np.column_stack([it, ep, summ, sw, sd, sg])
            fmt_cols = ["%d", "%d"] + ["%.9g"] * (data.shape[1] - 2)
            np.savetxt(out, data, delimiter=",", header=",".join(cols), comments="", fmt=fmt_cols)
    return out
