"""Unidirectional networks (Laborieux et al. 2021, section 2.4, Eqs. 20-21): separate feedback weights,
the symVF and symKP-VF estimates, the alignment angle (issue: Table 2 complete, acceptance a)."""
import pytest
import torch

from conftest import REPO, batch_for, random_state
from spikeep.training.validation import config_from_dict, load_config
from spikeep.config import ConfigError, ModelConfig
from spikeep.core.network import EqNetwork
from spikeep.learning.ep import ep_gradients
from spikeep.learning.alignment import alignment_angles
from spikeep.training.trainer import train

CONV = dict(input_shape=[1, 12, 12], channels=[4, 6], kernels=[3, 3], strides=[1, 1], paddings=[1, 1], pools="mm",
            hidden=[9], n_classes=5)


def nets(loss="cross_entropy", seed=0, **kw):
    """A unidirectional network and its bidirectional twin with the same forward weights."""
    torch.manual_seed(seed)
    uni = EqNetwork(ModelConfig(**{**CONV, **kw}, loss=loss, unidirectional=True)).double()
    torch.manual_seed(seed)
    bi = EqNetwork(ModelConfig(**{**CONV, **kw}, loss=loss)).double()
    bi.load_state_dict({k: v for k, v in uni.state_dict().items() if "weight_b" not in k})
    return uni, bi


def tie(uni):
    with torch.no_grad():
        for layer in uni.layers:
            if hasattr(layer, "weight_b"):
                layer.weight_b.copy_(layer.weight)


