"""The trace file's format: its name, the per-iteration and per-snapshot datasets, a layer's spec."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

FORMAT = "spikeep-traces/2"  # 2: gzip+shuffle, HDF5 1.10 object formats, a dimension scale on every axis
READABLE = ("spikeep-traces/1", FORMAT)  # files of both read the same way (1: lzf, libver latest)
LIBVER = ("v110", "v110")  # the oldest object formats SWMR allows: HDF5 1.10, 1.12, 1.14 and 2.x read them
SUMMARY_COLUMNS = ("norm", "mean", "std", "min", "max")
PER_ITERATION = ("sample_weight", "sample_delta", "sample_grad", "summary")
PER_SNAPSHOT = ("weight", "bias")


class TracesError(RuntimeError):
    """A trace file cannot be used as asked; the message names the file (and layer)."""


@dataclass
class LayerSpec:
    name: str
    kind: str
    weight_shape: tuple[int, ...]
    bias_shape: tuple[int, ...]
    sample_index: np.ndarray
    state_shape: Optional[tuple[int, ...]] = None  # for probe states (None: not a neuron layer)
    scale: Optional[float] = None  # quantized layer: weight = scale x integer code (None: float weights)
    bits: int = 0
    feedback: bool = False  # the layer has its own feedback weights: an `angle` dataset (degrees, w_f vs w_b)


# units and a one-line description of every dataset (attributes `units` and `description`)
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "iteration": ("iterations", "training iteration (optimizer step, counted from 1) of each per-iteration row"),
    "epoch": ("epochs", "epoch (from 1) of each per-iteration row"),
    "snapshot_iteration": ("iterations", "training iteration of each full snapshot"),
    "snapshot_epoch": ("epochs", "epoch of each full snapshot"),
    "sample_index": ("1", "flat (C-order) index of each sampled synapse into the weight tensor"),
    "sample_weight": ("1", "the sampled synapses' weights after the iteration's update (dimensionless)"),
    "sample_delta": ("1", "the change the iteration's update made to the sampled weights (delta W)"),
    "sample_grad": ("1", "the EP (or BPTT) estimate of dL/dW at the sampled synapses, as written into .grad"),
    "sample_code": ("1", "integer code of each sampled synapse after the update: weight = scale x code"),
    "summary": ("1", "norm, mean, std, min, max of the whole weight tensor after the update"),
    "summary_column": ("", "the statistics along summary's second axis"),
    "weight": ("1", "full weight tensor (PyTorch layout: output, input[, kernel_y, kernel_x])"),
    "weight_code": ("1", "full weight tensor as integer codes: weight = scale x code"),
    "bias": ("1", "full bias vector"),
    "angle": ("degrees", "angle between the layer's forward and feedback weights"),
    "x": ("1", "the probe batch's inputs, normalised as the network saw them (see the root's input_* attributes)"),
    "y": ("1", "the probe batch's class labels"),
    "probe_state": ("1", "the probe batch's free-phase equilibrium state of the layer (firing rates)"),
    "axis": ("1", "index along this axis (a dimension scale)"),
}


def describe(d: h5py.Dataset, key: str, **extra) -> h5py.Dataset:
    units, text = DESCRIPTIONS[key]
    d.attrs.update(units=units, description=text, **extra)
    return d


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
REQUIRED = ("layers", "iteration", "epoch", "snapshot_iteration", "snapshot_epoch")
REQUIRED_LAYER = ("sample_index",) + PER_ITERATION


def check_intact(path: Path) -> None:
    """Refuse a file cut short (a copy with `head`, a full disk) before HDF5 reads it: an SWMR read of
    such a file can block for minutes. HDF5 superblocks of version 2 and 3 (what spikeep writes) hold
    the end-of-file address; a writer killed at any moment leaves the file at least that long."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(48)
    if len(head) < 8 or head[:8] != HDF5_SIGNATURE:
        raise TracesError(f"{path}: not a readable HDF5 trace file ({size} bytes, no HDF5 signature at its start)")
    if len(head) < 12 or head[8] not in (2, 3):
        return  # older superblock versions: HDF5's own open checks them
    so = head[9]
    if so != 8 or len(head) < 12 + 4 * so:
        raise TracesError(f"{path}: damaged HDF5 superblock ({size} bytes)")
    base, eof = int.from_bytes(head[12:20], "little"), int.from_bytes(head[28:36], "little")
    if size < base + eof:
        raise TracesError(f"{path}: truncated: {size} bytes on disk, the file's superblock says {base + eof} "
                          f"(cut short by a copy or a full disk?); it cannot be read")


def open_for_reading(path: Path) -> h5py.File:
    """Open a trace file read-only after checking it is whole; one whose writer was killed (or is
    running) opens in SWMR mode."""
    if not path.is_file():
        raise TracesError(f"no trace file at {path}")
    check_intact(path)
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError:
        pass
    try:
        return h5py.File(path, "r")
    except OSError as e:
        # a writer still creating the file holds it locked until it switches to SWMR mode (errno 11):
        # say so rather than wait here (a reader that waited and then opened the file without SWMR would
        # hold a lock that keeps the writer out)
        hint = (" (locked by a writer that has not switched to SWMR mode yet: open it again in a moment)"
                if "errno = 11" in str(e) else "")
        raise TracesError(f"{path}: not a readable HDF5 trace file ({e}){hint}") from None


def check_layout(f: h5py.File, path: Path) -> None:
    """Refuse a file with spikeep's format attribute but without the groups and datasets it promises."""
    missing = [name for name in REQUIRED if name not in f]
    for layer in (f["layers"].keys() if "layers" in f else []):
        g = f["layers"][layer]
        missing += [f"layers/{layer}/{name}" for name in REQUIRED_LAYER if name not in g]
        missing += [f"layers/{layer} attribute {a!r}" for a in ("kind", "weight_shape") if a not in g.attrs]
    if missing:
        raise TracesError(f"{path}: damaged or incomplete spikeep trace file: missing {', '.join(missing)}")
