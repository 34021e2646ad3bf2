"""Run folders: everything a training run writes, written so that a crash loses nothing already
written, and read back safely; and the folder's safety before anything is written into it.

    runs/<config name>/<YYYYmmdd-HHMMSS>/
        config.json    the resolved config (what `--resume` and `evaluate` read)
        env.json       versions, device, git commit, command line, world size
        metrics.csv    epoch, train/test loss and accuracy, learning rate, seconds
        summary.json   best and final values
        checkpoint.pt  the latest training state (model, optimizer, scheduler, RNGs, position)
        best.pt        the weights with the best test accuracy so far
        curves.png     train/test curves, redrawn each epoch
        train.log      the log

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over
the old one, so a `kill -9` at any moment leaves either the old or the new file, never half of one.
Checkpoints load with torch.load(weights_only=True) and are checked before anything is restored.

The folder's safety: a usable path, never a second run on top of a first one (moved aside on
request, never deleted), and one writer at a time.

    new_run_dir(name, base)       a fresh runs/<name>/<timestamp> folder
    check_run_dir(path, overwrite)
                                  the path can hold a run folder (not a file, no symlink loop, names short
                                  enough), else RunFolderError naming the problem
    refuse_existing_run(path, overwrite)
                                  a folder that holds files is refused, or with overwrite moved aside to
                                  PATH.replaced-<time> (returned)
    RunLock(path)                 an advisory lock (flock on PATH/.spikeep.lock) held while a run writes;
                                  the kernel releases it when the process dies, kill -9 included, so it is
                                  never stale; a second writer is refused with the holder's pid

Where a training run starts: its folder made (or refused) and locked, or a stopped run's config and
checkpoint read back for --resume (refusing, and touching nothing, a folder that cannot be resumed),
and what the stop message says about the last checkpoint.

    open_run_dir(cfg, run_dir, resume, overwrite, base_dir, locks)
                                  (process 0) the folder made, or found for a resume, and locked;
                                  config.json written
    resumable(run_dir)            the config and checkpoint of a folder to resume, or an error
    last_checkpoint_words(ck, run_dir)
                                  how large the last checkpoint's weights are, and where the best ones are
"""
from __future__ import annotations

import errno
import fcntl
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch

from ..config import Config, read_json_config
from ..core.network import EqNetwork
from .checkpoint_files import CheckpointError, check_run_id, check_state_dict, load_checkpoint
from .files import write_json_atomic
from .validation import config_from_dict

