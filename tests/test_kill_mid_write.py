"""kill -9 in the middle of writing a checkpoint, twice (issue 32; README, "Guarantees"): each kill lands
while half of the new checkpoint is on disk in its temporary file, the old checkpoint.pt stays whole,
the temporary file is cleared by the next start, and two resumes end with every file of the run
folder as an uninterrupted run writes it (weights, optimizer, metrics.csv values, summary.json, best.pt)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, kill_when
from spikeep.training.checkpoint_files import load_checkpoint
from test_resume_exact import folder_differences

SETS = ["data.subset=300", "model.hidden=[32]", "train.batch_size=25", "dynamics.T1=15", "dynamics.T2=5",
        "train.checkpoint_every=2", "train.epochs=2"]

# The child runs spikeep's CLI with one change: its n-th write of checkpoint.pt puts half of the bytes
# into the very temporary file the atomic write uses, flushes them, leaves a marker and waits, so the
# parent's kill -9 lands mid-write (the real writer, spikeep.training.files.replace_atomically, does every other write).
CHILD = r"""
import os, sys, time
from pathlib import Path
import spikeep.training.files as files

stall_at, marker = int(os.environ["STALL_AT"]), Path(os.environ["STALL_MARKER"])
real, seen = files.replace_atomically, {"n": 0}

def replace_atomically(path, data):
    path = Path(path)
    if path.name == "checkpoint.pt":
        seen["n"] += 1
        if seen["n"] == stall_at:
            tmp = path.with_name(f".{path.name}.spikeep-tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            marker.write_text(str(tmp))
            while True:
                time.sleep(1)
    return real(path, data)

files.replace_atomically = replace_atomically

trace_at = int(os.environ.get("STALL_TRACE_AT", "0"))
if trace_at:  # or: the n-th append to a sample_delta dataset of traces.h5 is made, then the writer waits
    from spikeep.traces.writer import TraceRecorder
    real_append, appends = TraceRecorder._append, {"n": 0}

    def _append(d, rows):
        real_append(d, rows)
        if d.name.endswith("sample_delta"):
            appends["n"] += 1
            if appends["n"] == trace_at:
                marker.write_text(d.file.filename)
                while True:
                    time.sleep(1)

    TraceRecorder._append = staticmethod(_append)
from spikeep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(args, stall_at=0, marker=None, trace_at=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STALL_AT": str(stall_at), "STALL_MARKER": str(marker or ""),
           "STALL_TRACE_AT": str(trace_at)}
    return subprocess.Popen([sys.executable, "-c", CHILD, "train", "--no-progress", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _sets():
    return [a for s in SETS for a in ("--set", s)]


def test_two_kills_mid_checkpoint_write_resume_to_the_uninterrupted_run(tmp_path):
    config = str(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml")
    ref = _cli([config, "--run-dir", str(tmp_path / "ref"), *_sets()])
    assert ref.wait() == 0, ref.stderr.read()[-2000:]
    run = tmp_path / "run"
    # 12 batches per epoch, a checkpoint every 2. 1st kill: the first run, writing its 3rd checkpoint
    # (epoch 1, batch 6; the one of batch 4 on disk); 2nd: the resumed run, writing its 6th (epoch 2,
    # batch 4; those of epoch 1's batches 6, 8, 10, its end, and epoch 2's batch 2 written)
    for n, (args, stall_at, on_disk) in enumerate((([config, "--run-dir", str(run), *_sets()], 3, (0, 4)),
                                                   (["--resume", str(run)], 6, (1, 2)))):
        marker = tmp_path / f"stalled{n}"
        before = (run / "checkpoint.pt").read_bytes() if n else None
        proc = _cli(args, stall_at, marker)
        assert kill_when(proc, marker.exists, timeout=300), \
            f"kill {n + 1}: the run ended before its checkpoint write: {proc.stderr.read()[-2000:]}"
        tmp = Path(marker.read_text())
        assert tmp.exists() and tmp.parent == run, "the kill must land mid-write (temporary file present)"
        ck = load_checkpoint(run / "checkpoint.pt")  # the previous checkpoint, whole
        assert (ck["epoch"], ck["batch"]) == on_disk
        if before is not None:
            assert (run / "checkpoint.pt").read_bytes() != before, "the resumed run wrote no checkpoint"
    done = _cli(["--resume", str(run)])
    assert done.wait() == 0, done.stderr.read()[-2000:]
    assert not [p.name for p in run.iterdir() if ".spikeep-tmp" in p.name], "a killed writer's file stayed"
    assert "resuming" in (run / "train.log").read_text()
    assert folder_differences(tmp_path / "ref", run) == []


TRACED = ["traces.enabled=true", "traces.sample=20", "traces.flush_every=4", "traces.full_every=7",
          "traces.probe=4"]


@pytest.mark.slow
def test_kill_mid_trace_write_resumes_to_the_uninterrupted_traces(tmp_path):
    """kill -9 while a flush of traces.h5 has appended some datasets' rows and not others (twice: the
    first run and the resumed one): the resumed file holds every iteration once, bit for bit the
    uninterrupted run's traces (README, Guarantees: 'also mid-write ... of the trace file')."""
    import numpy as np
    from spikeep import traces

    config = str(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml")
    sets = _sets() + [a for s in TRACED for a in ("--set", s)]
    ref = _cli([config, "--run-dir", str(tmp_path / "ref"), *sets])
    assert ref.wait() == 0, ref.stderr.read()[-2000:]
    run = tmp_path / "run"
    # the flushes of 4 rows: the 2nd layer's sample_delta append of the 3rd flush (first run) and of the
    # 3rd flush after the resume
    for n, args in enumerate(([config, "--run-dir", str(run), *sets], ["--resume", str(run)])):
        marker = tmp_path / f"stalled{n}"
        proc = _cli(args, marker=marker, trace_at=6)
        assert kill_when(proc, marker.exists, timeout=300), \
            f"kill {n + 1}: the run ended before the trace write: {proc.stderr.read()[-2000:]}"
    done = _cli(["--resume", str(run)])
    assert done.wait() == 0, done.stderr.read()[-2000:]
    assert not list(run.glob("traces.damaged-*")), "the killed trace file was set aside as damaged"
    with traces.open(tmp_path / "ref" / "traces.h5") as a, traces.open(run / "traces.h5") as b:
        assert b.iteration.tolist() == a.iteration.tolist() == list(range(1, len(a.iteration) + 1))
        assert b.snapshot_iteration.tolist() == a.snapshot_iteration.tolist()
        for name in a.layers:
            for item in ("sample_weight", "sample_delta", "sample_grad", "summary", "weight", "bias"):
                assert np.array_equal(getattr(a[name], item)[:], getattr(b[name], item)[:]), (name, item)
    assert folder_differences(tmp_path / "ref", run) == []
