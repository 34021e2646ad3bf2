"""Reliability (issue 12): what is refused, what survives a full disk or a damaged file, and that a
refused input leaves every file already written byte-identical (folders hashed before and after)."""
import errno
import hashlib
import json
import os
import subprocess
import sys
import time

from pathlib import Path

import h5py
import pytest

from conftest import REPO, crash_at_update
from spikeep import traces
from spikeep.training.validation import load_config
from spikeep.cli import main
from spikeep.training.files import StorageError, write_json_atomic
from spikeep.training.trainer import train
from spikeep.training.checkpoint_files import load_checkpoint

QUICK = REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"
TINY = ["data.subset=300", "model.hidden=[32]", "train.batch_size=25", "dynamics.T1=15", "dynamics.T2=5",
        "train.checkpoint_every=2", "train.epochs=2"]
TRACED = TINY + ["traces.enabled=true", "traces.sample=20", "traces.flush_every=3"]


def hashes(folder, skip=()):
    """SHA-256 of every file in the folder (not the hidden temporaries a write in progress holds)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in skip and not p.name.startswith(".")}


def interrupted_run(folder, overrides=TRACED, at=7, monkeypatch=None):
    """A run stopped by a crash (KeyboardInterrupt) after `at` optimizer steps: checkpoints and traces
    are on disk, the run is not finished."""
    restore = crash_at_update(monkeypatch, at)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(QUICK, overrides), folder, progress=False, echo=False)
    restore()


# 1. resume of a folder without a checkpoint --------------------------------------------------------

def test_resume_without_checkpoint_is_refused_and_touches_nothing(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    interrupted_run(run, monkeypatch=monkeypatch)
    (run / "checkpoint.pt").unlink()
    before = hashes(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint.pt to resume from" in err and "traces.h5" in err and "start it anew" in err
    assert hashes(run) == before


# 2. damaged trace files ------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [2000, 0.5])
def test_truncated_trace_file_is_refused_at_once(tmp_path, capsys, monkeypatch, keep):
    run = tmp_path / "run"
    interrupted_run(run, monkeypatch=monkeypatch)
    data = (run / "traces.h5").read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    t0 = time.time()
    with pytest.raises(traces.TracesError, match="truncated"):
        traces.open(cut)
    assert main(["traces", "info", str(cut)]) == 2
    assert "truncated" in capsys.readouterr().err and time.time() - t0 < 10


def test_resume_moves_a_damaged_trace_file_aside_and_goes_on(tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupted_run(run, monkeypatch=monkeypatch)
    data = (run / "traces.h5").read_bytes()
    (run / "traces.h5").write_bytes(data[: len(data) // 2])
    damaged = hashlib.sha256((run / "traces.h5").read_bytes()).hexdigest()
    train(run_dir=run, resume=True, progress=False, echo=False)
    aside = list(run.glob("traces.damaged-*.h5"))
    assert len(aside) == 1 and hashlib.sha256(aside[0].read_bytes()).hexdigest() == damaged  # kept, unchanged
    with traces.open(run / "traces.h5") as t:  # a fresh file from the resumed iteration on
        assert t.n_rows() > 0 and list(t.iteration) == list(range(t.iteration[0], t.iteration[-1] + 1))
    assert "was damaged" in (run / "train.log").read_text()


def test_incomplete_trace_files_give_clear_errors(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    interrupted_run(run, monkeypatch=monkeypatch)
    for what, damage in (("layers", lambda f: f.__delitem__("layers")),
                         ("iteration", lambda f: f.__delitem__("iteration")),
                         ("weight_shape", lambda f: f["layers/dense0"].attrs.__delitem__("weight_shape"))):
        path = tmp_path / f"no_{what}.h5"
        path.write_bytes((run / "traces.h5").read_bytes())
        with h5py.File(path, "r+") as f:
            damage(f)
        for cmd in (["traces", "info", str(path)], ["traces", "export", str(path), "--layer", "dense0"]):
            assert main(cmd) == 2
            err = capsys.readouterr().err
            assert "damaged or incomplete spikeep trace file" in err and what in err and "Traceback" not in err


# 3. and 6. a full disk ---------------------------------------------------------------------------------

def test_disk_full_while_writing_traces(tmp_path, capsys, monkeypatch):
    from spikeep.traces.writer import TraceRecorder

    run = tmp_path / "run"
    real = TraceRecorder._append
    state = {"n": 0, "before": None}

    def full_disk(d, rows):
        state["n"] += 1
        if state["n"] == 35:  # in the middle of the 4th flush, after some datasets grew
            state["before"] = hashes(run, skip=("train.log", "traces.h5"))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(d, rows)

    monkeypatch.setattr(TraceRecorder, "_append", staticmethod(full_disk))
    cfg = load_config(QUICK, TRACED)
    with pytest.raises(StorageError, match=r"cannot write .*traces.h5: no space left on the device \(.* free"):
        train(cfg, run, progress=False, echo=False)
    monkeypatch.setattr(TraceRecorder, "_append", staticmethod(real))
    assert state["before"] is not None
    assert hashes(run, skip=("train.log", "traces.h5")) == state["before"]
    assert "no space left" in (run / "train.log").read_text()
    with traces.open(run / "traces.h5") as t:  # every row that is there is real: no zeros, no gaps
        n = t.n_rows()
        assert n > 0 and list(t.iteration) == list(range(1, n + 1))
        for lt in t:
            assert lt.sample_weight.shape[0] == n and (lt.sample_weight[:] != 0).any(axis=1).all()
    # the checkpoint left is good: the run resumes from it
    r = train(run_dir=run, resume=True, progress=False, echo=False)
    assert len(r.history) == 2


@pytest.mark.parametrize("how", ["seen before writing", "failing write"])
def test_disk_full_while_writing_a_checkpoint(tmp_path, capsys, monkeypatch, how):
    import spikeep.training.files as files

    run = tmp_path / "run"
    state = {"n": 0, "before": None}
    real_free, real_fsync = files.free_bytes, files.os.fsync

    def second_checkpoint(name):
        if "checkpoint.pt" not in name:
            return False
        state["n"] += 1
        if state["n"] == 2:
            state["before"] = hashes(run, skip=("train.log",))
            return True
        return False

    if how == "seen before writing":  # the free space check refuses the write
        monkeypatch.setattr(files, "free_bytes", lambda p: 2**20 if second_checkpoint(Path(p).name) else real_free(p))
    else:  # the disk fills up while the checkpoint is written
        def fsync(fd):
            if second_checkpoint(os.readlink(f"/proc/self/fd/{fd}")):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(fd)
        monkeypatch.setattr(files.os, "fsync", fsync)
    code = main(["train", str(QUICK), "--run-dir", str(run), "--no-progress", *sum((["--set", o] for o in TINY), [])])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 4
    assert "checkpoint.pt: no space left on the device" in err and "MiB" in err and "free" in err, err
    assert "no space left" in (run / "train.log").read_text()
    assert hashes(run, skip=("train.log",)) == state["before"]  # the last good checkpoint, untouched
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
    load_checkpoint(run / "checkpoint.pt")


# 4. a checkpoint of another run -------------------------------------------------------------------------

def test_checkpoint_of_another_run_is_refused(tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    interrupted_run(a, TINY, monkeypatch=monkeypatch)
    train(load_config(QUICK, TINY + ["train.lrs=[0.3, 0.05]"]), b, progress=False, echo=False)
    for name in ("checkpoint.pt", "best.pt"):
        if (a / name).exists():
            (a / name).unlink()
        (a / name).write_bytes((b / name).read_bytes())
    before = hashes(a)
    assert main(["train", "--resume", str(a)]) == 2
    assert "belongs to another run" in capsys.readouterr().err
    assert main(["evaluate", str(a)]) == 2
    assert "belongs to another run" in capsys.readouterr().err
    assert hashes(a) == before


# 5. an infinite loss is divergence; JSON stays strict ------------------------------------------------

def test_infinite_loss_is_divergence_and_json_stays_strict(tmp_path, capsys, monkeypatch):
    import spikeep.training.trainer as tr

    real = tr.make_optimizer

    def overflowing(net, cfg, *scale):  # learning rates of 1e36 (validation refuses them in a config): overflow
        opt = real(net, cfg, *scale)
        for g in opt.param_groups:
            g["lr"] = 1e36
        return opt

    monkeypatch.setattr(tr, "make_optimizer", overflowing)
    run = tmp_path / "run"
    code = main(["train", str(QUICK), "--run-dir", str(run), "--no-progress",
                 *sum((["--set", o] for o in TINY), [])])
    assert code == 3 and "loss is inf" in capsys.readouterr().err  # the training or the test loss
    for p in run.glob("*.json"):
        json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{p.name} holds {c}"))
    write_json_atomic(tmp_path / "x.json", {"a": float("inf"), "b": [float("nan"), 1.0]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.0]}


# 7. bad values, refused before anything is created ----------------------------------------------------

BAD_SETS = [
    ("train.lrs=[nan,0.05]", "train.lrs[0]: must be a finite number, got nan"),
    ("train.lrs=[inf,0.05]", "train.lrs[0]: must be a finite number, got inf"),
    ("train.momentum=nan", "train.momentum: must be a finite number"),
    ("train.seed=99999999999999999999", "train.seed: 99999999999999999999 is out of range"),
    ('dynamics.device="foo"', "dynamics.device: 'foo' is not a device"),
    ("model.input_shape=[1,28,27]", "model.input_shape [1, 28, 27] does not match the images"),
    ("foo.bar=1", "--set foo.bar=1: unknown key 'foo'"),
]


@pytest.mark.parametrize("item,message", BAD_SETS)
def test_bad_values_are_refused_before_a_run_folder_exists(tmp_path, capsys, item, message):
    assert main(["train", str(QUICK), "--runs", str(tmp_path / "runs"), "--set", item]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "runs").exists()


def test_unreadable_configs_name_the_file(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("name = 'caf\u00e9'\n".encode("latin-1"))
    assert main(["train", str(bad)]) == 2
    assert f"{bad}: not UTF-8 text" in capsys.readouterr().err
    assert main(["train", str(tmp_path)]) == 2
    assert "is a directory, not a config file" in capsys.readouterr().err
    run = tmp_path / "run"
    interrupted_run(run, TINY, monkeypatch=monkeypatch)
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[: len(text) // 2])
    before = hashes(run)
    for cmd in (["train", "--resume", str(run)], ["evaluate", str(run)]):
        assert main(cmd) == 2
        assert f"{run / 'config.json'}: damaged (not valid JSON" in capsys.readouterr().err
    assert hashes(run) == before


# 8. Ctrl-C ------------------------------------------------------------------------------------------

def test_ctrl_c_prints_one_line(tmp_path, capsys, monkeypatch):
    import spikeep.training.trainer as tr

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "train", interrupted)
    import spikeep.training.run_folder as rf

    rf.ACTIVE["last"] = None
    assert main(["train", str(QUICK), "--run-dir", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    # no folder was written: no resume hint (it would fail)
    assert "interrupted" in err and "--resume" not in err and "Traceback" not in err
    assert err.count("\n") == 1


# 9. stale temporary files ---------------------------------------------------------------------------

def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupted_run(run, monkeypatch=monkeypatch)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [run / f".checkpoint.pt.spikeep-tmp{dead.pid}", run / f".best.pt.spikeep-tmp{dead.pid}",
             run / f".traces.h5.spikeep-resume{dead.pid}"]
    live = run / f".checkpoint.pt.spikeep-tmp{os.getppid()}"  # a writer that still runs: left alone
    users = [run / f".mynotes.tmp{dead.pid}", run / f".checkpoint.pt.tmp{dead.pid}"]  # not spikeep's names
    for p in stale + [live] + users:
        p.write_bytes(b"x" * 1000)
    train(run_dir=run, resume=True, progress=False, echo=False)
    assert not any(p.exists() for p in stale) and live.exists() and all(p.exists() for p in users)
    assert not [p for p in run.iterdir() if p.name.startswith(".") and p not in [live] + users
                and p.name != ".spikeep.lock"]


# 10. trace file size does not depend on how often it is flushed --------------------------------------

def test_trace_file_size_does_not_grow_with_flushes(tmp_path):
    sizes = {}
    for every in (1, 10):
        run = tmp_path / f"flush{every}"
        train(load_config(QUICK, TINY + ["traces.enabled=true", "traces.full_each_epoch=false",
                                         f"traces.flush_every={every}"]), run, progress=False, echo=False)
        sizes[every] = (run / "traces.h5").stat().st_size
    assert sizes[1] < 1.5 * sizes[10], sizes


@pytest.mark.slow
def test_a_real_full_disk(tmp_path):
    """On a 12 MiB tmpfs (needs the right to mount; skipped without it) a run with traces fills the
    disk: it stops with exit 4 and one message, no traceback, and leaves files that all read back."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        run = disk / "run"
        r = subprocess.run([sys.executable, "-m", "spikeep.cli", "train", str(QUICK), "--no-progress", "--run-dir",
                            str(run), "--set", "traces.enabled=true", "--set", "train.checkpoint_every=20",
                            "--set", "train.epochs=3"], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 4, r.stderr
        assert "no space left on the device" in r.stderr and "Traceback" not in r.stderr
        assert "Exception ignored" not in r.stderr
        load_checkpoint(run / "checkpoint.pt")
        with traces.open(run / "traces.h5") as t:
            n = t.n_rows()
            assert n > 0 and list(t.iteration) == list(range(1, n + 1))
            for lt in t:
                assert (lt.sample_weight[:n] != 0).any(axis=1).all()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# issue 29: a config.json that is JSON but no table; triton without a GPU; --run-dir hints and paths;
# --resume with options that would change the run ----------------------------------------------------

@pytest.mark.parametrize("content", ["[1, 2, 3]", "null", '"hello"', "42"])
def test_a_config_json_that_is_not_a_table_names_the_file(tmp_path, capsys, monkeypatch, content):
    run = tmp_path / "run"
    interrupted_run(run, TINY, monkeypatch=monkeypatch)
    (run / "config.json").write_text(content)
    before = hashes(run)
    for cmd in (["train", "--resume", str(run)], ["evaluate", str(run)]):
        assert main(cmd) == 2  # an error message, no traceback
        err = capsys.readouterr().err
        assert f"{run / 'config.json'}: damaged (valid JSON, but" in err and "Traceback" not in err, err
    assert hashes(run) == before


def test_triton_engine_without_a_gpu_is_refused_before_the_run_folder(tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the Triton kernels can run")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    run = tmp_path / "run"
    for device in ("cpu", "auto"):
        assert main(["train", str(QUICK), "--set", "dynamics.engine=triton", "--device", device, "--run-dir",
                     str(run)]) == 2
        err = capsys.readouterr().err
        assert "dynamics.engine = 'triton'" in err and ("runs its kernels on a CUDA device" in err
                                                         or "needs the triton package" in err), err
        assert not run.exists()
    # spiking networks run their own simulator: the rate engine does not matter there
    load_config(QUICK, ["dynamics.engine=triton", 'model.neurons="spiking"'])
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's interpreter on the CPU: allowed (the tests use it)
    from spikeep.core.fused import triton_available

    if triton_available():
        load_config(QUICK, ["dynamics.engine=triton"])


def test_the_hint_after_a_refused_run_dir_keeps_the_paths_case(tmp_path, capsys):
    run = tmp_path / "MyRuns" / "Run_A"
    assert main(["train", str(QUICK), "--no-progress", "--run-dir", str(run), *sum((["--set", o] for o in TINY), [])]) == 0
    capsys.readouterr()
    assert main(["train", str(QUICK), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"Continue it with `spikeep train --resume {run}`" in err, err


@pytest.mark.parametrize("given", [".", "", "sub/..", "HERE", "ABOVE"])
def test_run_dirs_that_cannot_be_moved_aside_are_refused(tmp_path, capsys, monkeypatch, given):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    raw = {"HERE": str(work), "ABOVE": str(tmp_path)}.get(given, given)
    before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    assert main(["train", str(QUICK), "--run-dir", raw, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "error: --run-dir" in err and "Traceback" not in err, err
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")} == before  # no .spikeep.lock, nothing moved
    if given == "":
        assert main(["train", str(QUICK), "--run-dir", ""]) == 2  # empty, also without --overwrite
        assert "--run-dir is empty" in capsys.readouterr().err


def test_resume_refuses_options_that_would_change_the_run(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    interrupted_run(run, TINY, monkeypatch=monkeypatch)
    before = hashes(run)
    for extra in (["--device", "cuda"], ["--device", "cpu"], ["--run-dir", str(tmp_path / "other")], ["--overwrite"],
                  ["--runs", str(tmp_path / "elsewhere")], ["--set", "train.epochs=5"], [str(QUICK)]):
        assert main(["train", "--resume", str(run), *extra]) == 2
        err = capsys.readouterr().err
        named = "CONFIG" if extra == [str(QUICK)] else extra[0]
        assert "--resume continues a run in its own folder" in err and f"(got {named})" in err, (extra, err)
    assert hashes(run) == before and not (tmp_path / "other").exists() and not (tmp_path / "elsewhere").exists()
    with pytest.raises(ValueError, match="give no config"):
        train(load_config(QUICK, TINY), run, resume=True)


def test_a_process_other_than_0_shows_its_traceback_instead_of_pointing_to_train_log(monkeypatch, capsys):
    """issue 29, item 1: only process 0 writes train.log; a library failure in process 1 of a data-parallel
    run prints its own traceback instead of pointing to a file that holds none of it."""
    import spikeep.cli as cli

    def boom(args):
        raise RuntimeError("a failing kernel in process 1")

    monkeypatch.setattr(cli, "cmd_train", boom)
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["train", "quickstart"]) == 6
    err = capsys.readouterr().err
    assert "Traceback" in err and "a failing kernel in process 1" in err
    assert "process 1 writes no train.log" in err and "the traceback is in train.log" not in err
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", "quickstart"]) == 6
    err = capsys.readouterr().err
    assert "the traceback is in train.log" in err and "Traceback" not in err


def test_only_process_0_reports_the_final_test_accuracy(monkeypatch, capsys, tmp_path):
    """issue 29, item 1: process 1 of a resumed data-parallel run held the checkpoint's history only and
    printed a stale 'test accuracy' line; the report is process 0's alone (TrainResult.main)."""
    import spikeep.cli as cli
    import spikeep.training.trainer as tr

    for main, lines in ((False, 0), (True, 1)):
        monkeypatch.setattr(tr, "train", lambda *a, **k: tr.TrainResult(None, [{"test_acc": 48.5}], tmp_path, main))
        assert cli.main(["train", "quickstart"]) == 0
        assert capsys.readouterr().out.count("test accuracy: 48.50%") == lines