LOCK_NAME = ".spikeep.lock"
# the folder this process writes now, the last one it wrote, and the progress bar drawn now on the terminal's
# current line (trainer._EpochBar); read by cli's signal handlers for their one line
ACTIVE: dict = {"dir": None, "last": None, "bar": None}


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (bad path, holds a run, another writer)."""


def check_run_dir(path, overwrite: bool = False) -> Path:
    """Refuse paths that cannot hold a run folder, before anything is created; with `overwrite`, also
    those that cannot be moved aside (the current folder, one above it, a name ending in '.' or '..')."""
    if str(path).strip() == "":
        raise RunFolderError("--run-dir is empty; give a folder for the run (or leave --run-dir out: "
                             "runs/<config name>/<time>)")
    raw, path = str(path), Path(path)
    try:
        max_name = os.pathconf(path.anchor or "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        max_name = 255
    for part in path.parts:
        if len(os.fsencode(part)) > max_name:
            raise RunFolderError(f"--run-dir {str(path)[:80]}...: the name {part[:40]}... is {len(os.fsencode(part))} "
                                 f"bytes long, more than this file system allows ({max_name})")
    if len(os.fsencode(str(path.absolute()))) >= 4096:
        raise RunFolderError(f"--run-dir {str(path)[:80]}...: the path is longer than the system allows (4096 bytes)")
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunFolderError(f"--run-dir {path}: a symbolic link loop; give a real folder") from None
        if e.errno == errno.ENOTDIR:
            raise RunFolderError(f"--run-dir {path}: a part of the path is not a folder") from None
        raise RunFolderError(f"--run-dir {path}: cannot be used ({e.strerror})") from None
    except RuntimeError as e:  # Python < 3.13 reports some loops this way
        raise RunFolderError(f"--run-dir {path}: {e}; give a real folder") from None
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--run-dir {path}: exists and is not a folder (a {_kind(path)}); give a folder")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RunFolderError(f"--run-dir {path}: {parent} is not a folder")
    if not os.access(parent if not path.exists() else path, os.W_OK | os.X_OK):
        raise RunFolderError(f"--run-dir {path}: {parent if not path.exists() else path} is not writable")
    if overwrite:
        _refuse_moving_aside(raw)
    return path


def _refuse_moving_aside(raw: str) -> None:
    """--overwrite moves the folder aside: not the folder the command runs in, nor one above it (that would
    move the caller's own files), nor a path named by '.' or '..' (no name to move it to)."""
    path = Path(raw)
    last = raw.rstrip("/").rsplit("/", 1)[-1]
    here = Path.cwd().resolve()
    target = path.resolve()
    if last in (".", ".."):
        what = f"named by {last!r}"
    elif target == here:
        what = "the current folder"
    elif target in here.parents:
        what = "a folder above the current one"
    else:
        return
    raise RunFolderError(f"--run-dir {raw!r} with --overwrite: {target} is {what}, and --overwrite moves a run "
                         f"folder aside whole; give the run folder by its own name (e.g. --run-dir runs/x); "
                         f"nothing was changed")


def _kind(p: Path) -> str:
    import stat

    m = p.lstat().st_mode
    return ("regular file" if stat.S_ISREG(m) else "FIFO" if stat.S_ISFIFO(m) else "socket" if stat.S_ISSOCK(m)
            else "device" if stat.S_ISCHR(m) or stat.S_ISBLK(m) else "symbolic link" if stat.S_ISLNK(m) else "file")


def _contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)


def refuse_existing_run(path: Path, overwrite: bool = False) -> Optional[Path]:
    """A folder that holds anything (a run, or a user's files) is not written by a new run: refused, or
    with overwrite moved aside whole (returns where to). An empty folder is fine."""
    if not path.is_dir():
        return None
    held = _contents(path)
    if not held:
        return None
    if not overwrite:
        shown = ", ".join(held[:8]) + (", ..." if len(held) > 8 else "")
        what = "holds a run" if "config.json" in held else "is not empty"
        resume = (f"continue it with `spikeep train --resume {path}`, "
                  if (path / "checkpoint.pt").is_file() else "")
        raise RunFolderError(f"--run-dir {path} {what} ({shown}); nothing was changed. {resume[:1].upper()}{resume[1:]}"
                             f"{'c' if resume else 'C'}hoose another --run-dir, or pass --overwrite to move it "
                             f"aside (to {path.name}.replaced-<time>, nothing is deleted)")
    with RunLock(path):  # not while another process writes it
        pass
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    k = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{k}")
        k += 1
    os.rename(path, aside)
    return aside


class RunLock:
    """flock(LOCK_EX | LOCK_NB) on the folder itself and on PATH/.spikeep.lock, which holds the holder's
    pid: deleting the file while a run writes does not let a second process in (the folder's lock holds)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.fd: Optional[int] = None
        self.dir_fd: Optional[int] = None

    def _refuse(self, holder: str) -> RunFolderError:
        return RunFolderError(f"{self.folder} is being written by another spikeep process (pid {holder}); "
                              f"nothing was changed. Wait for it to end, or stop it first")

    @staticmethod
    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            return False

    def acquire(self) -> "RunLock":
        p = self.folder / LOCK_NAME
        dir_fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        if not self._try_lock(dir_fd):
            os.close(dir_fd)
            try:
                holder = p.read_text(errors="replace").strip() or "unknown"
            except OSError:
                holder = f"unknown: its {LOCK_NAME} was deleted"
            raise self._refuse(holder) from None
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        if not self._try_lock(fd):  # an older spikeep holding the file's lock only
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            fcntl.flock(dir_fd, fcntl.LOCK_UN)
            os.close(dir_fd)
            raise self._refuse(holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd, self.dir_fd = fd, dir_fd
        ACTIVE["dir"] = ACTIVE["last"] = self.folder
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        if self.dir_fd is not None:
            fcntl.flock(self.dir_fd, fcntl.LOCK_UN)
            os.close(self.dir_fd)
            self.dir_fd = None
            if ACTIVE["dir"] == self.folder:
                ACTIVE["dir"] = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def new_run_dir(name: str, base: str | Path = "runs") -> Path:
    """A fresh folder runs/<name>/<timestamp> (suffixed if two runs start in the same second)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(base) / name / stamp
    k = 1
    while path.exists():
        path = Path(base) / name / f"{stamp}-{k}"
        k += 1
    path.mkdir(parents=True)
    return path


