"""Skip connections (model.skips, issue 28): interactions between non-adjacent layers are terms of Phi like
any other. Their drives and local updates equal float64 autograd of Phi; every relaxer (sync, async,
bf16_incremental with exact increments, Triton under the interpreter) composes them into the same step;
step-wise EP follows truncated BPTT (the GDU check); configs that cannot be built are refused by name."""
import os

import pytest
import torch

from conftest import REPO, batch_for, random_state
from spikeep.config import ConfigError, ModelConfig
from spikeep.core.dynamics import free_phase
from spikeep.core.fused import triton_available
from spikeep.core.network import EqNetwork
from spikeep.core.relaxer import Relaxer, RelaxSettings
from spikeep.learning.gdu import gdu_check
from test_drives import _check_drives

# (channels, pools, paddings, hidden, skips): conv -> conv at the same size, halved (one pool) and
# quartered (pool and stride 2), conv -> dense, dense -> dense, several skips into one layer
NETS = {
    "conv same size": ((4, 5, 6), "mii", (1, 1, 1), (), [[1, 3]]),
    "conv halved and quartered": ((4, 5, 6), "imm", (1, 1, 1), (7,), [[1, 3], [1, 4]]),
    "conv into dense, two into one": ((4, 5), "mm", (1, 1), (7, 6), [[1, 3], [2, 4], [1, 4]]),
    "avg pools, conv into dense": ((4, 5), "aa", (1, 1), (7, 6), [[1, 3], [2, 4], [1, 4]]),
    "avg pools, conv skip": ((4, 5, 6), "aai", (1, 1, 1), (7,), [[1, 3], [2, 4]]),
}


def skip_conv(name, loss="cross_entropy", activation="my_hard_sig", scale=1.0, skip_pool="a", seed=0):
    channels, pools, paddings, hidden, skips = NETS[name]
    torch.manual_seed(seed)
    cfg = ModelConfig(input_shape=[2, 12, 12], channels=list(channels), kernels=[3] * len(channels),
                      strides=[1] * len(channels), paddings=list(paddings), pools=pools, hidden=list(hidden),
                      n_classes=5, loss=loss, activation=activation, init_scale=scale, skips=skips,
                      skip_pool=skip_pool, skip_scale=scale)
    cfg.validate()
    return EqNetwork(cfg).double()


def skip_mlp(loss="mse", skips=None, activation="my_hard_sig", scale=1.0):
    skips = skips or (([1, 3], [2, 4]) if loss == "mse" else ([1, 3],))  # layers 1..4 (mse) or 1..3 (CE)
    torch.manual_seed(0)
    cfg = ModelConfig(input_shape=[1, 6, 6], hidden=[9, 8, 7], n_classes=4, loss=loss, activation=activation,
                      init_scale=scale, skips=[list(p) for p in skips], skip_scale=scale)
    cfg.validate()
    return EqNetwork(cfg).double()


def reference_step(net, inp, s, beta=0.0):
    return tuple(net.activation.fn(d) for d in net.drives(inp, s, beta))


def _max_diff(a, b):
    return max(float((u - v).abs().max()) for u, v in zip(a, b))


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("skip_pool", ["a", "m"])
def test_skip_drives_and_local_updates_equal_autograd_of_phi(name, loss, skip_pool):
    net = skip_conv(name, loss, skip_pool=skip_pool)
    assert not net.is_chain and len(net.synapses) > len(net.layer_shapes)
    x, y = batch_for(net)
    _check_drives(net, x, y, random_state(net, x.shape[0]))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_dense_skip_drives_equal_autograd(loss):
    net = skip_mlp(loss)
    x, y = batch_for(net)
    _check_drives(net, x, y, random_state(net, x.shape[0]))


def test_a_skip_is_a_term_of_phi_that_changes_the_dynamics():
    """The same chain weights without the skip give another Phi, other drives and another equilibrium: a
    relaxer or a Phi that left the skip out would fail the checks here and above."""
    net = skip_conv("conv halved and quartered")
    chain = EqNetwork(ModelConfig(**{**net.cfg.__dict__, "skips": []})).double()
    chain.load_state_dict({k: v for k, v in net.state_dict().items() if k in chain.state_dict()})
    x, y = batch_for(net)
    s = random_state(net, x.shape[0])
    with torch.no_grad():
        assert float((net.phi(x, s) - chain.phi(x, s)).abs().min()) > 1e-6
    a = free_phase(net, net.prepare(x, y), 60).state
    b = free_phase(chain, chain.prepare(x, y), 60).state
    assert _max_diff(a, b) > 1e-3


