"""A run fitted to a time budget (train.minutes), and the GPU window script dry-run on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikeep.training.build import build_network
from spikeep.training.checkpoint_files import load_checkpoint
from spikeep.training.trainer import train
from spikeep.training.validation import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def quick(overrides):
    return load_config("quickstart", overrides)


def test_budget_fits_epochs_and_the_cosine_to_the_minutes(tmp_path):
    cfg = quick(["train.minutes=0.25", "train.epochs=500", "data.test_subset=200"])
    r = train(cfg, tmp_path / "run", progress=False, echo=False)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert 1 <= plan["epochs"] < 500 and plan["T_max"] == plan["epochs"]
    assert plan["seconds_per_iteration"] > 0 and plan["timed_iterations"] >= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == plan["epochs"] and summary["plan"]["epochs"] == plan["epochs"]
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["plan"]["epochs"] == plan["epochs"] and ck["scheduler"]["T_max"] == plan["T_max"]
    # the plan holds whether or not the deadline cut its last epoch; whole epochs ran up to it
    whole = [h for h in r.history if float(h["epoch"]).is_integer()]
    assert [h["epoch"] for h in whole] == list(range(1, len(whole) + 1))
    assert len(whole) == plan["epochs"] or "cut" in summary


def test_deadline_mid_epoch_cuts_checkpoints_evaluates_and_resumes(tmp_path):
    cfg = quick(["train.minutes=0.01", "train.half_weights=true", "data.test_subset=200"])
    run = tmp_path / "run"
    train(cfg, run, progress=False, echo=False)
    summary = json.loads((run / "summary.json").read_text())
    cut = summary["cut"]
    assert cut["epoch"] == 1 and 0 < cut["iteration"] < cut["iterations_per_epoch"] == 300
    assert not summary["finished"]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and float(rows[1].split(",")[0]) == pytest.approx(cut["iteration"] / 300, abs=1e-4)
    log = (run / "train.log").read_text()
    assert "cut the run in epoch 1" in log and f"after iteration {cut['iteration']} of 300" in log
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["epoch"] == 0 and ck["batch"] == cut["iteration"]
    assert len(ck["history"]) == 1  # the cut's row travels with the checkpoint
    # the float16 weights: small, and they give the float32 network's predictions
    half = load_checkpoint(run / "weights_fp16.pt", "weights")
    assert all(v.dtype == torch.float16 for v in half["model"].values() if v.is_floating_point())
    net32, net16 = build_network(cfg), build_network(cfg)
    net32.load_state_dict(ck["model"])
    net16.load_state_dict(half["model"])
    x = torch.rand(64, 1, 28, 28)
    from spikeep.core.dynamics import free_phase
    a = net32.logits(free_phase(net32, net32.prepare(x), 20).state).argmax(1)
    b = net16.logits(free_phase(net16, net16.prepare(x), 20).state).argmax(1)
    assert (a == b).float().mean() >= 0.95
    # a resume goes on from the cut (with a new budget of the same minutes) and keeps the plan
    train(None, run, resume=True, progress=False, echo=False)
    ck2 = load_checkpoint(run / "checkpoint.pt")
    assert ck2["plan"] == ck["plan"]
    assert (ck2["epoch"], ck2["batch"]) > (ck["epoch"], ck["batch"])
    assert len(ck2["history"]) >= 2


def _pack(tmp_path) -> Path:
    npz = SHARED / "data" / "cifar10" / "cifar10.npz"
    if not npz.is_file() or not (SHARED / "tools" / "split_cifar10.py").is_file():
        pytest.skip("needs ../shared/data/cifar10/cifar10.npz and ../shared/tools/split_cifar10.py")
    parts = tmp_path / "parts"
    # 4,000 training images in two mosaics: part1 gets the first, part2 the second with every label and
    # the 500 test images (what the real pack's part2 holds: 18,000 images and the test set)
    subprocess.run([sys.executable, str(REPO / "scripts" / "cifar10_parts.py"), "pack", str(parts), "--npz", str(npz),
                    "--limit", "4000", "--test-limit", "500", "--part-mb", "4.2"], check=True, capture_output=True)
    assert sorted(p.name for p in parts.glob("part*")) == ["part1", "part2"]
    return parts


def _window(mode, parts, stash, out, *extra):
    env = {**os.environ, "PARTS": str(parts), "WINDOW_STASH": str(stash), "OUT": str(out)}
    return subprocess.run(["bash", str(REPO / "scripts" / "cifar10_window.sh"), mode, "--dry-run", *extra],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_window_script_dry_run_both_calls_then_the_fallback(tmp_path):
    parts = _pack(tmp_path)
    stash, out = tmp_path / "stash", tmp_path / "out"
    r = _window("first", parts, stash, out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (stash / "part1" / "manifest.json").is_file() and (out / "window_first.tgz").is_file()
    # the second call carries part2 only: part1 is found where the first call kept it
    only2 = tmp_path / "carried2"
    only2.mkdir()
    os.symlink(parts / "part2", only2 / "part2")
    r = _window("second", only2, stash, out, "--minutes", "0.1")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = stash / "report_second"
    assert (rep / "data.txt").read_text().strip() == "full", r.stdout
    assert "sha256 checked" in r.stdout
    summary = json.loads((rep / "summary.json").read_text())
    assert "cut" in summary and summary["cut"]["iteration"] > 0  # 40 iterations do not fit 6 s
    cfg = json.loads((rep / "config.json").read_text())
    assert cfg["data"]["subset"] == 320 and cfg["dynamics"]["engine"] == "triton"
    for f in ("metrics.csv", "env.json", "plan.json", "weights_fp16.pt", "train.log"):
        assert (rep / f).is_file(), f
    assert (out / "window_second.tgz").is_file()
    # a machine released between the calls: nothing kept, part2 alone
    r = _window("second", only2, tmp_path / "fresh", out, "--minutes", "0.1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FALLBACK" in r.stdout and "x_train 2000" in r.stdout
    assert (tmp_path / "fresh" / "report_second" / "data.txt").read_text().strip() == "part2"
    assert (tmp_path / "fresh" / "report_second" / "metrics.csv").is_file()


def test_parts_partial_holds_part2s_images_and_the_whole_test_set(tmp_path):
    parts = _pack(tmp_path)
    script = str(REPO / "scripts" / "cifar10_parts.py")
    subprocess.run([sys.executable, script, "join", str(parts / "part1"), str(parts / "part2"), str(tmp_path / "all.npz")],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, script, "partial", str(parts / "part2"), str(tmp_path / "p2.npz")], check=True,
                   capture_output=True)
    import numpy as np
    full, p2 = np.load(tmp_path / "all.npz"), np.load(tmp_path / "p2.npz")
    assert p2["x_train"].shape[0] == 2000
    assert (p2["x_train"] == full["x_train"][2000:]).all() and (p2["y_train"] == full["y_train"][2000:]).all()
    assert (p2["x_test"] == full["x_test"]).all() and (p2["y_test"] == full["y_test"]).all()
    assert len(set(full["y_train"][:2000].tolist())) == 10  # shuffled: part1 is not a block of classes
    r = subprocess.run([sys.executable, script, "partial", str(parts / "part1"), str(tmp_path / "p1.npz")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "holds no y_train" in r.stderr + r.stdout
