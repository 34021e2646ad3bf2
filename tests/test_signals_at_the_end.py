"""SIGINT / SIGTERM at the end of a run and over a progress bar (issue 29, item 5): a signal after the
final line is answered with one line and 130 / 143, never a silent death by the signal (-2 / -15: the
interpreter's teardown answers no signal), and the run folder stays finished; with a progress bar on
the terminal, the stop message starts a line of its own instead of being glued to the bar's."""
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

import pytest

from conftest import REPO

QUICK = REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"
TINY = ["data.subset=200", "model.hidden=[16]", "train.batch_size=25", "dynamics.T1=10", "dynamics.T2=3",
        "train.epochs=1"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
FINISHED = {"best.pt", "checkpoint.pt", "config.json", "curves.png", "env.json", "metrics.csv", "summary.json",
            "train.log", ".spikeep.lock"}

# `python -m spikeep.cli ARGS`, sending itself SIG at one MOMENT of its end: as the final line is written;
# in the first exit handler to run (torch's, tqdm's, ... run after it); in the interpreter's teardown,
# when the modules are cleared (if the process gets there)
AT_THE_END = r"""
import atexit, os, runpy, signal, sys
moment, sig = sys.argv.pop(1), getattr(signal, sys.argv.pop(1))


def fire():
    os.kill(os.getpid(), sig)


class FinalLine:
    def __init__(self, out):
        self.out = out

    def write(self, text):
        n = self.out.write(text)
        if text.startswith("test accuracy"):
            fire()
        return n

    def __getattr__(self, name):
        return getattr(self.out, name)


class Teardown:
    def __del__(self, kill=os.kill, pid=os.getpid(), sig=sig):
        kill(pid, sig)


if moment == "final line":
    sys.stdout = FinalLine(sys.stdout)
teardown = Teardown() if moment == "teardown" else None
try:
    runpy.run_module("spikeep.cli", run_name="__main__", alter_sys=True)
finally:
    if moment == "exit handlers":
        atexit.register(fire)
"""


def sets(overrides: list[str]) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


@pytest.mark.parametrize("moment,sig", [("final line", "SIGINT"), ("exit handlers", "SIGTERM"),
                                        ("teardown", "SIGINT"), ("teardown", "SIGTERM")])
def test_a_signal_after_the_final_line_is_answered_and_the_run_stays_finished(tmp_path, moment, sig):
    run = tmp_path / "run"
    cmd = [sys.executable, "-c", AT_THE_END, moment, sig, "train", str(QUICK), "--run-dir", str(run),
           "--no-progress", *sets(TINY)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert r.returncode >= 0, f"killed silently by signal {-r.returncode} ({moment}); stderr: {r.stderr!r}"
    assert "test accuracy: " in r.stdout and f"(run folder {run})" in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    if moment == "teardown" and r.returncode == 0:  # the process ended before any teardown: nothing to answer
        assert r.stderr == ""
    else:
        assert r.returncode == (130 if sig == "SIGINT" else 143), (r.returncode, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert lines == [f"spikeep: stopped by {sig} after the run had finished: {run} is complete (nothing to "
                         f"resume)"], r.stderr
    assert {p.name for p in run.iterdir()} == FINISHED  # no temporaries left either
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_done"] == 1
    assert len((run / "metrics.csv").read_text().splitlines()) == 2


def read_until(fd: int, done, deadline: float) -> bytes:
    """What the pseudo-terminal's other end gets until done(seen) holds, its writers are gone, or the deadline."""
    seen = b""
    while not done(seen) and time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer has closed its end
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_the_stop_message_starts_a_line_of_its_own_after_a_progress_bar(tmp_path):
    """stderr a terminal, so the epoch's tqdm bar is drawn; SIGINT as soon as it is on the screen (the
    epoch lasts seconds): the message follows a newline, not the bar on the same line."""
    run = tmp_path / "run"
    master, slave = pty.openpty()
    termios.tcsetwinsize(slave, (24, 120))  # a new pseudo-terminal is 0 x 0: tqdm would draw a bar 0 wide
    cmd = [sys.executable, "-m", "spikeep.cli", "train", str(QUICK), "--run-dir", str(run),
           *sets(["train.epochs=1", "dynamics.T1=100"])]
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=ENV,
                             cwd=REPO)
    finally:
        os.close(slave)  # the child's copy is its own: the reads below end when it exits
    try:
        deadline = time.time() + 240
        seen = read_until(master, lambda s: b"%|" in s, deadline)  # tqdm: "epoch 1/1:   0%|   | 0/300 [..."
        assert b"%|" in seen and p.poll() is None, f"no progress bar while the run went on: {seen!r}"
        p.send_signal(signal.SIGINT)
        seen += read_until(master, lambda s: False, deadline)
        p.wait(timeout=60)
    finally:
        os.close(master)
        if p.poll() is None:  # a failed check above: the run is not left going on
            p.kill()
            p.wait()
    text = seen.decode(errors="replace")
    assert p.returncode == 130, (p.returncode, text)
    before, found, _ = text.partition("spikeep: stopped by SIGINT")
    assert found, text
    assert "epoch 1/1" in before, text
    assert before.endswith("\n"), f"glued to the progress bar's line: {before[-120:]!r}"



def test_an_error_mid_epoch_starts_a_line_of_its_own_after_a_progress_bar(tmp_path):
    """A run that diverges a few iterations into its epoch, its bar on a terminal: the error line must not
    be glued to the bar (the bar is closed, i.e. erased, before the error goes up)."""
    run = tmp_path / "run"
    diverging = ["model.loss=mse", "train.lrs=[1e3, 1e3]", "model.activation=identity", "model.init_scale=0.05",
                 "dynamics.T1=30", "data.subset=600", "model.hidden=[64]", "train.batch_size=25", "train.epochs=1"]
    master, slave = pty.openpty()
    termios.tcsetwinsize(slave, (24, 120))
    cmd = [sys.executable, "-m", "spikeep.cli", "train", str(QUICK), "--run-dir", str(run), *sets(diverging)]
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=ENV,
                             cwd=REPO)
    finally:
        os.close(slave)
    try:
        seen = read_until(master, lambda s: False, time.time() + 240)
        p.wait(timeout=60)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()
    text = seen.decode(errors="replace")
    assert p.returncode == 3, (p.returncode, text)  # divergence
    before, found, _ = text.partition("spikeep train: error:")
    assert found and "%|" in before, text  # the bar was drawn, then the error came
    on_screen = before.rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]  # what the cursor's line shows before the error
    assert on_screen.strip() == "", f"glued to the progress bar's line: {before[-160:]!r}"

