"""Where a run's numbers come from: the git commit of the code and the environment it ran in (env.json)."""
from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, world_size: int = 1, dynamics: Optional[dict] = None) -> dict[str, Any]:
    """What a run ran on; `dynamics`: the relaxation mode (precision, engine, schedule) as resolved."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("spikeep", "torch", "torchvision", "norse", "numpy", "h5py"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions, "python": sys.version.split()[0], "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "world_size": world_size, "git_commit": git_commit(),
        "precision": {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                      "cudnn_deterministic": torch.backends.cudnn.deterministic, **(dynamics or {})},
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "command": sys.argv, "started": datetime.now().isoformat(timespec="seconds"),
    }
