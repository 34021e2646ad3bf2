"""Nothing lost, ever (issue 21): a run folder is never written by a second run, one writer per folder,
SIGINT / SIGTERM at any moment end with one line, library and GPU failures are not called bad input,
values that would overflow and paths that cannot hold a folder are refused before anything exists."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, crash_at_update
from spikeep.training.validation import load_config
from spikeep.cli import main
from spikeep.training.run_folder import LOCK_NAME, RunFolderError, RunLock
from spikeep.training.trainer import train
from spikeep.training.checkpoint_files import load_checkpoint, save_checkpoint

QUICK = REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"
TINY = ["data.subset=200", "model.hidden=[16]", "train.batch_size=25", "dynamics.T1=10", "dynamics.T2=3",
        "train.checkpoint_every=2", "train.epochs=1"]


def tree_hash(folder: Path) -> dict:
    """Every file under folder (names, sizes and contents), symlinks as their targets."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def cli(*args):
    return main(["train", str(QUICK), "--no-progress", *args, *sum((["--set", o] for o in TINY), [])])


def test_a_finished_run_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "r"
    assert cli("--run-dir", str(run)) == 0
    before = tree_hash(tmp_path)
    assert cli("--run-dir", str(run), "--set", "train.epochs=2") == 2
    err = capsys.readouterr().err
    assert "holds a run" in err and f"--resume {run}" in err and "--overwrite" in err
    assert tree_hash(tmp_path) == before  # nothing changed, train.log included
    # a folder of a user's own files is not a run folder either
    own = tmp_path / "mine"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    assert cli("--run-dir", str(own)) == 2
    assert "is not empty" in capsys.readouterr().err and (own / "notes.txt").read_text() == "mine"
    # --overwrite moves the old run aside, whole, and deletes nothing
    assert cli("--run-dir", str(run), "--overwrite") == 0
    assert "was moved to" in capsys.readouterr().err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.replaced-")]
    assert len(aside) == 1
    old = {k: v for k, v in before.items() if k.startswith("r/")}
    assert {k.replace("r/", f"{aside[0].name}/", 1): v for k, v in old.items()} == \
        {k: v for k, v in tree_hash(tmp_path).items() if k.startswith(aside[0].name + "/")}
    assert (run / "config.json").is_file()
    # an empty folder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("--run-dir", str(empty)) == 0


def test_one_writer_per_folder_names_the_holder(tmp_path, monkeypatch):
    run = tmp_path / "r"
    restore = crash_at_update(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(QUICK, TINY), run, progress=False, echo=False)
    restore()
    before = tree_hash(run)
    with RunLock(run):  # another process would hold it: flock locks are per open file
        pid = (run / LOCK_NAME).read_text().strip()
        with pytest.raises(RunFolderError, match=f"another spikeep process \\(pid {pid}\\)"):
            train(run_dir=run, resume=True, progress=False, echo=False)
    assert {k: v for k, v in tree_hash(run).items() if k != LOCK_NAME} == \
        {k: v for k, v in before.items() if k != LOCK_NAME}
    train(run_dir=run, resume=True, progress=False, echo=False)  # free again


@pytest.mark.slow
def test_two_resumes_of_one_folder_one_is_refused(tmp_path, monkeypatch):
    run = tmp_path / "r"
    restore = crash_at_update(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(QUICK, TINY + ["train.epochs=3", "data.subset=600"]), run, progress=False, echo=False)
    restore()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "spikeep.cli", "train", "--resume", str(run), "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], (codes, outs)
    refused = next(o for p, o in zip(procs, outs) if p.returncode == 2)
    assert "another spikeep process (pid" in refused[1]


