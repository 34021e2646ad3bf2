"""kill -9 in the middle of writing a checkpoint, twice (issue 32; README, "Guarantees"): each kill lands
while half of the new checkpoint is on disk in its temporary file, the old checkpoint.pt stays whole,
the temporary file is cleared by the next start, and two resumes end with every file of the run
folder as an uninterrupted run writes it (weights, optimizer, metrics.csv values, summary.json, best.pt)."""
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, kill_when
from spikeep.checkpoint_files import load_checkpoint
from test_resume_exact import folder_differences

SETS = ["data.subset=300", "model.hidden=[32]", "train.batch_size=25", "dynamics.T1=15", "dynamics.T2=5",
        "train.checkpoint_every=2", "train.epochs=2"]

# The child runs spikeep's CLI with one change: its n-th write of checkpoint.pt puts half of the bytes
# into the very temporary file the atomic write uses, flushes them, leaves a marker and waits, so the
# parent's kill -9 lands mid-write (the real writer, spikeep.files.replace_atomically, does every other write).
CHILD = r"""
import os, sys, time
from pathlib import Path
import spikeep.files as files

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
from spikeep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(args, stall_at=0, marker=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STALL_AT": str(stall_at), "STALL_MARKER": str(marker or "")}
    return subprocess.Popen([sys.executable, "-c", CHILD, "train", "--no-progress", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _sets():
    return [a for s in SETS for a in ("--set", s)]


def test_two_kills_mid_checkpoint_write_resume_to_the_uninterrupted_run(tmp_path):
    config = str(REPO / "models" / "quickstart.toml")
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
