"""Data loading, the shipped quick-start subset, training end to end (CPU), MNIST accuracy (slow)."""
import os
import shutil

import pytest
import torch

from conftest import REPO, needs_mnist
from spikeep.training.validation import load_config
from spikeep.data import DataMissing, load_dataset, load_mnist, load_quickstart
from spikeep.training.trainer import train


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
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", ["train.epochs=1", "data.subset=600"])
    a = train(cfg, tmp_path / "a", progress=False, echo=False)
    b = train(cfg, tmp_path / "b", progress=False, echo=False)
    assert a.history[0]["test_acc"] > 50.0  # 600 images, one epoch: well above chance (10 %)
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        assert torch.equal(p, q)  # same seed, bitwise the same weights


@pytest.mark.parametrize("estimator", ["one_sided", "random_sign", "bptt"])
def test_every_estimator_trains(estimator, tmp_path):
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml",
                      ["train.epochs=1", "data.subset=1000", f"estimator.name={estimator}"])
    r = train(cfg, tmp_path, progress=False, echo=False)
    assert r.history[0]["test_acc"] > 50.0


def test_conv_network_trains_on_quickstart(tmp_path):
    over = ["train.epochs=1", "data.subset=1000", "model.channels=[8]", "model.kernels=[5]", "model.strides=[1]",
            "model.paddings=[0]", "model.pools=m", "model.hidden=[]", "train.lrs=[0.1, 0.05]",
            "dynamics.T1=15", "dynamics.T2=5"]
    r = train(load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", over), tmp_path, progress=False, echo=False)
    assert r.history[0]["test_acc"] > 50.0


@pytest.mark.slow
@needs_mnist
def test_mnist_mlp_symmetric_ep_reaches_97_5_percent(capsys, tmp_path):
    """Acceptance d: MLP 784-512-10, symmetric EP, >= 97.5 % test accuracy within 3 epochs; BPTT too."""
    ep = train(load_config(REPO / "spikeep" / "config" / "shipped" / "mnist_mlp.toml"), tmp_path / "ep", progress=False)
    bptt = train(load_config(REPO / "spikeep" / "config" / "shipped" / "mnist_mlp_bptt.toml"), tmp_path / "bptt", progress=False)
    with capsys.disabled():
        for name, r in (("EP symmetric", ep), ("BPTT", bptt)):
            print(f"\n{name}: " + ", ".join(f"epoch {h['epoch']} {h['test_acc']:.2f}% ({h['seconds']:.1f} s)"
                                            for h in r.history))
    assert len(ep.history) <= 3 and ep.history[-1]["test_acc"] >= 97.5
    files = {p.name for p in (tmp_path / "ep").iterdir()}
    assert {"config.json", "env.json", "metrics.csv", "summary.json", "checkpoint.pt", "best.pt", "curves.png",
            "train.log"} <= files
    assert bptt.history[-1]["test_acc"] >= 97.0
    # issue 5 (c): the rate-trained weights run in the spiking twin (IF neurons, theta = 2) lose <= 0.5 pp
    from spikeep.training.evaluation import evaluate_run

    rate = evaluate_run(tmp_path / "ep", "best")
    spiking = evaluate_run(tmp_path / "ep", "best", neurons="spiking")
    with capsys.disabled():
        print(f"rate-trained weights: rate network {rate['test_acc']:.2f}%, spiking network {spiking['test_acc']:.2f}% "
              f"({spiking['spikes_per_inference']:.0f} spikes per inference)")
    assert spiking["neurons"] == "spiking" and spiking["test_acc"] >= rate["test_acc"] - 0.5


@pytest.mark.slow
@needs_mnist
def test_mnist_mlp_trained_as_a_spiking_network_reaches_98_percent(capsys, tmp_path):
    """Issue 5 (b): MLP 784-512-10 trained entirely in spiking mode (IF neurons, spike-count rates,
    local symmetric rule) reaches >= 98.0 % test accuracy within 3 epochs (EqSpike: 97.6 %)."""
    r = train(load_config(REPO / "spikeep" / "config" / "shipped" / "mnist_mlp_spiking.toml"), tmp_path, progress=False)
    with capsys.disabled():
        print("\nspiking EP: " + ", ".join(f"epoch {h['epoch']} {h['test_acc']:.2f}% ({h['seconds']:.0f} s, "
                                         f"{h['spikes_per_inference']:.0f} spikes/inference)" for h in r.history))
    assert len(r.history) == 3 and r.history[-1]["test_acc"] >= 98.0
    assert all(h["spikes_per_inference"] > 0 for h in r.history)


def _tiny_cifar_npz(path, n_train=40, n_test=20, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(n_train) % 10, x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(n_test) % 10)


def test_cifar10_from_npz_and_missing_message(tmp_path):
    import numpy as np

    _tiny_cifar_npz(tmp_path / "c.npz")
    ds = load_dataset("cifar10", str(tmp_path), npz=str(tmp_path / "c.npz"))
    z = np.load(tmp_path / "c.npz")
    assert ds.train.x.shape == (40, 3, 32, 32) and ds.test.y.tolist() == z["y_test"].tolist()
    # NHWC uint8 -> NCHW float in [0, 1], pixel for pixel
    assert torch.equal((ds.train.x * 255).round().to(torch.uint8), torch.from_numpy(z["x_train"]).permute(0, 3, 1, 2))
    sub = load_dataset("cifar10", str(tmp_path), subset=10, npz=str(tmp_path / "c.npz"))
    assert sub.train.x.shape[0] == 10 and len(set(sub.train.y.tolist())) > 1  # drawn at random, not the first 10
    with pytest.raises(DataMissing, match=r"(?s)CIFAR-10 not found.*cifar-10-batches-py.*cifar10.npz.*--download"):
        load_dataset("cifar10", str(tmp_path / "empty"))
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="not a CIFAR-10 npz"):
        load_dataset("cifar10", npz=str(tmp_path / "bad.npz"))