@pytest.mark.slow
def test_sigint_and_sigterm_at_random_moments_end_with_one_line(tmp_path):
    """Signals at random moments, startup (imports) included: one line, exit 130 / 143, no traceback,
    and the folder is either absent, or holds a run that resumes (or refuses cleanly: no checkpoint).
    Six signals at random in the first 3 s (startup: imports, config, data), eight at random within
    1.5 s after the run's first checkpoint (mid-run: each must say --resume, and the resume must
    finish); a run that ends before its signal fails the test (the run is made long enough)."""
    rng = random.Random(0)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    resumed = 0
    for i in range(14):
        run = tmp_path / f"r{i}"
        sig = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
        mid_run = i >= 6
        cmd = [sys.executable, "-m", "spikeep.cli", "train", str(QUICK), "--run-dir", str(run), "--no-progress",
               *sum((["--set", o] for o in TINY + ["train.epochs=15"]), [])]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        if mid_run:
            deadline = time.time() + 120
            while not (run / "checkpoint.pt").exists() and p.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            time.sleep(rng.uniform(0.0, 3.0) if i > 1 else 0.05 * i)  # the first two in the first instants
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        assert p.returncode != 0, f"signal {i}: the run finished before it (make the run longer)"
        want = 130 if sig == signal.SIGINT else 143
        if p.returncode == -sig:  # the interpreter had not started running Python code: nothing was written
            assert not mid_run and err == "" and not run.exists()
            continue
        assert p.returncode == want, (p.returncode, err)
        assert "Traceback" not in err and "Traceback" not in out
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) <= 1 and (not lines or "stopped by" in lines[0]), err
        if mid_run:
            assert lines and "--resume" in lines[0], (i, err)
        if lines and "--resume" in lines[0]:
            assert str(run) in lines[0]
            r = subprocess.run([sys.executable, "-m", "spikeep.cli", "train", "--resume", str(run), "--no-progress"],
                               capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
            assert r.returncode == 0, r.stderr
            resumed += 1
    assert resumed >= 8, f"only {resumed} signals landed mid-run"


def test_gpu_and_library_failures_are_not_bad_input(tmp_path, capsys, monkeypatch):
    import spikeep.training.learners as ln

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(ln.RateEP, "estimate", oom)
    assert cli("--run-dir", str(tmp_path / "a")) == 5
    err = capsys.readouterr().err
    assert "ran out of memory" in err and "batch_size" in err and "Traceback" not in err
    assert "Traceback" in (tmp_path / "a" / "train.log").read_text()

    def kernel(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(ln.RateEP, "estimate", kernel)
    assert cli("--run-dir", str(tmp_path / "b")) == 6
    err = capsys.readouterr().err
    assert "GPU / CUDA library call failed" in err and "not a config mistake" in err and "bad input" not in err
    assert "illegal memory access" in (tmp_path / "b" / "train.log").read_text()


@pytest.mark.parametrize("item,key", [("estimator.beta=1e300", "estimator.beta"),
                                      ("train.lrs=[1e300,1e300]", "train.lrs"),
                                      ("traces.sample=0", "traces.sample"),
                                      ("model.init_scale=1e30", "model.init_scale")])
def test_overflowing_values_are_refused_before_anything_exists(tmp_path, capsys, item, key):
    assert cli("--run-dir", str(tmp_path / "r"), "--set", item) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unusable_run_dirs_are_refused_before_anything_runs(tmp_path, capsys):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    long = tmp_path / ("x" * 300)
    before = tree_hash(tmp_path)
    for path, message in ((loop, "symbolic link loop"), (a_file, "not a folder (a regular file)"),
                          (long, "more than this file system allows"), (a_file / "sub", "part of the path is not a folder")):
        assert cli("--run-dir", str(path)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert tree_hash(tmp_path) == before


def test_missing_data_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPIKEEP_DATA", str(tmp_path / "nothing"))
    cfg = REPO / "spikeep" / "config" / "shipped" / "cifar10_cpu_sym_ce.toml"
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(cfg), "--no-progress"]) == 2
    assert "cifar10" in capsys.readouterr().err.lower()
    assert not (tmp_path / "runs").exists()


def test_fifo_checkpoint_says_what_it_is(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    restore = crash_at_update(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(QUICK, TINY), run, progress=False, echo=False)
    restore()
    (run / "checkpoint.pt").unlink()
    os.mkfifo(run / "checkpoint.pt")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is not a regular file (a FIFO)" in err and "no checkpoint.pt" not in err


def test_trace_file_stays_near_its_data_size_with_checkpoints_every_iteration(tmp_path):
    import h5py

    sizes = {}
    for every in (0, 1, 3):
        run = tmp_path / f"ck{every}"
        over = TINY + ["traces.enabled=true", "traces.sample=200", "traces.flush_every=10", "train.epochs=2",
                       f"train.checkpoint_every={every}", "traces.full_each_epoch=false"]
        train(load_config(QUICK, over), run, progress=False, echo=False)
        raw = 0
        with h5py.File(run / "traces.h5", "r") as f:
            f.visititems(lambda n, o: None if not isinstance(o, h5py.Dataset) else None)

            def add(name, obj):
                nonlocal raw
                if isinstance(obj, h5py.Dataset):
                    raw += obj.size * obj.dtype.itemsize
            f.visititems(add)
        sizes[every] = ((run / "traces.h5").stat().st_size, raw)
    for every, (size, raw) in sizes.items():
        assert size <= 1.2 * raw + 96 * 1024, sizes  # data plus HDF5's fixed metadata
    assert sizes[1][0] <= 1.3 * sizes[0][0], sizes


def test_divergence_message_says_when_the_last_checkpoint_is_already_far_off(tmp_path):
    from spikeep.training.run_folder import last_checkpoint_words

    run = tmp_path / "r"
    train(load_config(QUICK, TINY), run, progress=False, echo=False)
    ck = load_checkpoint(run / "checkpoint.pt")
    assert "last good checkpoint" in last_checkpoint_words(run / "checkpoint.pt", run)
    ck["model"]["synapses.0.weight"].fill_(3e37)
    save_checkpoint(run / "checkpoint.pt", ck)
    words = last_checkpoint_words(run / "checkpoint.pt", run)
    assert "already diverging" in words and "3e+37" in words and "best.pt" in words


def test_spiking_evaluation_loss_comes_from_the_spiking_network(tmp_path, capsys):
    """The spiking twin's loss is its own (from spike rates), close to the rate network's, not a copy;
    the command prints enough digits to show the difference."""
    from spikeep.training.evaluation import evaluate_run

    run = tmp_path / "r"
    train(load_config(QUICK, ["train.epochs=1", "data.subset=500"]), run, progress=False, echo=False)
    rate, spk = evaluate_run(run), evaluate_run(run, neurons="spiking")
    assert rate["test_loss"] != spk["test_loss"] and abs(rate["test_loss"] - spk["test_loss"]) < 0.05
    assert main(["evaluate", str(run), "--neurons", "spiking"]) == 0
    assert f"loss {spk['test_loss']:.6f}" in capsys.readouterr().out


def test_the_lock_holds_when_its_file_is_deleted(tmp_path):
    """issue 29, item 8: the lock is on the folder itself, so deleting .spikeep.lock while a run writes
    does not let a second process in, and the refusal says why it cannot name the pid."""
    from spikeep.training.run_folder import LOCK_NAME, RunFolderError, RunLock

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from spikeep.training.run_folder import RunLock; l = RunLock(Path(sys.argv[1])).acquire(); "
                               "print('locked', flush=True); time.sleep(60)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
            RunLock(run).acquire()
        (run / LOCK_NAME).unlink()
        with pytest.raises(RunFolderError, match=f"pid unknown: its {LOCK_NAME} was deleted"):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run):  # free again once the holder is gone
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())
