"""Data loading, the shipped quick-start subset, training end to end (CPU), MNIST accuracy (slow)."""
import os
import shutil

import pytest
import torch

from conftest import REPO, needs_mnist
from spikeep.config import load_config
from spikeep.data import DataMissing, load_dataset, load_mnist, load_quickstart
from spikeep.train import train


def test_quickstart_subset_shipped():
    ds = load_quickstart()
    assert ds.train.x.shape == (6000, 1, 28, 28) and ds.test.x.shape == (1000, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32 and 0 <= float(ds.train.x.min()) and float(ds.train.x.max()) <= 1
    assert torch.equal(torch.bincount(ds.train.y), torch.full((10,), 600))
    assert torch.equal(torch.bincount(ds.test.y), torch.full((10,), 100))


def test_missing_mnist_says_where_and_what_to_do(tmp_path):
    with pytest.raises(DataMissing, match=r"(?s)MNIST not found: looked for .*MNIST/raw.*--download"):
        load_mnist(tmp_path)


@needs_mnist
def test_mnist_from_archives_never_writes_into_the_data_folder(tmp_path, monkeypatch):
    src = tmp_path / "readonly"
    shutil.copytree(os.path.join(os.environ["SPIKEEP_DATA"], "MNIST"), src / "MNIST")
    before = sorted(p.name for p in (src / "MNIST" / "raw").iterdir())
    monkeypatch.setenv("SPIKEEP_CACHE", str(tmp_path / "cache"))
    ds = load_dataset("mnist", str(src), subset=1000)
    assert sorted(p.name for p in (src / "MNIST" / "raw").iterdir()) == before
    assert ds.train.x.shape == (1000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert (tmp_path / "cache" / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_train_quickstart_end_to_end_is_reproducible(tmp_path):
    cfg = load_config(REPO / "models" / "quickstart.toml", ["train.epochs=1", "data.subset=600"])
    a = train(cfg, tmp_path / "a", progress=False, echo=False)
    b = train(cfg, tmp_path / "b", progress=False, echo=False)
    assert a.history[0]["test_acc"] > 50.0  # 600 images, one epoch: well above chance (10 %)
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        assert torch.equal(p, q)  # same seed, bitwise the same weights


@pytest.mark.parametrize("estimator", ["one_sided", "random_sign", "bptt"])
def test_every_estimator_trains(estimator, tmp_path):
    cfg = load_config(REPO / "models" / "quickstart.toml",
                      ["train.epochs=1", "data.subset=1000", f"estimator.name={estimator}"])
    r = train(cfg, tmp_path, progress=False, echo=False)
    assert r.history[0]["test_acc"] > 50.0


def test_conv_network_trains_on_quickstart(tmp_path):
    over = ["train.epochs=1", "data.subset=1000", "model.channels=[8]", "model.kernels=[5]", "model.strides=[1]",
            "model.paddings=[0]", "model.pools=m", "model.hidden=[]", "train.lrs=[0.1, 0.05]",
            "dynamics.T1=15", "dynamics.T2=5"]
    r = train(load_config(REPO / "models" / "quickstart.toml", over), tmp_path, progress=False, echo=False)
    assert r.history[0]["test_acc"] > 50.0


@pytest.mark.slow
@needs_mnist
def test_mnist_mlp_symmetric_ep_reaches_97_5_percent(capsys, tmp_path):
    """Acceptance d: MLP 784-512-10, symmetric EP, >= 97.5 % test accuracy within 3 epochs; BPTT too."""
    ep = train(load_config(REPO / "models" / "mnist_mlp.toml"), tmp_path / "ep", progress=False)
    bptt = train(load_config(REPO / "models" / "mnist_mlp_bptt.toml"), tmp_path / "bptt", progress=False)
    with capsys.disabled():
        for name, r in (("EP symmetric", ep), ("BPTT", bptt)):
            print(f"\n{name}: " + ", ".join(f"epoch {h['epoch']} {h['test_acc']:.2f}% ({h['seconds']:.1f} s)"
                                            for h in r.history))
    assert len(ep.history) <= 3 and ep.history[-1]["test_acc"] >= 97.5
    assert bptt.history[-1]["test_acc"] >= 97.0
