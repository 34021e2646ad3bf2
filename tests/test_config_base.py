"""Configs that share a base file (`base = "other.toml"`): the paper ConvNet is written once."""

import pytest

from conftest import REPO
from spikeep.config import ConfigError
from spikeep.training.validation import load_config


def test_a_config_starts_from_its_base_and_its_own_keys_win(tmp_path):
    (tmp_path / "root.toml").write_text('[model]\nhidden = [32]\nn_classes = 10\n[train]\nepochs = 7\nlrs = [0.1, 0.2]\n')
    (tmp_path / "mid.toml").write_text('base = "root.toml"\n[train]\nepochs = 3\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leaf.toml").write_text('base = "../mid.toml"\n[train]\nbatch_size = 5\n[data]\nname = "mnist-quickstart"\n')
    cfg = load_config(tmp_path / "sub" / "leaf.toml")
    assert cfg.name == "leaf" and cfg.model.hidden == [32]  # the root's model, named after the file asked for
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lrs) == (3, 5, [0.1, 0.2])  # key by key


def test_base_mistakes_are_named(tmp_path):
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match="makes a loop"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('base = "missing.toml"\n')
    with pytest.raises(ConfigError, match="c.toml: base config file not found: .*missing.toml"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "d.toml").write_text("base = 3\n")
    with pytest.raises(ConfigError, match="base must be the name of another config file"):
        load_config(tmp_path / "d.toml")


def test_every_cifar10_config_shares_the_paper_convnet():
    """The paper ConvNet is spelled out once, in spikeep/config/shipped/cifar10_paper.toml; the Table 2 rows keep it."""
    paper = load_config(REPO / "spikeep" / "config" / "shipped" / "cifar10_paper.toml")
    rows = sorted(p for p in (REPO / "spikeep" / "config" / "shipped").glob("cifar10_*.toml") if p.name != "cifar10_paper.toml")
    assert len(rows) >= 10
    for p in rows:
        text = p.read_text()
        assert 'base = "cifar10_paper.toml"' in text and "input_shape" not in text, p.name
        cfg = load_config(p)
        assert cfg.data == paper.data or p.name.startswith("cifar10_cpu"), p.name
    for name in ("cifar10_ep_symmetric_ce", "cifar10_ep_symmetric_mse", "cifar10_bptt_ce", "cifar10_uni_sym_kp_vf"):
        m = load_config(REPO / "spikeep" / "config" / "shipped" / f"{name}.toml").model
        assert (m.channels, m.paddings, m.pools) == ([128, 256, 512, 512], [1, 1, 1, 0], "mmmm"), name
    sym = load_config(REPO / "spikeep" / "config" / "shipped" / "cifar10_ep_symmetric_ce.toml")
    assert sym.model == paper.model and sym.train == paper.train and sym.estimator == paper.estimator
