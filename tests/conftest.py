import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # the Triton kernels run under Triton's interpreter on the CPU (core.fused)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from spikeep.config import ModelConfig
from spikeep.core.network import EqNetwork

REPO = Path(__file__).resolve().parents[1]
# Real data sets live in ../shared/data beside the checkout; $SPIKEEP_DATA overrides.
os.environ.setdefault("SPIKEEP_DATA", str(REPO.parent / "shared" / "data"))


def small_conv(pools="mm", paddings=(1, 1), loss="mse", activation="my_hard_sig", hidden=(), scale=1.0,
               strides=(1, 1), in_shape=(1, 12, 12), channels=(4, 6), n_classes=5, seed=0) -> EqNetwork:
    torch.manual_seed(seed)
    cfg = ModelConfig(input_shape=list(in_shape), channels=list(channels), kernels=[3] * len(channels),
                      strides=list(strides), paddings=list(paddings), pools=pools, hidden=list(hidden),
                      n_classes=n_classes, loss=loss, activation=activation, init_scale=scale)
    return EqNetwork(cfg).double()


def small_mlp(loss="mse", activation="my_hard_sig", hidden=(16,), in_shape=(1, 6, 6), n_classes=4, seed=0,
              scale=1.0) -> EqNetwork:
    torch.manual_seed(seed)
    cfg = ModelConfig(input_shape=list(in_shape), hidden=list(hidden), n_classes=n_classes, loss=loss,
                      activation=activation, init_scale=scale)
    return EqNetwork(cfg).double()


def batch_for(net: EqNetwork, n: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *net.input_shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, net.n_classes, (n,), generator=g)
    return x, y


def random_state(net: EqNetwork, n: int, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(n, *s, generator=g, dtype=torch.float64) for s in net.layer_shapes)


def mnist_available() -> bool:
    raw = Path(os.environ["SPIKEEP_DATA"]) / "MNIST" / "raw"
    return raw.is_dir() and any(raw.iterdir())


needs_mnist = pytest.mark.skipif(not mnist_available(), reason="real MNIST not found under $SPIKEEP_DATA")


def kill_when(proc, cond, timeout: float = 120.0, poll: float = 0.005) -> bool:
    """kill -9 a subprocess as soon as cond() holds; False if it ended (or timed out) first."""
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if cond():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(poll)
    proc.wait()
    return False


def crash_at_update(monkeypatch, n: int):
    """Make training raise KeyboardInterrupt (a simulated crash) at its n-th optimizer step, right after
    the update; returns the function that puts things back."""
    import spikeep.training.trainer as tr

    calls = {"n": 0}
    real = tr.FiniteChecks.add

    def add(self, named, what, where):
        if what == "weights":
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("simulated crash")
        return real(self, named, what, where)

    monkeypatch.setattr(tr.FiniteChecks, "add", add)
    return lambda: monkeypatch.setattr(tr.FiniteChecks, "add", real)


def run_crash_resume(cfg, tmp_path, monkeypatch, update: int = 17):
    """Train cfg once whole (tmp_path/a) and once crashed at its `update`-th optimizer step and resumed
    (tmp_path/b); returns both TrainResults, after checking that their weights are bitwise equal."""
    import spikeep.training.trainer as tr

    a = tr.train(cfg, tmp_path / "a", progress=False, echo=False)
    restore = crash_at_update(monkeypatch, update)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, tmp_path / "b", progress=False, echo=False)
    restore()
    b = tr.train(run_dir=tmp_path / "b", resume=True, progress=False, echo=False)
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        assert torch.equal(p, q)
    return a, b
