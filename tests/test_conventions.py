"""Command-line conventions: --version, `python -m spikeep`, the help text, no progress bars when stderr
is not a terminal, no traceback into a closed pipe; the package's license and metadata."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import tomllib

import pytest

from conftest import REPO

TINY = ["--set", "data.subset=100", "--set", "train.epochs=1", "--set", "model.hidden=[16]",
        "--set", "train.batch_size=20", "--set", "train.checkpoint_every=0"]


def spikeep(*args, cwd=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300, module="spikeep.cli"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, stdout=stdout, stderr=stderr,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_version_and_python_dash_m(tmp_path):
    r = spikeep("--version", cwd=tmp_path, module="spikeep")
    assert r.returncode == 0 and r.stdout.decode().startswith("spikeep ") and r.stdout.decode().split()[1][0].isdigit()
    r = spikeep("--help", cwd=tmp_path, module="spikeep")
    out = r.stdout.decode()
    assert r.returncode == 0 and out.startswith("usage: spikeep ")
    assert "Equilibrium Propagation simulator" in out and "FreeEquilibrium" not in out


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path):
    r = spikeep("train", "quickstart", *TINY, "--run-dir", str(tmp_path / "piped"))
    assert r.returncode == 0, r.stderr.decode()
    assert b"it/s" not in r.stderr and b"epoch 1/1" not in r.stderr and r.stderr == b""
    # on a terminal they are there
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns (a new one has 0)
    proc = subprocess.Popen([sys.executable, "-m", "spikeep.cli", "train", "quickstart", *TINY, "--run-dir",
                             str(tmp_path / "tty")], cwd=REPO, stdout=subprocess.DEVNULL, stderr=follower,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(follower)
    seen = b""
    try:
        while True:  # read while it runs (the terminal's buffer is small)
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the last writer closed its end
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        r = proc.wait(timeout=300)
    assert r == 0 and b"epoch 1/1" in seen, seen


def _into_a_closed_pipe(*args, cwd=None):
    """Run spikeep with stdout a pipe nobody reads any more (as `spikeep ... | head -1` after head exits)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return spikeep(*args, cwd=cwd, stdout=write_end)
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_quietly(tmp_path):
    r = _into_a_closed_pipe("--help", cwd=tmp_path)
    assert r.stderr == b"" and r.returncode in (0, 141)
    r = _into_a_closed_pipe("train", "quickstart", *TINY, "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.stderr == b"" and r.returncode == 141  # the log's console copy and the last line met the closed pipe
    assert "epoch 1: train acc" in (tmp_path / "run" / "train.log").read_text()  # the run itself went on


def test_export_into_a_closed_pipe_ends_quietly(tmp_path):
    """`spikeep export RUN OUT.nir | head -1`: no BrokenPipeError traceback."""
    pytest.importorskip("nir")
    run = tmp_path / "run"
    r = spikeep("train", "quickstart", *TINY, "--set", 'model.neurons="spiking"', "--set", "spiking.T1=20",
                "--set", "spiking.T2=10", "--set", "spiking.window=10", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr.decode()
    r = _into_a_closed_pipe("export", str(run), str(tmp_path / "net.nir"), "--approximate")
    assert b"Traceback" not in r.stderr and b"BrokenPipe" not in r.stderr and r.stderr == b""
    assert r.returncode == 141 and (tmp_path / "net.nir").is_file()


def test_license_and_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the spikeep authors" in text
    assert any(c.startswith("Programming Language :: Python :: 3") for c in meta["classifiers"])
    assert meta["urls"] and all(u.startswith("https://") for u in meta["urls"].values())


def test_the_readme_test_command_runs_the_fast_tests_and_slow_ones_are_asked_for(tmp_path):
    """`python -m pytest -q` (the README's command) leaves the slow tests out; `-m slow` selects them."""
    def collected(*args):
        r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args, "tests/test_runs.py"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return {line.split("::")[1] for line in r.stdout.splitlines() if "::" in line}

    fast, slow = collected(), collected("-m", "slow")
    assert fast and slow and not fast & slow
    assert "test_resume_after_kill_gives_bitwise_identical_weights" in slow
    assert fast | slow == collected("-m", "")  # together: every test


def test_ci_runs_the_readme_command_then_the_slow_tests_and_fails_on_any_failure(tmp_path):
    readme = (REPO / "README.md").read_text()
    command = readme.split("Run the tests", 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
    assert command == "python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text()
    assert f"# the README's test command: {command}" in ci and 'step "long tests" -q -m slow' in ci
    assert subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")]).returncode == 0
    # the step function with a stand-in for pytest: each exit status, 5 (nothing collected) included
    step = ci[ci.index("step() {"):ci.index("\n}\n", ci.index("step() {")) + 3]
    for rc, verdict in ((0, "passed"), (1, "FAILED (pytest exit 1)"), (5, "FAILED: no tests collected")):
        script = f"set -euo pipefail\npython() {{ return {rc}; }}\n{step}\nout=0; step demo -q || out=$?\necho \"rc=$out\""
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
        assert r.returncode == 0 and f"== demo: {verdict}" in r.stdout and f"rc={rc}" in r.stdout, r.stdout + r.stderr
