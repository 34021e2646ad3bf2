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


def open_for_reading(path: Path) -> h5py.File:
    """Open a trace file read-only; one whose writer was killed (or is running) opens in SWMR mode."""
    if not path.is_file():
        raise TracesError(f"no trace file at {path}")
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError:
        pass
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise TracesError(f"{path}: not a readable HDF5 trace file ({e})") from None