# spikeep.cli.main called in-process (a notebook, a script), its SIGINT handler the caller's; the run faked
IN_PROCESS = r"""
import os, signal, sys
import spikeep.training.trainer as tr
from spikeep.cli import main

got = []
signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))


class FinalLine:
    def __init__(self, out):
        self.out = out

    def write(self, text):
        if text.startswith("test accuracy"):
            os.kill(os.getpid(), signal.SIGINT)
        return self.out.write(text)

    def __getattr__(self, name):
        return getattr(self.out, name)


tr.train = lambda cfg, run_dir, **kw: tr.TrainResult(None, [{"test_acc": 50.0}], run_dir)
real, sys.stdout = sys.stdout, FinalLine(sys.stdout)
code = main(["train", "quickstart", "--run-dir", sys.argv[1]])
sys.stdout = real
print(f"main returned {code}; the caller's handler got {got}")
"""


def test_in_process_a_signal_during_the_final_line_goes_to_the_callers_handler(tmp_path):
    """main() in-process ends the process at a signal while the command runs (as on the command line);
    one that comes as the final line is written waits for it and then goes to the caller's handler."""
    r = subprocess.run([sys.executable, "-c", IN_PROCESS, str(tmp_path / "run")], capture_output=True, text=True,
                       env=ENV, cwd=REPO, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.splitlines()[-1] == f"main returned 0; the caller's handler got [{int(signal.SIGINT)}]", r.stdout
    assert r.stderr == ""