def test_feedback_goes_through_w_b_and_equals_autograd_when_tied():
    uni, bi = nets()
    x, y = batch_for(uni)
    s = random_state(uni, 5)
    inp = uni.prepare(x, y)
    # independent feedback weights: the drives differ from the bidirectional twin's
    assert any(not torch.allclose(a, b) for a, b in zip(uni.drives(inp, s, 0.3), bi.drives(bi.prepare(x, y), s, 0.3)))
    tie(uni)
    for beta in (0.0, 0.3):
        with torch.no_grad():
            explicit = uni.drives(inp, s, beta)
        st = tuple(v.clone().requires_grad_(True) for v in s)
        auto = torch.autograd.grad(uni.phi(x, st, beta, y).sum(), st)  # Phi of the tied network
        for e, a in zip(explicit, auto):
            torch.testing.assert_close(e, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_sym_vf_with_tied_weights_is_the_symmetric_estimate(loss):
    uni, bi = nets(loss)
    tie(uni)
    x, y = batch_for(uni, 6)
    ep_gradients(bi, x, y, "symmetric", 0.4, 40, 15)
    ep_gradients(uni, x, y, "sym_vf", 0.4, 40, 15)
    for n, p in bi.named_parameters():
        torch.testing.assert_close(dict(uni.named_parameters())[n].grad, p.grad, rtol=1e-12, atol=1e-15)
    for n, p in uni.named_parameters():
        if n.endswith("weight_b"):
            torch.testing.assert_close(p.grad, dict(uni.named_parameters())[n[:-2]].grad, rtol=0, atol=0)


def test_sym_kp_vf_gives_w_f_and_w_b_the_same_update_with_leakage():
    uni, _ = nets()
    x, y = batch_for(uni, 6)
    ep_gradients(uni, x, y, "sym_vf", 0.4, 40, 15)
    vf = {n: p.grad.clone() for n, p in uni.named_parameters()}
    ep_gradients(uni, x, y, "sym_kp_vf", 0.4, 40, 15, kp_leak=0.1)
    params = dict(uni.named_parameters())
    pairs = [n[:-2] for n in params if n.endswith("weight_b")]
    assert pairs == ["synapses.1.weight", "synapses.2.weight"]
    for f in pairs:
        b = f + "_b"
        mean = (vf[f] + vf[b]) / 2
        torch.testing.assert_close(params[f].grad - 0.1 * params[f].detach(), mean)
        torch.testing.assert_close(params[b].grad - 0.1 * params[b].detach(), mean)
        # the same update: the difference w_f - w_b only shrinks
        torch.testing.assert_close(params[f].grad - params[b].grad, 0.1 * (params[f] - params[b]).detach())


def test_alignment_angle():
    uni, _ = nets(channels=[16, 32], hidden=[200])
    angles = {k: float(v) for k, v in alignment_angles(uni).items()}
    assert set(angles) == {"uniconv1", "unidense2"}
    assert all(80 < a < 100 for a in angles.values()), angles  # independent random weights
    tie(uni)
    assert all(a < 1e-5 for a in map(float, alignment_angles(uni).values()))


def test_config_checks_and_angles_in_metrics(tmp_path):
    with pytest.raises(ConfigError, match="set model.unidirectional = true"):
        config_from_dict({"estimator": {"name": "sym_kp_vf"}, "train": {"lrs": [0.1, 0.1]}})
    with pytest.raises(ConfigError, match="feedback weights would stay in float"):
        config_from_dict({"model": {"unidirectional": True}, "plasticity": {"bits": 8}, "train": {"lrs": [0.1, 0.1]}})
    over = ["model.unidirectional=true", "estimator.name=sym_kp_vf", "estimator.kp_leak=0.05", "model.hidden=[32,16]",
            "train.lrs=[0.1,0.05,0.05]", "data.subset=300", "train.batch_size=25", "dynamics.T1=15",
            "dynamics.T2=5", "train.epochs=2"]
    r = train(load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", over), tmp_path / "run", progress=False, echo=False)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert [h for h in header if h.startswith("angle_")] == ["angle_unidense1"]  # the readout stays symmetric
    assert r.history[-1]["angle_unidense1"] < r.history[0]["angle_unidense1"] < 90  # leakage aligns them
    assert (tmp_path / "run" / "angles.png").read_bytes()[:4] == b"\x89PNG"


# -- dropout (the paper's supplementary 4.5) ----------------------------------------------------------

def test_dropout_mask_is_the_same_in_every_phase_and_off_in_evaluation(monkeypatch):
    import spikeep.core.relaxer as relaxer

    torch.manual_seed(0)
    net = EqNetwork(ModelConfig(**CONV, loss="cross_entropy", dropout=0.3)).double()
    assert net.dropout_layer == 1  # the last conv layer's neurons
    x, y = batch_for(net, 6)
    mask = net.draw_mask(6, torch.Generator().manual_seed(1))
    assert mask.shape == (6, *net.layer_shapes[1]) and set(mask.unique().tolist()) == {0.0, 1 / 0.7}
    seen = []
    real = relaxer.Relaxer.step

    def spy(self, net, inp, state, beta=0.0):
        seen.append(inp.mask)
        return real(self, net, inp, state, beta)

    monkeypatch.setattr(relaxer.Relaxer, "step", spy)
    ep_gradients(net, x, y, "symmetric", 0.5, 10, 4, mask=mask)
    assert len(seen) == 18 and all(m is mask for m in seen)  # free, +beta, -beta: one mask
    seen.clear()
    from spikeep.training.learners import RateEP
    RateEP(net, "symmetric", 0.5, 10, 4).free_equilibrium(x)
    assert seen and all(m is None for m in seen)  # evaluation: no dropout
    monkeypatch.undo()
    # masked neurons neither drive the layers above nor learn through them, and the drives are still
    # the gradient of the masked Phi
    s = random_state(net, 6)
    inp = net.prepare(x, y)._replace(mask=mask)
    with torch.no_grad():
        explicit = net.drives(inp, s, 0.4)
    st = tuple(v.clone().requires_grad_(True) for v in s)
    auto = torch.autograd.grad(net.phi(x, st, 0.4, y, mask).sum(), st)
    for e, a in zip(explicit, auto):
        torch.testing.assert_close(e, a, rtol=1e-10, atol=1e-12)
    g = net.dphi_dtheta(inp, s, 0.0)
    g0 = net.dphi_dtheta(inp._replace(mask=None), tuple(v if k != 1 else v * mask for k, v in enumerate(s)), 0.0)
    torch.testing.assert_close(g["synapses.2.weight"], g0["synapses.2.weight"])


def test_dropout_trains_and_bptt_unrolls_with_one_mask(tmp_path):
    over = ["model.dropout=0.1", "model.hidden=[32]", "data.subset=300", "train.batch_size=25", "dynamics.T1=15",
            "dynamics.T2=5", "train.epochs=2"]
    for est in ("symmetric", "bptt"):
        r = train(load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", over + [f"estimator.name={est}"]), tmp_path / est,
                  progress=False, echo=False)
        assert r.history[-1]["test_acc"] > 40


def test_angles_in_the_weight_traces(tmp_path):
    from spikeep import traces

    over = ["model.unidirectional=true", "estimator.name=sym_kp_vf", "estimator.kp_leak=0.05", "model.hidden=[32,16]",
            "train.lrs=[0.1,0.05,0.05]", "data.subset=200", "train.batch_size=25", "dynamics.T1=15",
            "dynamics.T2=5", "train.epochs=1", "traces.enabled=true", "traces.sample=10"]
    r = train(load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", over), tmp_path / "run", progress=False, echo=False)
    with traces.open(tmp_path / "run" / "traces.h5") as t:
        lt = t["unidense1"]
        assert lt.angle.shape == (t.n_rows(),) and not hasattr(t["dense0"], "angle")
        assert abs(float(lt.angle[-1]) - r.history[-1]["angle_unidense1"]) < 1e-3
        assert (lt.sample_weight[-1] != 0).all()


def test_table2_script_places_runs_in_their_rows(tmp_path):
    import subprocess
    import sys

    base = ["model.hidden=[32,16]", "train.lrs=[0.1,0.05,0.05]", "data.subset=200", "train.batch_size=25",
            "dynamics.T1=15", "dynamics.T2=5", "train.epochs=2"]
    for name, extra in (("bi", []), ("kp", ["model.unidirectional=true", "estimator.name=sym_kp_vf",
                                           "estimator.kp_leak=0.05"])):
        train(load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", base + extra), tmp_path / name, progress=False, echo=False)
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "table2.py"), str(tmp_path / "bi"), str(tmp_path / "kp"),
                        "--out", str(tmp_path / "t2")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "t2" / "table2.md").read_text()
    assert "| EP symmetric, cross-entropy | quickstart | mnist-quickstart | 2 |" in table and "| 11.68 % |" in table
    assert "| unidirectional, EP symKP-VF |" in table and "| 13.18 % |" in table
    for f in ("figure4.png", "figure5.png"):
        assert (tmp_path / "t2" / f).read_bytes()[:4] == b"\x89PNG"
