"""The trace file's format: its name, the per-iteration and per-snapshot datasets, a layer's spec."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

FORMAT = "spikeep-traces/1"
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
        raise TracesError(f"{path}: not a readable HDF5 trace file ({e})") from None


def check_layout(f: h5py.File, path: Path) -> None:
    """Refuse a file with spikeep's format attribute but without the groups and datasets it promises."""
    missing = [name for name in REQUIRED if name not in f]
    for layer in (f["layers"].keys() if "layers" in f else []):
        g = f["layers"][layer]
        missing += [f"layers/{layer}/{name}" for name in REQUIRED_LAYER if name not in g]
        missing += [f"layers/{layer} attribute {a!r}" for a in ("kind", "weight_shape") if a not in g.attrs]
    if missing:
        raise TracesError(f"{path}: damaged or incomplete spikeep trace file: missing {', '.join(missing)}")
