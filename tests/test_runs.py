"""Run folders: files, resume after kill -9 (bitwise), corrupt checkpoints, divergence, evaluate,
data-parallel training with 2 gloo processes (issue 3, acceptance a)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, kill_when
from spikeep.cli import main
from spikeep.validation import load_config
from spikeep.build import build_network, make_optimizer, make_scheduler
from spikeep.evaluation import evaluate_run
from spikeep.checks import DivergenceError
from spikeep.trainer import train
from spikeep.checkpoint_files import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint

RUN_FILES = {"config.json", "env.json", "metrics.csv", "summary.json", "checkpoint.pt", "best.pt", "curves.png",
             "train.log"}
TINY = ["train.epochs=3", "data.subset=600", "model.hidden=[64]", "train.batch_size=25", "dynamics.T1=25",
        "dynamics.T2=8", "train.checkpoint_every=2"]


def tiny_config(*extra):
    return load_config(REPO / "models" / "quickstart.toml", TINY + list(extra))


def weights(run_dir, name="checkpoint.pt"):
    return load_checkpoint(run_dir / name)["model"]


def test_run_folder_has_every_file(tmp_path):
    r = train(tiny_config("train.epochs=2"), tmp_path / "run", progress=False, echo=False)
    assert RUN_FILES <= {p.name for p in (tmp_path / "run").iterdir()}
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds,steps_per_batch,steps_free,steps_nudged,steps_inference" and len(lines) == 3
    steps = [float(v) for v in lines[1].split(",")[-4:]]
    assert steps == [25 + 2 * 8, 25, 8, 25]  # per batch T1 + 2 T2 (symmetric EP, no early stop); free; nudged; test
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_done"] == 2
    assert summary["best_test_acc"] == max(h["test_acc"] for h in r.history)
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["versions"]["norse"] == "1.1.0" and env["threads"] == torch.get_num_threads()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["hidden"] == [64]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch 2: train acc" in (tmp_path / "run" / "train.log").read_text()
    # evaluate reads the folder back and finds the best epoch's accuracy
    ev = evaluate_run(tmp_path / "run")
    assert ev["test_acc"] == pytest.approx(summary["best_test_acc"])


def _spawn_train(run_dir, *args):
    cmd = [sys.executable, "-m", "spikeep.cli", "train", "--no-progress", *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _checkpoint_rewritten(ckpt, times):
    """A condition: checkpoint.pt has been (re)written `times` times since the first call."""
    seen = {"n": 0, "last": None}

    def cond():
        m = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        if m is not None and m != seen["last"]:
            seen["n"], seen["last"] = seen["n"] + 1, m
        return seen["n"] >= times
    return cond


@pytest.mark.slow
def test_resume_after_kill_gives_bitwise_identical_weights(tmp_path):
    cfg_args = ["--set", "data.subset=600", "--set", "model.hidden=[64]", "--set", "train.batch_size=25",
                "--set", "dynamics.T1=25", "--set", "dynamics.T2=8", "--set", "train.checkpoint_every=2",
                "--set", "train.epochs=3", "--set", "estimator.name=random_sign"]
    cfg_path = str(REPO / "models" / "quickstart.toml")
    ref = tmp_path / "ref"
    assert _spawn_train(ref, cfg_path, "--run-dir", str(ref), *cfg_args).wait() == 0
    run = tmp_path / "killed"
    killed = 0
    # first run, then two resumes, each killed mid-way (after different numbers of checkpoints)
    for attempt, changes in enumerate((3, 7)):
        args = ([cfg_path, "--run-dir", str(run), *cfg_args] if attempt == 0 else ["--resume", str(run)])
        killed += kill_when(_spawn_train(run, *args), _checkpoint_rewritten(run / "checkpoint.pt", changes))
    assert killed >= 1, "the run finished before it could be killed: make it longer"
    done = _spawn_train(run, "--resume", str(run))
    assert done.wait() == 0, done.stderr.read()
    a, b = weights(ref), weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # metrics are not duplicated by the resumes
    epochs = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]


def test_corrupt_or_foreign_checkpoint_is_rejected_and_nothing_touched(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config("train.epochs=1"), run, progress=False, echo=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    good = before["checkpoint.pt"]
    cases = {
        b"this is not a checkpoint": "cannot be read as a spikeep checkpoint",
        good[: len(good) // 2]: "cannot be read as a spikeep checkpoint",
    }
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    cases[foreign.read_bytes()] = "not a spikeep checkpoint"
    wrong = load_checkpoint(run / "checkpoint.pt")
    wrong["model"]["synapses.0.weight"] = torch.zeros(3, 3)
    torch.save(wrong, foreign)
    cases[foreign.read_bytes()] = "synapses.0.weight has shape"
    for data, message in cases.items():
        (run / "checkpoint.pt").write_bytes(data)
        assert main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(run / "checkpoint.pt") in err
        after = {p.name: p.read_bytes() for p in run.iterdir()}
        assert {k: v for k, v in after.items() if k != "checkpoint.pt"} == \
               {k: v for k, v in before.items() if k != "checkpoint.pt"}


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_divergence_stops_the_run_naming_layer_and_iteration(tmp_path):
    # identity activation with large weights: the free phase explodes to inf/NaN
    cfg = tiny_config("model.loss=mse", "model.activation=identity", "model.init_scale=30.0", "dynamics.T1=200",
                      "train.checkpoint_every=1")
    with pytest.raises(DivergenceError, match=r"NaN or inf in the state of layer dense\d at epoch 1, iteration 1"):
        train(cfg, tmp_path / "run", progress=False, echo=False)
    # a run that diverges later keeps its last good checkpoint
    cfg = tiny_config("model.loss=mse", "train.lrs=[1e3, 1e3]", "train.checkpoint_every=1", "model.activation=identity",
                      "model.init_scale=0.05", "dynamics.T1=30")
    with pytest.raises(DivergenceError, match=r"at epoch \d+, iteration \d+") as e:
        train(cfg, tmp_path / "run2", progress=False, echo=False)
    it = int(str(e.value).split("iteration ", 1)[1].split(";")[0])
    ck = load_checkpoint(tmp_path / "run2" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    largest = max(float(v.abs().max()) for v in ck["model"].values())
    # finite is not good: the message says how large the last checkpoint's weights are
    assert it >= 2 and ("already diverging" in str(e.value) if largest > 1e6 else
                        "last good checkpoint is" in str(e.value)), (largest, str(e.value))
    assert f"{largest:.3g}" in str(e.value)
    assert (ck["epoch"], ck["batch"]) == (0, it - 1)
    assert "NaN or inf" in (tmp_path / "run2" / "train.log").read_text()


def test_cosine_schedule_after_t_max_climbs_again():
    """The paper's CosineAnnealingLR(T_max=100, eta_min=1e-5) run for 120 epochs: at epoch 100 the
    rate is eta_min, then it rises along the cosine (closed form), epoch 120 runs at ~8.6 % of the base rate."""
    cfg = load_config(REPO / "models" / "cifar10_ep_symmetric_ce.toml")
    net = build_network(cfg)
    opt = make_optimizer(net, cfg)
    sched = make_scheduler(opt, cfg)
    lrs = []
    for _ in range(cfg.train.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    import math
    closed = lambda t: 1e-5 + (0.25 - 1e-5) * (1 + math.cos(math.pi * t / 100)) / 2
    assert lrs[100] == pytest.approx(1e-5, rel=1e-6)
    assert lrs[119] == pytest.approx(closed(119), rel=1e-6)
    assert lrs[119] == pytest.approx(0.02162, rel=1e-3) and lrs[119] > lrs[110] > lrs[100]


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path):
    over = ["--set", "dynamics.dtype=float64", "--set", "train.epochs=1", "--set", "data.subset=200",
            "--set", "model.hidden=[32]", "--set", "train.batch_size=32", "--set", "estimator.name=random_sign",
            "--set", "dynamics.T1=15", "--set", "dynamics.T2=5", "--set", "data.crop_padding=2",
            "--set", "data.hflip=true"]
    cfg = str(REPO / "models" / "quickstart.toml")
    single = tmp_path / "single"
    r = subprocess.run([sys.executable, "-m", "spikeep.cli", "train", cfg, "--no-progress", "--run-dir",
                        str(single), *over], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    double = tmp_path / "double"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "spikeep.cli", "train", cfg, "--no-progress", "--run-dir", str(double), *over],
                       cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((double / "env.json").read_text())["world_size"] == 2
    a, b = weights(single), weights(double)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-12)
