"""Run folders: everything a training run writes, written so that a crash loses nothing already
written, and read back safely.

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
"""
from __future__ import annotations

import csv
import io
import logging
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch

from .files import save_figure_atomic, save_torch_atomic, write_json_atomic, write_text_atomic

CHECKPOINT_FORMAT = "spikeep-checkpoint/1"
METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds",
                 "steps_per_batch",  # relaxation (simulation) steps of all phases, mean per training batch
                 "steps_free", "steps_nudged",  # mean steps of a free / of one nudged phase in training
                 "steps_inference",  # mean steps of the free phase at test time
                 "spikes_per_inference", "synops_per_inference",  # spiking networks
                 # spiking networks with a chip profile: ESTIMATES from the profile's literature figures
                 "energy_estimate_inference_J", "energy_estimate_learning_J",
                 "energy_estimate_source",  # citation, table, kind of number (pre-silicon estimate, ...)
                 "energy_estimate_leaves_out",  # counted events the profile has no figure for ("" = none)
                 "energy_figures_found_in_source"]  # False: a figure was not found in the source it is attributed to


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and why."""


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


def save_checkpoint(path: Path, obj: dict) -> None:
    """Write a checkpoint (or best.pt) atomically: a crash leaves the old file or the new one."""
    save_torch_atomic(path, obj)


def load_checkpoint(path: Path, kind: str = "checkpoint") -> dict:
    """Load a spikeep checkpoint safely (weights_only=True); any problem names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {kind} file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or holding objects that weights_only refuses
        raise CheckpointError(f"{path}: cannot be read as a spikeep {kind} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT or "model" not in obj:
        raise CheckpointError(f"{path}: not a spikeep {kind} (expected format {CHECKPOINT_FORMAT!r})")
    return obj


def check_run_id(path: Path, ckpt: dict, run_id: str, folder: Path) -> None:
    """A checkpoint must belong to the run of its folder (the run id of config.json); runs from before
    run ids (empty id) are not checked."""
    theirs = str((ckpt.get("config") or {}).get("run_id", "") or "")
    if run_id and theirs != run_id:
        raise CheckpointError(f"{path}: belongs to another run (run id {theirs or 'none'}, this folder's is "
                              f"{run_id}); it was copied here from elsewhere. Nothing was changed: put this "
                              f"run's own checkpoint back, or start a new run")


def check_state_dict(path: Path, state: dict, model: torch.nn.Module) -> None:
    """The stored weights must fit the model exactly: same names, same shapes, finite."""
    own = model.state_dict()
    if set(state) != set(own):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise CheckpointError(f"{path}: weights do not match the model (missing {missing}, unexpected {extra})")
    for k, v in state.items():
        if not torch.is_tensor(v) or v.shape != own[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(getattr(v, 'shape', ()))}, "
                                  f"the model needs {tuple(own[k].shape)}")
        if not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: {k} holds NaN or inf")


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


def write_metrics(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    fields = [f for f in METRIC_FIELDS if any(f in h for h in history)] or METRIC_FIELDS[:8]
    fields += sorted({k for h in history for k in h if k.startswith("angle_")})  # unidirectional layers
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    write_text_atomic(path, buf.getvalue())


def summary(history: list[dict], total_seconds: float, epochs: int) -> dict[str, Any]:
    best = max(history, key=lambda h: h["test_acc"])
    last = history[-1]
    return {"epochs_done": last["epoch"], "epochs": epochs, "finished": last["epoch"] == epochs,
            "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
            "final_test_acc": last["test_acc"], "final_test_loss": last["test_loss"],
            "final_train_acc": last["train_acc"], "final_train_loss": last["train_loss"],
            "train_seconds": total_seconds}


def write_epoch_files(run_dir: Path, history: list[dict], epochs: int, title: str) -> None:
    """metrics.csv, summary.json and curves.png of the epochs so far."""
    write_metrics(run_dir / "metrics.csv", history)
    write_json_atomic(run_dir / "summary.json", summary(history, sum(h["seconds"] for h in history), epochs))
    plot_curves(run_dir / "curves.png", history, title)
    if any(k.startswith("angle_") for k in history[-1]):
        plot_angles(run_dir / "angles.png", history, title)


def plot_angles(path: Path, history: list[dict], title: str) -> None:
    """Angle between forward and feedback weights per layer and epoch (Laborieux et al. 2021, Fig. 5)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key in sorted(k for k in history[-1] if k.startswith("angle_")):
        ax.plot(ep, [h.get(key, float("nan")) for h in history], "o-", label=key[len("angle_"):])
    ax.set_xlabel("epoch")
    ax.set_ylabel("angle(w_f, w_b) (degrees)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def plot_curves(path: Path, history: list[dict], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["test_loss"] for h in history], "s-", label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, [100 - h["train_acc"] for h in history], "o-", label="train")
    b.plot(ep, [100 - h["test_acc"] for h in history], "s-", label="test")
    b.set_xlabel("epoch")
    b.set_ylabel("error (%)")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def get_logger(run_dir: Optional[Path], enabled: bool = True, echo: bool = True) -> logging.Logger:
    """A logger writing to run_dir/train.log (appending, so a resumed run keeps its history)."""
    log = logging.getLogger(f"spikeep.run.{run_dir}.{time.time_ns()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not enabled:
        log.addHandler(logging.NullHandler())
        return log
    if run_dir is not None:
        fh = logging.FileHandler(Path(run_dir) / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)
    if echo:
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    return log


def log_traceback_to_file(log: logging.Logger, message: str) -> None:
    """The current exception's traceback into train.log only (the console gets cli's one line)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, sys.exc_info())
    for h in log.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)
