"""Process-wide torch settings a run asks for: its device, CUDA precision flags, deterministic kernels,
and the number of CPU threads (measured in analysis/results/threads/)."""
from __future__ import annotations

import os

import torch

from ..config import Config


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
