"""Files written so that a crash never leaves half of one: to a temporary name in the same folder,
flushed to disk, then renamed over the old file (a `kill -9` at any moment leaves the old or the new
file). Used by every part of spikeep that writes results: run folders, GDU reports, pictures."""
from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

# temporary names of writers: ".NAME.tmpPID" (atomic replace), ".NAME.resumePID" (trace file on resume)
_TEMPORARY = re.compile(r"^\..+\.(?:tmp|resume)(\d+)$")


class StorageError(OSError):
    """A file could not be written (disk full, no permission, ...): the message names the file, the
    cause and the free space left there."""


def free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MiB free on that file system"
    except OSError:
        return "free space unknown"


def _is_write_failure(e: BaseException) -> bool:
    # torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos ...")
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and any(
        k in str(e) for k in ("unexpected pos", "inline_container", "PytorchStreamWriter", "file write failed")))


def storage_error(path: Path, e: BaseException) -> StorageError:
    """One clear error for a failed write of `path`."""
    full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in str(e) \
        or "unexpected pos" in str(e)
    cause = "no space left on the device" if full else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return StorageError(errno.ENOSPC if full else getattr(e, "errno", None) or errno.EIO,
                        f"cannot write {path}: {cause} ({free_space(path)})")


def replace_atomically(path: Path, write) -> None:
    """Write `path` through a temporary file in the same folder, flushed, then renamed over it; a
    failure (a full disk, say) leaves the old file untouched and raises StorageError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if not _is_write_failure(e):
            raise
        raise storage_error(path, e) from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def write_text_atomic(path: Path, text: str) -> None:
    replace_atomically(path, lambda f: f.write(text.encode()))


def strict_json(obj: Any) -> Any:
    """obj with every non-finite float replaced by None, so the file stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON (strict: NaN and inf are written as null) through an atomic replace."""
    write_text_atomic(path, json.dumps(strict_json(obj), indent=1, allow_nan=False) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that writers which are no longer running left in `folder` (a
    kill -9 during a write leaves one); returns what was removed."""
    removed = []
    for p in Path(folder).iterdir():
        m = _TEMPORARY.match(p.name)
        if m and p.is_file() and (int(m.group(1)) == os.getpid() or not _alive(int(m.group(1)))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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
