"""Bad input gets a clear error naming the problem (acceptance f), config errors."""
import pytest
import torch

from conftest import REPO, batch_for, small_conv, small_mlp
from spikeep.training.validation import load_config
from spikeep.config import ConfigError, ModelConfig
from spikeep.core.dynamics import free_phase, nudged_phase, relax
from spikeep.learning.ep import ep_gradients
from spikeep.learning.estimators import one_sided_estimate, symmetric_estimate
from spikeep.core.network import EqNetwork


def test_wrong_input_shape():
    net = small_conv()
    with pytest.raises(ValueError, match=r"input has shape \(4, 1, 10, 12\).*expects \(B, 1, 12, 12\)"):
        net.prepare(torch.zeros(4, 1, 10, 12, dtype=torch.float64))
    mlp = small_mlp()
    with pytest.raises(ValueError, match="expects"):
        mlp.prepare(torch.zeros(4, 35, dtype=torch.float64))
    mlp.prepare(torch.zeros(4, 36, dtype=torch.float64))  # a flat batch is fine for a dense first layer
    with pytest.raises(ValueError, match="labels must have shape"):
        mlp.prepare(torch.zeros(4, 36, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        mlp.prepare(torch.zeros(2, 36, dtype=torch.float64), torch.tensor([0, 4]))


def test_unknown_activation_and_pool_letter():
    with pytest.raises(ValueError, match="unknown activation 'relu'.*my_hard_sig"):
        EqNetwork(ModelConfig(activation="relu"))
    with pytest.raises(ValueError, match="unknown pooling letter 'x'"):
        EqNetwork(ModelConfig(input_shape=[1, 8, 8], channels=[2], kernels=[3], strides=[1], paddings=[1],
                              pools="x", hidden=[]))
    with pytest.raises(ValueError, match="does not fit an input"):
        EqNetwork(ModelConfig(input_shape=[1, 3, 3], channels=[2], kernels=[3], strides=[1], paddings=[0],
                              pools="m", hidden=[]))


def test_beta_zero_and_bad_steps():
    net = small_mlp()
    x, y = batch_for(net)
    inp = net.prepare(x, y)
    s = free_phase(net, inp, 5).state
    for call in (lambda: nudged_phase(net, inp, s, 5, 0.0),
                 lambda: one_sided_estimate(lambda *a: {}, s, s, 0.0),
                 lambda: symmetric_estimate(lambda *a: {}, s, s, 0.0),
                 lambda: ep_gradients(net, x, y, "symmetric", beta=0.0)):
        with pytest.raises(ValueError, match="beta"):
            call()
    for T in (0, -3):
        with pytest.raises(ValueError, match="T1 must be a positive number of steps"):
            free_phase(net, inp, T)
        with pytest.raises(ValueError, match="T2 must be a positive number of steps"):
            nudged_phase(net, inp, s, T, 0.5)
    with pytest.raises(ValueError, match="needs labels"):
        relax(net, net.prepare(x), s, 3, beta=0.5)
    with pytest.raises(ValueError, match="unknown EP estimator 'two_sided'"):
        ep_gradients(net, x, y, "two_sided")


BAD_CONFIGS = [
    ("[model]\nhiden = [10]\n", r"cfg.toml: model: unknown key 'hiden'"),
    ("[dynamics]\nT1 = 'many'\n", r"cfg.toml: dynamics.T1: expected int, got str 'many'"),
    ("[dynamics]\nT1 = 0\n", "T1 and dynamics.T2 must be > 0"),
    ("[estimator]\nbeta = 0.0\n", "estimator.beta must be a nonzero"),
    ("[train]\nlrs = [0.1]\n", "train.lrs has 1 entries for 2 layers"),
    ("[model]\nactivation = 'relu'\n[train]\nlrs=[0.1, 0.1]\n", "unknown activation 'relu'"),
    ("[model]\npools = 'q'\nchannels = [2]\nkernels = [3]\nstrides = [1]\npaddings = [0]\n",
     "unknown pooling letter 'q'"),
    ("[model\n", "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS)
def test_config_errors_name_key_and_file(tmp_path, text, message):
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_overrides_and_shipped_configs():
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "mnist_mlp.toml", ["train.epochs=1", "estimator.name=one_sided",
                                                          "dynamics.tol=1e-4"])
    assert cfg.train.epochs == 1 and cfg.estimator.name == "one_sided" and cfg.dynamics.tol == 1e-4
    assert cfg.name == "mnist_mlp"
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_config(REPO / "spikeep" / "config" / "shipped" / "mnist_mlp.toml", ["train.epoch=1"])
    for path in sorted((REPO / "spikeep" / "config" / "shipped").glob("*.toml")):
        cfg = load_config(path)
        EqNetwork(cfg.model)  # every shipped config builds


def test_cli_reports_errors(capsys, tmp_path):
    from spikeep.cli import main

    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
