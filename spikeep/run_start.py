"""Where a training run starts: its folder made (or refused) and locked, or a stopped run's config and
checkpoint read back for --resume (refusing, and touching nothing, a folder that cannot be resumed),
and what the stop message says about the last checkpoint."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch

from .checkpoint_files import CheckpointError, check_run_id, check_state_dict, load_checkpoint
from .config import Config, read_json_config
from .core.network import EqNetwork
from .files import write_json_atomic
from .runfolder import RunLock, _kind, new_run_dir, refuse_existing_run
from .validation import config_from_dict


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
