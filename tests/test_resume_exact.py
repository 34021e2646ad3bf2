"""A resumed run is the uninterrupted run, file by file (issue 32): not only its weights but metrics.csv's
values, summary.json, best.pt, checkpoint.pt (optimizer, scheduler, generators, running epoch statistics,
history) and train.log's epoch lines. Only what measures time or names the process may differ. The
checks are shown to fail when a resume drops any one part of the training state."""
import csv
import json
import re

import pytest
import torch

from conftest import REPO, crash_at_update
from spikeep.training.train_state import TrainState
from spikeep.training.checkpoint_files import load_checkpoint
from spikeep.training.epochs import EpochStats
from spikeep.training.trainer import train
from spikeep.training.validation import load_config

QUICK = REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"
# 12 batches per epoch, a checkpoint every 5: a crash at the 18th update resumes at epoch 2, batch 5,
# mid-epoch, with epoch 2's running statistics, the momentum buffers and the halved cosine lr to restore.
TINY = ["data.subset=300", "model.hidden=[32]", "train.batch_size=25", "dynamics.T1=15", "dynamics.T2=5",
        "train.checkpoint_every=5", "train.epochs=2"]
CRASH_AT = 18

# what may differ between two runs of the same config: wall-clock times, the run's random id and folder
TIMES = {"seconds", "train_seconds", "started"}
NAMES = {"run_id", "command"}  # the command line names the run folder


def _differences(a, b, where=""):
    """Every place where two checkpoint / JSON structures differ, times and run ids left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: keys {sorted(set(a) ^ set(b))}"] if a.keys() != b.keys() else []
        for k in a.keys() & b.keys():
            if k not in TIMES | NAMES:
                out += _differences(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if torch.is_tensor(a) or torch.is_tensor(b):
        ok = torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype \
            and torch.equal(a, b)
        return [] if ok else [f"{where}: tensors differ"]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def _metrics(path):
    rows = list(csv.DictReader(path.open()))
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def _epoch_lines(path):
    """train.log's epoch lines without their time stamps and durations."""
    lines = [line.split(" ", 2)[2] for line in path.read_text().splitlines()]
    lines = [line for line in lines if re.match(r"epoch \d+: ", line)]
    return [re.sub(r"\| [0-9.]+ s \|", "| s |", line) for line in lines]


def folder_differences(ref, run):
    """Every difference between two run folders that a bitwise resume must not make."""
    files = {p.name for p in ref.iterdir() if not p.name.startswith(".")}
    out = [f"files {sorted(files ^ {p.name for p in run.iterdir() if not p.name.startswith('.')})}"] \
        if files != {p.name for p in run.iterdir() if not p.name.startswith(".")} else []
    for name in sorted(files):
        a, b = ref / name, run / name
        if not b.exists():
            continue
        if name.endswith(".pt"):
            out += _differences(load_checkpoint(a), load_checkpoint(b), name)
        elif name.endswith(".json"):
            out += _differences(json.loads(a.read_text()), json.loads(b.read_text()), name)
        elif name == "metrics.csv":
            out += _differences(_metrics(a), _metrics(b), name)
        elif name == "train.log":
            out += _differences(_epoch_lines(a), _epoch_lines(b), name)
        elif name.endswith(".h5"):
            out += _h5_differences(a, b, name)
        elif name == "curves.png":
            continue  # drawn from metrics.csv (compared above); its bytes hold no state of their own
        else:
            out += [] if a.read_bytes() == b.read_bytes() else [f"{name}: bytes differ"]
    return out


def _h5_differences(a, b, name):
    """Every dataset of two HDF5 files, by name and content (the files' bytes depend on how they were
    written: a resumed trace file is a copy)."""
    import h5py
    import numpy as np

    def datasets(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        return out

    da, db = datasets(a), datasets(b)
    out = [f"{name}: datasets {sorted(set(da) ^ set(db))}"] if da.keys() != db.keys() else []
    return out + [f"{name}/{k}: differs" for k in sorted(da.keys() & db.keys())
                  if not np.array_equal(da[k], db[k])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref") / "run"
    train(load_config(QUICK, TINY), folder, progress=False, echo=False)
    return folder


# a resume that forgets one part of the state, as a wrong restore() would
DROPS = {
    "epoch_stats": lambda st: setattr(st, "stats", EpochStats()),
    "optimizer_state": lambda st: st.opt.state.clear(),
    "scheduler": lambda st: st.sched.load_state_dict(
        type(st.sched)(torch.optim.SGD([torch.zeros(1)], lr=st.opt.defaults["lr"]), T_max=2).state_dict()),
    "step_rng": lambda st: st.step_gen.manual_seed(12345),
    "history": lambda st: setattr(st, "history", []),
    "best": lambda st: setattr(st, "best", {"test_acc": -1.0, "epoch": 0}),
}


def resumed_run_differences(folder, reference, monkeypatch, drop=None):
    """Crash a run mid-epoch 2, resume it (dropping `drop` from the restored state if given) and list
    what differs from the uninterrupted run: the restored state against the checkpoint it was read
    from (a round trip), and every file of the two folders."""
    restore = crash_at_update(monkeypatch, CRASH_AT)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(QUICK, TINY), folder, progress=False, echo=False)
    restore()
    ck = load_checkpoint(folder / "checkpoint.pt")
    assert (ck["epoch"], ck["batch"]) == (1, 5), "the crash must land mid-epoch 2"
    assert ck["epoch_stats"]["seen"] > 0 and ck["optimizer"]["state"], "nothing to restore"
    round_trip, real = [], TrainState.restore

    def restore_and_compare(self, ckpt, path):
        real(self, ckpt, path)
        if drop is not None:
            DROPS[drop](self)
        state = _state_of(self)
        round_trip.extend(_differences({k: ckpt[k] for k in state}, state, "restored"))

    monkeypatch.setattr(TrainState, "restore", restore_and_compare)
    train(None, folder, resume=True, progress=False, echo=False)
    monkeypatch.setattr(TrainState, "restore", real)
    return round_trip, folder_differences(reference, folder)


def _state_of(st):
    """TrainState.checkpoint's entries but the config (which only names the run)."""
    class _Cfg:
        @staticmethod
        def to_dict():
            return {}
    out = st.checkpoint(_Cfg)
    out.pop("config")
    return out


def test_resume_mid_epoch_reproduces_every_file_of_the_run(tmp_path, reference, monkeypatch):
    round_trip, files = resumed_run_differences(tmp_path / "run", reference, monkeypatch)
    assert round_trip == [], round_trip
    assert files == [], files


@pytest.mark.parametrize("drop", sorted(DROPS))
def test_a_resume_that_drops_state_is_caught(tmp_path, reference, monkeypatch, drop):
    """The comparison above can fail: a resume that forgets any one part of the state shows up."""
    round_trip, files = resumed_run_differences(tmp_path / "run", reference, monkeypatch, drop)
    assert round_trip, f"dropping {drop} went unnoticed by the round trip"
    if drop in ("epoch_stats", "optimizer_state", "scheduler", "step_rng", "history"):
        assert files, f"dropping {drop} left every file as the uninterrupted run's"
