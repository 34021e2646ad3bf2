"""Checkpoint files (checkpoint.pt, best.pt): written atomically, loaded with weights_only=True and
checked (format, run id, names, shapes, finite values) before anything is restored; every problem is a
CheckpointError naming the file."""
from __future__ import annotations

from pathlib import Path

import torch

from .files import save_torch_atomic

CHECKPOINT_FORMAT = "spikeep-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and why."""


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