@pytest.mark.slow
def test_real_cifar10_npz():
    root = os.environ["SPIKEEP_DATA"]
    if not os.path.isfile(os.path.join(root, "cifar10", "cifar10.npz")):
        pytest.skip("CIFAR-10 npz not found under $SPIKEEP_DATA")
    ds = load_dataset("cifar10", root)
    assert ds.train.x.shape == (50000, 3, 32, 32) and ds.test.x.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(ds.train.y), torch.full((10,), 5000))
    mean = ds.train.x.mean((0, 2, 3)) * 255  # the published CIFAR-10 channel means
    torch.testing.assert_close(mean, torch.tensor([125.307, 122.950, 113.865]), atol=0.01, rtol=0)


def test_augment_is_per_sample_reproducible_and_correct():
    from torchvision.transforms.v2 import functional as TF

    from spikeep.data import AUGMENT_STREAM, augment_keyed, keyed_uniform, normalize
    from spikeep.data import Split

    x = torch.rand(64, 3, 8, 8)
    index = torch.arange(100, 164)
    a = augment_keyed(x, 3, 1, index, 2, True)
    b = augment_keyed(x, 3, 1, index, 2, True)
    assert torch.equal(a, b) and a.shape == x.shape
    # a sample's augmentation depends on its index, not on its batch or position in it
    assert torch.equal(augment_keyed(x[5:9].flip(0), 3, 1, index[5:9].flip(0), 2, True), a[5:9].flip(0))
    u = keyed_uniform(3, 1, index, AUGMENT_STREAM, 3)
    i, j = (u[:, 0] * 5).long(), (u[:, 1] * 5).long()
    flip = u[:, 2] < 0.5
    padded = TF.pad(x, [2, 2, 2, 2], padding_mode="edge")
    for k in range(64):
        want = padded[k, :, i[k]:i[k] + 8, j[k]:j[k] + 8]
        assert torch.equal(a[k], want.flip(-1) if flip[k] else want)
    assert 10 < int(flip.sum()) < 54 and len(set(zip(i.tolist(), j.tolist()))) > 10
    n = normalize(Split(x, torch.zeros(64, dtype=torch.long)), [0.5, 0.5, 0.5], [0.25, 0.5, 1.0])
    torch.testing.assert_close(n.x[:, 1], (x[:, 1] - 0.5) / 0.5)
