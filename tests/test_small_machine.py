"""Runs that respect a small machine (issue 22, item 5): CPU threads chosen by rule, a test subset,
and checkpoints by the clock so a killed long run always has something to resume."""
import json

import pytest
import torch

from conftest import REPO
from spikeep.training.torch_settings import choose_threads
from spikeep.training.validation import load_config
from spikeep.training.train_state import TrainState
from spikeep.cli import main
from spikeep.training.trainer import train

QUICK = REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"
SMALL = ["data.subset=200", "model.hidden=[16]", "train.batch_size=20", "dynamics.T1=10", "dynamics.T2=4",
         "train.epochs=2"]


def test_threads_follow_the_rule(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(load_config(QUICK, ["train.threads=3"])) == (3, "train.threads")
    assert choose_threads(load_config(QUICK)) == (1, "auto: no conv layers")
    conv = load_config(REPO / "spikeep" / "config" / "shipped" / "mnist_conv.toml")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(6)), raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (0.2, 0.0, 0.0))  # an idle 6-core machine: all 6
    assert choose_threads(conv) == (6, "auto: conv layers, 6 cores, 0 busy by the 1-minute load")
    monkeypatch.setattr("os.getloadavg", lambda: (2.6, 0.0, 0.0))  # 3 cores busy: the other 3
    assert choose_threads(conv)[0] == 3
    monkeypatch.setattr("os.getloadavg", lambda: (64.0, 0.0, 0.0))  # a machine busy on every core: one thread
    assert choose_threads(conv)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(load_config(QUICK))[1] == "OMP_NUM_THREADS"  # the user's setting wins
    with pytest.raises(Exception, match="train.threads"):
        load_config(QUICK, ["train.threads=-1"])


def test_run_logs_its_threads_and_evaluates_a_test_subset(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        train(load_config(QUICK, SMALL + ["train.epochs=1", "data.test_subset=300"]), tmp_path / "run",
                  progress=False, echo=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "(200 train, 300 test drawn at random)" in log and "1 CPU thread (auto: no conv layers)" in log
    # the same 300 test images every time (fixed by data.subset_seed), and not just the first 300
    from spikeep.data import prepare_data
    cfg = load_config(QUICK, ["data.test_subset=300"])
    a, b, full = prepare_data(cfg.data).test, prepare_data(cfg.data).test, prepare_data(load_config(QUICK).data).test
    assert torch.equal(a.x, b.x) and a.y.shape[0] == 300 and not torch.equal(a.x, full.x[:300])
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "300 samples" in out and "CPU thread" in out
    with pytest.raises(Exception, match="test_subset"):
        load_config(QUICK, ["data.test_subset=-5"])


class Crash(Exception):
    pass


def test_clock_checkpoints_let_a_killed_run_resume_bitwise(tmp_path, monkeypatch):
    """checkpoint_every = 0 (epoch ends only) but a clock interval: a run that dies mid-epoch resumes
    from the last clock checkpoint and ends with the very weights of an uninterrupted run."""
    ref = train(load_config(QUICK, SMALL + ["train.checkpoint_minutes=0"]), tmp_path / "ref", progress=False,
                echo=False)
    saves, original = [], TrainState.save

    def save_then_maybe_die(self, path, cfg, *rest):
        original(self, path, cfg, *rest)
        saves.append((self.epoch, self.batch))
        if len(saves) == 4:  # the 4th checkpoint: mid-epoch 1 (3 by the clock before it)
            raise Crash()

    monkeypatch.setattr(TrainState, "save", save_then_maybe_die)
    monkeypatch.setattr("spikeep.training.trainer.time.monotonic", iter(range(0, 10**9, 61)).__next__)  # 61 s per reading
    cfg = load_config(QUICK, SMALL + ["train.checkpoint_minutes=1"])
    with pytest.raises(Crash):
        train(cfg, tmp_path / "run", progress=False, echo=False)
    assert saves == [(0, 1), (0, 2), (0, 3), (0, 4)]  # by the clock, mid-epoch; checkpoint_every is 0
    monkeypatch.setattr(TrainState, "save", original)
    res = train(None, tmp_path / "run", resume=True, progress=False, echo=False)
    for (n, p), (_, q) in zip(ref.net.state_dict().items(), res.net.state_dict().items()):
        assert torch.equal(p, q), n
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_done"] == 2


def test_default_checkpoints_by_the_clock_are_on():
    cfg = load_config(QUICK)
    assert cfg.train.checkpoint_minutes == 10.0 and cfg.train.checkpoint_every == 0