needs_triton = pytest.mark.skipif(not triton_available() or os.environ.get("TRITON_INTERPRET") != "1",
                                  reason="needs Triton's interpreter (TRITON_INTERPRET=1)")


@pytest.mark.parametrize("kernels", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("name", list(NETS))
def test_every_relaxer_composes_the_skips(name, kernels):
    """Sync steps against the interactions' reference drives; the red-black sweep reaches a fixed point of
    the same Eq. 8; the incremental drives with float64 increments are the recomputed ones; batched
    +-beta phases equal sequential ones."""
    net = skip_conv(name, scale=0.5)
    x, y = batch_for(net, 4)
    inp = net.prepare(x, y)
    sync = Relaxer(RelaxSettings(kernels=kernels))
    with torch.no_grad():
        for s in (random_state(net, 4), net.init_state(4)):
            for beta in (0.0, 0.6):
                assert _max_diff(sync.step(net, inp, s, beta), reference_step(net, inp, s, beta)) <= 1e-12
        s0 = random_state(net, 4)
        ref = sync.block(net, inp, s0, 0.3, 20).state
        inc = Relaxer(RelaxSettings(kernels=kernels, precision="bf16_incremental", recompute_every=7,
                                    delta_dtype=torch.float64))
        assert _max_diff(inc.block(net, inp, s0, 0.3, 20).state, ref) <= 1e-12
    red_black = free_phase(net, inp, 400, tol=1e-13, relaxer=Relaxer(RelaxSettings(schedule="async", kernels=kernels)))
    assert red_black.delta < 1e-13
    with torch.no_grad():
        assert _max_diff(reference_step(net, inp, red_black.state), red_black.state) <= 1e-12


# measured on these networks and batches (float64, identity, init scale 0.4, beta 1e-3, K 12): symmetric EP
# against truncated BPTT, largest relative error of any layer at any t: conv skip MSE 1.4e-6, CE 1.5e-8;
# dense skips MSE 1.5e-6, CE 2.1e-8. Bounds a few times that, far below the one-sided errors (>= 1.1e-3 MSE,
# >= 2.2e-5 CE), so a skip's local update or drive that is off fails
GDU_BOUND = {"mse": 5e-6, "cross_entropy": 1e-7}
GDU_NETS = {"avg pools, conv skip": {"conv_skip1to3", "dense_skip2to4"},
            "avg pools, conv into dense": {"dense_skip1to3", "dense_skip2to4", "dense_skip1to4"}}


@pytest.mark.parametrize("name", list(GDU_NETS))
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gdu_step_wise_ep_follows_truncated_bptt_with_skips(name, loss):
    """Identity activation, contracting weights (the GDU theorem's setting, Ernoult et al. 2019): every
    layer's symmetric EP update, the skips' included, equals truncated BPTT's at every t."""
    net = skip_conv(name, loss, activation="identity", scale=0.4)
    x, y = batch_for(net, 6)
    r = gdu_check(net, x, y, T1=300, K=12, beta=1e-3)
    assert r["delta_free"] < 1e-12
    sym = r["estimators"]["symmetric"]
    assert GDU_NETS[name] <= set(sym), sorted(sym)
    for layer, m in sym.items():
        assert max(m["rel_error"]) <= GDU_BOUND[loss], f"{layer}: {max(m['rel_error']):.2e}"
        assert min(c for c in m["cosine"] if c == c) > 1 - 1e-9
    for layer, m in r["estimators"]["one_sided"].items():  # the O(beta) bias is visible: the check can tell
        assert m["rel_error"][-1] > 10 * sym[layer]["rel_error"][-1], layer


@pytest.mark.parametrize("skips,match", [
    ([[1, 2]], "non-adjacent"), ([[0, 2]], "non-adjacent"), ([[1, 9]], "non-adjacent"),
    ([[1, 3, 4]], r"\[from, to\] pairs"), ([[1, 3], [1, 3]], "twice"), ([[3, 5]], "dense layer into a conv"),
])
def test_bad_skips_are_refused_by_name(skips, match):
    cfg = ModelConfig(input_shape=[2, 12, 12], channels=[4, 4, 4, 4], kernels=[3] * 4, strides=[1] * 4,
                      paddings=[1] * 4, pools="iiii", hidden=[5, 5], skips=skips)
    if match == "dense layer into a conv":
        cfg.channels, cfg.kernels, cfg.strides, cfg.paddings, cfg.pools = [4, 4], [3] * 2, [1] * 2, [1] * 2, "ii"
        cfg.hidden, cfg.skips = [5, 5, 5], [[3, 5]]
        cfg.validate()  # dense -> dense is fine
        cfg.skips, cfg.hidden = [[3, 2]], [5]
        match = "non-adjacent"
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_a_conv_skip_that_cannot_fit_is_refused_with_both_shapes():
    cfg = ModelConfig(input_shape=[2, 20, 20], channels=[4, 4, 4, 4], kernels=[3] * 4, strides=[1] * 4,
                      paddings=[1] * 4, pools="mmmi", hidden=[], loss="cross_entropy", skips=[[1, 4]])
    cfg.validate()
    with pytest.raises(ConfigError, match=r"layer 1 is \(4, 10, 10\), layer 4 \(4, 2, 2\)"):
        EqNetwork(cfg)


def test_spiking_and_nir_refuse_skip_connections():
    from spikeep.spiking.simulator import SpikingSimulator

    net = skip_mlp()
    with pytest.raises(ValueError, match="skip connections.*1 -> 3, 2 -> 4.*model.neurons = 'rate'"):
        SpikingSimulator(net)
    cfg = ModelConfig(hidden=[8, 8, 8], skips=[[1, 3]], neurons="spiking")
    with pytest.raises(ConfigError, match="spiking simulator runs chains"):
        cfg.validate()


def _cifar_npz():
    from pathlib import Path
    p = Path(os.environ.get("SPIKEEP_DATA", "")) / "cifar10" / "cifar10.npz"
    return p if p.is_file() else None


@pytest.mark.skipif(_cifar_npz() is None, reason="CIFAR-10 npz not found under $SPIKEEP_DATA")
def test_the_shipped_skip_convnet_trains_a_few_iterations(tmp_path):
    """spikeep/config/shipped/cifar10_skip.toml, narrowed for the CPU (channels / 16, short phases), on 32
    real CIFAR-10 images: it builds with the full config's shapes and skips, trains two iterations, its
    skips learn (their weights move) and the loss is finite; the full-width network is for a GPU."""
    import numpy as np
    from spikeep.training.trainer import train
    from spikeep.training.validation import load_config

    with np.load(_cifar_npz(), allow_pickle=False) as z:
        small = tmp_path / "c.npz"
        np.savez(small, x_train=z["x_train"][::1500][:32], y_train=z["y_train"][::1500][:32],
                 x_test=z["x_test"][::600][:16], y_test=z["y_test"][::600][:16])
    over = [f"data.npz={small}", "model.channels=[4,4,8,8,16,16,32]", "dynamics.T1=8", "dynamics.T2=3",
            "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=16", "dynamics.device=cpu"]
    cfg = load_config("cifar10_skip", over)
    assert cfg.model.skips == [[1, 3], [2, 4], [3, 5], [4, 6]]
    res = train(cfg, tmp_path / "run", progress=False, echo=False)
    assert len(res.history) == 1 and np.isfinite(res.history[0]["train_loss"])
    torch.manual_seed(cfg.train.seed)
    init = EqNetwork(cfg.model)
    assert [a for a, b in init.edges if b != a + 1] == [1, 2, 3, 4]
    moved = {k: float((v.cpu() - init.state_dict()[k]).abs().max()) for k, v in res.net.state_dict().items()}
    assert all(moved[f"synapses.{j}.weight"] > 0 for j in range(7, 11)), moved


def test_a_skip_learns_with_its_target_layers_rate():
    """train.lrs keeps one entry per chain layer (readout last); a skip into layer b gets layer b's."""
    from spikeep.training.build import make_optimizer
    from spikeep.training.validation import load_config

    cfg = load_config("quickstart", ["model.hidden=[9,8,7]", "model.skips=[[1,3],[1,4]]", "model.loss=mse",
                                     "train.lrs=[0.4,0.3,0.2,0.1]"])
    net = EqNetwork(cfg.model)
    groups = make_optimizer(net, cfg).param_groups
    assert [g["lr"] for g in groups] == [0.4, 0.3, 0.2, 0.1, 0.2, 0.1]
    assert [g["params"][0] is p for g, p in zip(groups, (s.weight for s in net.synapses))] == [True] * 6
    with pytest.raises(ConfigError, match="train.lrs has 5 entries for 4 layers"):
        load_config("quickstart", ["model.hidden=[9,8,7]", "model.skips=[[1,3]]", "model.loss=mse",
                                   "train.lrs=[0.4,0.3,0.2,0.1,0.1]"])
