"""The configs ship inside the package (spikeep/config/shipped/) and are used by name from any folder:
`spikeep train quickstart`, `spikeep configs`; and (slow) the acceptance from a built wheel installed in
a fresh virtual environment, run in an empty folder."""
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO
from spikeep.cli import main
from spikeep.config import shipped_configs

TINY = ["--set", "data.subset=100", "--set", "train.epochs=1", "--set", "model.hidden=[16]",
        "--set", "train.checkpoint_every=0", "--no-progress"]


def test_configs_lists_the_shipped_configs_and_prints_one(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    names = sorted(p.stem for p in (REPO / "spikeep" / "config" / "shipped").glob("*.toml"))
    assert len(names) >= 20 and sorted(shipped_configs()) == names
    listed = [line.split()[0] for line in out.splitlines()[:len(names)]]
    assert listed == names
    assert re.search(r"^quickstart\s+Quick start: ", out, re.M)
    assert main(["configs", "quickstart"]) == 0
    assert capsys.readouterr().out == (REPO / "spikeep" / "config" / "shipped" / "quickstart.toml").read_text()
    assert main(["configs", "no_such"]) == 2
    assert "no shipped config named 'no_such'" in capsys.readouterr().err


def test_train_a_config_by_name_from_another_folder(tmp_path):
    r = subprocess.run([sys.executable, "-m", "spikeep.cli", "train", "quickstart", *TINY], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "runs" / "quickstart").iterdir())
    assert len(runs) == 1 and (runs[0] / "best.pt").is_file()
    r = subprocess.run([sys.executable, "-m", "spikeep.cli", "train", "nonesuch"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "nonesuch is neither a file nor the name of a shipped config" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "spikeep.cli", "train", "models/quickstart.toml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "give its name, quickstart" in r.stderr  # the old path says where it went


def test_the_old_folders_of_the_configs_say_where_they_went(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for old in ("models/quickstart.toml", "spikeep/configs/quickstart.toml"):
        assert main(["train", old]) == 2
        assert "give its name, quickstart" in capsys.readouterr().err, old


def test_a_file_in_the_folder_wins_over_a_shipped_name(tmp_path, monkeypatch):
    from spikeep.training.validation import load_config

    (tmp_path / "quickstart.toml").write_text('base = "' + str(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml")
                                              + '"\n[train]\nepochs = 7\n')
    monkeypatch.chdir(tmp_path)
    assert load_config("quickstart.toml").train.epochs == 7  # the file here
    assert load_config("quickstart").train.epochs == 10  # no file named "quickstart": the shipped config


def test_a_config_of_ones_own_starts_from_a_shipped_one_by_name(tmp_path):
    from spikeep.training.validation import load_config

    mine = tmp_path / "elsewhere" / "mine.toml"
    mine.parent.mkdir()
    mine.write_text('base = "quickstart.toml"\n[train]\nepochs = 2\n')
    cfg = load_config(mine)
    assert cfg.name == "mine" and cfg.train.epochs == 2 and cfg.data.name == "mnist-quickstart"


def test_the_configs_are_package_data():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["spikeep"]
    assert "config/shipped/*.toml" in data and "data/*.npz" in data and not (REPO / "models").exists()


@pytest.mark.slow
def test_a_built_wheel_works_from_an_empty_folder(tmp_path):
    """The acceptance: a wheel, installed into a fresh venv (system site packages for torch), used in an
    empty folder: --version, training a shipped config by name, python -m spikeep, the README's example."""
    whl, venv, empty = tmp_path / "whl", tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"

    def run(*cmd, cwd=empty):
        r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    # the copy of the sources: no build folder or egg-info of the checkout gets into the wheel
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "runs", "*.egg-info", "build", "__pycache__",
                                                             ".ci-venv", ".venv", ".pytest_cache"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", whl, cwd=src)
    run(sys.executable, "-m", "venv", "--system-site-packages", venv)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "--no-deps", next(whl.glob("spikeep-*.whl")))
    assert run(py, "-c", "import spikeep; print(spikeep.__file__)").startswith(str(venv))
    assert run(venv / "bin" / "spikeep", "--version").startswith("spikeep ")
    out = run(venv / "bin" / "spikeep", "train", "quickstart", "--set", "train.epochs=1")
    assert "test accuracy:" in out and (empty / "runs" / "quickstart").is_dir()
    assert "Equilibrium Propagation simulator" in run(py, "-m", "spikeep", "--help")
    from test_api import readme_python_examples

    shutil.rmtree(empty / "runs")
    out = run(py, "-c", readme_python_examples()[0])
    assert (empty / "runs" / "quick" / "best.pt").is_file() and out.strip()
