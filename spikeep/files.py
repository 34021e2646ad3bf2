"""Files written so that a crash never leaves half of one: to a temporary name in the same folder,
flushed to disk, then renamed over the old file (a `kill -9` at any moment leaves the old or the new
file). Used by every part of spikeep that writes results: run folders, GDU reports, pictures."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch


def replace_atomically(path: Path, write) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def write_text_atomic(path: Path, text: str) -> None:
    replace_atomically(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def save_torch_atomic(path: Path, obj: Any) -> None:
    replace_atomically(path, lambda f: torch.save(obj, f))


def save_figure_atomic(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically (a crash never leaves half a picture) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    replace_atomically(path, lambda f: f.write(buf.getvalue()))
    return path
