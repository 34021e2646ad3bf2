"""Run folders: files, resume after kill -9 (bitwise), corrupt checkpoints, divergence, evaluate,
data-parallel training with 2 gloo processes (issue 3, acceptance a)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, kill_when
from spikeep.cli import main
from spikeep.training.validation import load_config
from spikeep.training.build import build_network, make_optimizer, make_scheduler
from spikeep.training.evaluation import evaluate_run
from spikeep.training.divergence import DivergenceError
from spikeep.training.trainer import train
from spikeep.training.checkpoint_files import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint

RUN_FILES = {"config.json", "env.json", "metrics.csv", "summary.json", "checkpoint.pt", "best.pt", "curves.png",
             "train.log"}
TINY = ["train.epochs=3", "data.subset=600", "model.hidden=[64]", "train.batch_size=25", "dynamics.T1=25",
        "dynamics.T2=8", "train.checkpoint_every=2"]


def tiny_config(*extra):
    return load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", TINY + list(extra))


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
    cfg_path = str(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml")
    ref = tmp_path / "ref"
    assert _spawn_train(ref, cfg_path, "--run-dir", str(ref), *cfg_args).wait() == 0
    run = tmp_path / "killed"
    killed = 0
    # first run, then two resumes, each killed mid-way (after different numbers of checkpoints)
    for attempt, changes in enumerate((3, 7)):
        args = ([cfg_path, "--run-dir", str(run), *cfg_args] if attempt == 0 else ["--resume", str(run)])
        killed += kill_when(_spawn_train(run, *args), _checkpoint_rewritten(run / "checkpoint.pt", changes))
    assert killed == 2, f"{killed} of 2 kills landed: the run finished before it could be killed (make it longer)"
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
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "cifar10_ep_symmetric_ce.toml")
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


DP_OVER = ["dynamics.dtype=float64", "train.epochs=2", "data.subset=200", "model.hidden=[32]",
           "estimator.name=random_sign", "dynamics.T1=15", "dynamics.T2=5", "data.crop_padding=2", "data.hflip=true",
           "model.dropout=0.2", "train.checkpoint_minutes=0"]


def _launch(run_dir, processes: int, batch: int, extra=(), resume=False, **popen):
    """spikeep train (or --resume) under torchrun with `processes` gloo processes of `batch` samples each."""
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
            if processes > 1 else [sys.executable])
    if resume:
        args = ["-m", "spikeep.cli", "train", "--no-progress", "--resume", str(run_dir)]
    else:
        sets = [a for o in [*DP_OVER, f"train.batch_size={batch}", *extra] for a in ("--set", o)]
        args = ["-m", "spikeep.cli", "train", str(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"), "--no-progress",
                "--run-dir", str(run_dir), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(head + args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


@pytest.mark.slow
def test_two_and_three_gloo_processes_equal_one_on_the_same_global_batch(tmp_path):
    """1 process x 12 samples, 2 x 6 and 3 x 4: the same global batches (each process holds, augments and
    masks only its shard; random numbers keyed by sample), float64 weights equal up to summation order."""
    runs = {}
    for n, batch in ((1, 12), (2, 6), (3, 4)):
        proc = _launch(tmp_path / f"p{n}", n, batch)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        runs[n] = weights(tmp_path / f"p{n}")
        if n > 1:
            env = json.loads((tmp_path / f"p{n}" / "env.json").read_text())
            assert env["world_size"] == n
            log = (tmp_path / f"p{n}" / "train.log").read_text()
            assert f"{n} process(es) x batch {batch} = global batch 12" in log
    for n in (2, 3):
        for k in runs[1]:
            torch.testing.assert_close(runs[n][k], runs[1][k], rtol=1e-10, atol=1e-12)
    # the sharded evaluation reduces to the whole test set's numbers
    acc = [json.loads((tmp_path / f"p{n}" / "summary.json").read_text())["final_test_acc"] for n in (1, 2, 3)]
    assert acc[0] == pytest.approx(acc[1], abs=1e-9) and acc[0] == pytest.approx(acc[2], abs=1e-9)


def _descendants(pid: int) -> list[int]:
    """Every process below pid (Linux /proc), found before any is killed."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                kids = []
            out += kids
            todo += kids
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_killed_two_process_run_resumes_bitwise_without_a_shared_folder(tmp_path):
    """A 2-process run killed (kill -9 of the whole launch) after its first checkpoint resumes to the
    very weights of an uninterrupted one. On resume process 1 is given a folder that does not exist on
    its 'machine': only process 0 reads the run folder; config and checkpoint reach process 1 by broadcast."""
    import signal
    import time

    extra = ["train.checkpoint_every=3"]
    ref = _launch(tmp_path / "ref", 2, 6, extra)
    _, err = ref.communicate(timeout=900)
    assert ref.returncode == 0, err[-3000:]
    run = tmp_path / "run"
    proc = _launch(run, 2, 6, extra)
    deadline = time.time() + 600
    while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first checkpoint"
    for pid in [*_descendants(proc.pid), proc.pid]:  # the workers too (torchrun may give them sessions of their own)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()
    assert not (run / "summary.json").exists() or json.loads((run / "summary.json").read_text())["epochs_done"] < 2
    port, procs = _free_port(), []
    for rank, folder in ((0, run), (1, tmp_path / "not-on-this-machine" / "run")):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "spikeep.cli", "train", "--no-progress", "--resume",
                                       str(folder)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    # process 0 reports the final test accuracy once; process 1 (no up-to-date history) reports nothing
    assert outs[0].count("test accuracy:") == 1 and "test accuracy:" not in outs[1], outs
    assert not (tmp_path / "not-on-this-machine").exists()
    assert "resuming" in (run / "train.log").read_text()
    a, b = weights(tmp_path / "ref"), weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 2
    # and every file: the train loss and accuracy of the resumed epoch count every process's samples once
    from test_resume_exact import folder_differences
    assert folder_differences(tmp_path / "ref", run) == []


@pytest.mark.slow
def test_a_refusal_in_process_zero_stops_every_process(tmp_path):
    """Process 0 refuses the resume (no checkpoint in the folder): the other process stops too, with
    process 0's reason, instead of waiting forever at the next collective."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml").to_dict()))
    port, procs = _free_port(), []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "spikeep.cli", "train", "--no-progress", "--resume",
                                       str(tmp_path / "run")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert "no checkpoint.pt to resume from" in errs[0]
    assert "process 0 stopped" in errs[1] and "no checkpoint.pt" in errs[1]
