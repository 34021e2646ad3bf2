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

# temporary names of spikeep's writers, and only those: ".NAME.spikeep-tmpPID" (atomic replace),
# ".NAME.spikeep-resumePID" (trace file on resume); a user's own ".notes.tmp123" is never touched
_TEMPORARY = re.compile(r"^\..+\.spikeep-(?:tmp|resume)(\d+)$")


class StorageError(OSError):
    """A file could not be written (disk full, no permission, ...): the message names the file, the
    cause and the free space left there."""

    def __init__(self, message: str, code: int = errno.EIO):
        super().__init__(message)
        self.errno = code

    def __str__(self) -> str:
        return self.args[0]


# what a write leaves free at the least: HDF5 (traces) and the file system need room for metadata, and a
# library that hits a full disk half-way (HDF5 does) can leave its file in a state it cannot close
RESERVE = 4 * 2**20


def free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(Path(path).parent).free
    except OSError:
        return -1


def free_space(path: Path) -> str:
    free = free_bytes(path)
    return f"{free / 2**20:.1f} MiB free on that file system" if free >= 0 else "free space unknown"


def ensure_space(path: Path, nbytes: int) -> None:
    """Refuse, before writing a byte, a write of about `nbytes` that the disk cannot take."""
    free = free_bytes(path)
    if 0 <= free < nbytes + RESERVE:
        raise StorageError(f"cannot write {path}: no space left on the device (it needs about "
                           f"{nbytes / 2**20:.1f} MiB and {RESERVE / 2**20:.0f} MiB to spare, "
                           f"{free / 2**20:.1f} MiB are free)", errno.ENOSPC)


def _is_write_failure(e: BaseException) -> bool:
    # torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos ...")
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and any(
        k in str(e) for k in ("unexpected pos", "inline_container", "PytorchStreamWriter", "file write failed")))


def storage_error(path: Path, e: BaseException) -> StorageError:
    """One clear error for a failed write of `path`."""
    full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in str(e) \
        or "unexpected pos" in str(e)
    cause = "no space left on the device" if full else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return StorageError(f"cannot write {path}: {cause} ({free_space(path)})",
                        errno.ENOSPC if full else getattr(e, "errno", None) or errno.EIO)


def replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, flushed, then renamed over
    it; a write the disk cannot take is refused before it starts, and any failure leaves the old file
    untouched and raises StorageError."""
    path = Path(path)
    ensure_space(path, len(data))
    tmp = path.with_name(f".{path.name}.spikeep-tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
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
    replace_atomically(path, text.encode())


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
    """torch.save through an atomic replace (serialised in memory first, so its size is known)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    replace_atomically(path, buf.getvalue())


def save_figure_atomic(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically (a crash never leaves half a picture) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    replace_atomically(path, buf.getvalue())
    return path