def open_run_dir(cfg: Config, run_dir: Optional[Path], resume: bool, overwrite: bool, base_dir,
                  locks: list) -> Path:
    """(process 0) The run folder made, or found for a resume, and locked; config.json written."""
    if resume:
        locks.append(RunLock(run_dir).acquire())
        return run_dir
    if run_dir is None:
        run_dir = new_run_dir(cfg.name, base_dir)
    else:
        aside = refuse_existing_run(run_dir, overwrite)
        if aside is not None:
            print(f"spikeep: the run that was in {run_dir} was moved to {aside}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    locks.append(RunLock(run_dir).acquire())
    refuse_existing_run(run_dir)  # nothing came in between (another writer that got here first)
    write_json_atomic(run_dir / "config.json", cfg.to_dict())
    return run_dir


def last_checkpoint_words(ck: Path, run_dir: Path) -> str:
    """What the last checkpoint of a stopped run holds: finite weights can still be far off (a run that
    diverges passes through weights of 1e30 before they overflow), so say how large they are and where
    the best weights are."""
    try:
        state = load_checkpoint(ck)["model"]
        largest = max(float(v.abs().max()) for v in state.values() if torch.is_tensor(v) and v.numel())
    except Exception:  # noqa: BLE001 (the words are a courtesy: never hide the divergence itself)
        return f"The last checkpoint is {ck}."
    best = run_dir / "best.pt"
    where = f"; the best weights are in {best}" if best.is_file() else ""
    if largest > 1e6:
        return (f"The last checkpoint, {ck}, holds weights up to {largest:.3g}: the run was already diverging "
                f"when it was written, so resuming it would diverge again (lower the learning rates){where}.")
    return f"The last good checkpoint is {ck} (largest weight {largest:.3g}){where}."


def resumable(run_dir: Path) -> tuple[Path, Config, dict]:
    """The config and checkpoint of a run folder to resume, refusing (and touching nothing) a folder
    without a usable checkpoint or with one that belongs to another run."""
    cfg_path = run_dir / "config.json"
    if not run_dir.is_dir() or not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a spikeep run folder (no config.json)")
    cfg = config_from_dict(read_json_config(cfg_path), str(cfg_path))
    ck = run_dir / "checkpoint.pt"
    if ck.exists() and not ck.is_file():
        raise CheckpointError(f"{ck} is not a regular file (a {_kind(ck)}), so it cannot be a checkpoint; "
                                   f"nothing was changed")
    if not ck.is_file():
        there = ", ".join(sorted(p.name for p in run_dir.iterdir())) or "nothing"
        raise CheckpointError(
            f"{run_dir}: no checkpoint.pt to resume from (the folder holds {there}); nothing was changed. "
            f"A run killed before its first checkpoint cannot be resumed: start it anew with "
            f"`spikeep train CONFIG` (checkpoints are written every epoch and every train.checkpoint_every "
            f"iterations)")
    ckpt = load_checkpoint(ck)
    check_run_id(ck, ckpt, cfg.run_id, run_dir)
    with torch.device("meta"):  # the weights fit the config's network: refused before the folder is locked
        check_state_dict(ck, ckpt["model"], EqNetwork(cfg.model))
    return run_dir, cfg, ckpt
