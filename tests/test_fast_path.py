"""The parts of the CUDA fast path that run on the CPU too (GPU issue, acceptance a): deferred
host-device synchronisation, convergence checks every k steps, steps reported, bf16 drives,
deterministic kernels. Each keeps the numbers it promises to keep."""
import pytest
import torch

from conftest import REPO, batch_for, small_mlp
from spikeep.training.validation import load_config
from spikeep.core.dynamics import free_phase
from spikeep.training.divergence import DivergenceError
from spikeep.training.trainer import train
from spikeep.training.checkpoint_files import load_checkpoint

QUICK = REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"
TINY = ["data.subset=300", "model.hidden=[32]", "train.batch_size=25", "dynamics.T1=15", "dynamics.T2=5",
        "train.epochs=2", "estimator.name=random_sign"]


def _weights(run):
    return load_checkpoint(run / "checkpoint.pt")["model"]


def test_reading_the_device_every_n_iterations_keeps_every_number(tmp_path):
    a = train(load_config(QUICK, TINY), tmp_path / "a", progress=False, echo=False)
    b = train(load_config(QUICK, TINY + ["train.sync_every=7"]), tmp_path / "b", progress=False, echo=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["train_acc"] for h in a.history] == [h["train_acc"] for h in b.history]


def test_deferred_finite_checks_still_name_layer_and_iteration(tmp_path):
    diverging = ["model.loss=mse", "train.lrs=[1e3, 1e3]", "model.activation=identity", "model.init_scale=0.05",
                 "dynamics.T1=30", "data.subset=600", "model.hidden=[64]", "train.batch_size=25"]
    messages = []
    for every in (1, 6):
        with pytest.raises(DivergenceError) as e:
            train(load_config(QUICK, diverging + [f"train.sync_every={every}"]), tmp_path / f"s{every}",
                  progress=False, echo=False)
        messages.append(str(e.value).split(";")[0])
    assert messages[0] == messages[1] and "of layer" in messages[0] and "iteration" in messages[0]


def test_convergence_checked_every_k_steps():
    net = small_mlp(hidden=(16,))
    x, y = batch_for(net)
    inp = net.prepare(x, y)
    every_step = free_phase(net, inp, 500, tol=1e-6)
    every_4 = free_phase(net, inp, 500, tol=1e-6, every=4)
    assert every_4.steps % 4 == 0 and every_step.steps <= every_4.steps < every_step.steps + 4
    assert every_4.delta < 1e-6


def test_steps_per_batch_reported_and_fewer_with_early_stopping(tmp_path):
    sym = TINY[:-1] + ["estimator.name=symmetric", "dynamics.T1=200", "dynamics.T2=50"]
    full = train(load_config(QUICK, sym), tmp_path / "full", progress=False, echo=False)
    early = train(load_config(QUICK, sym + ["dynamics.tol=1e-4", "dynamics.tol_every=5"]), tmp_path / "early",
                  progress=False, echo=False)
    assert [h["steps_per_batch"] for h in full.history] == [300.0, 300.0]  # T1 + 2 T2
    assert [(h["steps_free"], h["steps_nudged"], h["steps_inference"]) for h in full.history] == [(200, 50, 200)] * 2
    assert all(h["steps_free"] < 100 and h["steps_inference"] < 100 for h in early.history), early.history
    assert all(h["steps_per_batch"] < 150 for h in early.history), early.history
    assert "steps_per_batch,steps_free,steps_nudged" in (tmp_path / "early" / "metrics.csv").read_text().splitlines()[0]
    assert "steps per phase: free" in (tmp_path / "early" / "train.log").read_text()
    a, b = early.history[-1]["test_acc"], full.history[-1]["test_acc"]
    assert a > 40 and abs(a - b) < 3, (a, b)  # 300 training images, 2 epochs: well above chance, as without


def test_bf16_drives_train_like_float32_and_are_recorded(tmp_path):
    sym = TINY[:-1] + ["estimator.name=symmetric"]
    r = train(load_config(QUICK, sym + ["dynamics.precision=bf16"]), tmp_path / "bf16", progress=False, echo=False)
    f = train(load_config(QUICK, sym), tmp_path / "f32", progress=False, echo=False)
    a, b = r.history[-1]["test_acc"], f.history[-1]["test_acc"]
    assert a > 40 and abs(a - b) < 3, (a, b)
    assert not all(torch.equal(u, v) for u, v in zip(r.net.parameters(), f.net.parameters()))  # bf16 did run
    cfg = load_config(QUICK, TINY + ["dynamics.precision=bf16"])
    from spikeep.training.build import build_network, make_learner
    assert make_learner(cfg, build_network(cfg)).relaxer.settings.drive_dtype == torch.bfloat16
    assert (tmp_path / "bf16" / "env.json").read_text().count("tf32_matmul") == 1


def test_deterministic_mode_trains_to_the_same_weights_on_the_cpu(tmp_path):
    try:
        train(load_config(QUICK, TINY + ["train.deterministic=true"]), tmp_path / "d", progress=False, echo=False)
    finally:
        torch.use_deterministic_algorithms(False)
    train(load_config(QUICK, TINY), tmp_path / "n", progress=False, echo=False)
    wa, wb = _weights(tmp_path / "d"), _weights(tmp_path / "n")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_spiking_phases_end_when_settled_and_report_their_steps(tmp_path):
    spk = ["data.subset=200", "model.hidden=[32,32]", "train.lrs=[0.1,0.1,0.05]", "train.batch_size=50", "train.epochs=1",
           'model.neurons="spiking"', "spiking.T1=300", "spiking.T2=100", "spiking.window=20",
           "estimator.name=symmetric", "train.eval_batch_size=500"]
    full = train(load_config(QUICK, spk), tmp_path / "full", progress=False, echo=False)
    early = train(load_config(QUICK, spk + ["spiking.rate_tol=0.004"]), tmp_path / "early", progress=False,
                  echo=False)
    f, e = full.history[-1], early.history[-1]
    assert (f["steps_free"], f["steps_nudged"], f["steps_inference"]) == (300, 100, 300)
    assert e["steps_free"] < 200 and e["steps_inference"] < 200, e
    assert (e["steps_free"] * 4) % 20 == 0  # 4 batches, each phase whole windows
    assert abs(e["test_acc"] - f["test_acc"]) < 5, (e["test_acc"], f["test_acc"])
