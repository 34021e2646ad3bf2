"""Quantized local synaptic updates (issue 6, first part): grid, range, rounding, residual, devices."""
import math

import pytest
import torch

from spikeep.learning.plasticity import (QuantizedSynapses, SynapseSpec, depression_curve, layer_scale,
                                potentiation_curve)


def _layer(bits, rounding="nearest", seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    w0 = (torch.rand(64, 32, generator=g, dtype=torch.float64) - 0.5) * 0.2
    return w0, QuantizedSynapses(w0, SynapseSpec(bits=bits, rounding=rounding, **kw), g)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "residual"])
def test_weights_stay_on_the_grid_and_in_range(bits, rounding):
    w0, q = _layer(bits, rounding, scale="pow2" if bits == 8 else "init")
    w = w0.clone()
    q.apply(w, w.clone())
    g = torch.Generator().manual_seed(1)
    for step in range(30):
        dw = torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.05 * (3 if step % 7 == 0 else 1)
        q.apply(w, w + dw)
        c = w / q.scale
        assert torch.allclose(c, c.round(), atol=1e-9), "off the grid"
        assert float(c.abs().max()) <= q.spec.c_max + 1e-9, "out of range"
        if bits == 1:
            assert set(c.round().unique().tolist()) <= {-1.0, 1.0}
    if bits == 8:
        assert math.log2(q.scale) == round(math.log2(q.scale))  # Loihi-like power-of-two scale


def test_scale_rules():
    w = torch.tensor([0.5, -1.27, 0.3])
    assert layer_scale(w, SynapseSpec(bits=8)) == pytest.approx(1.27 / 127)
    assert layer_scale(w, SynapseSpec(bits=8, scale="pow2")) == 2.0 ** math.ceil(math.log2(1.27 / 127))
    assert layer_scale(w, SynapseSpec(bits=1)) == pytest.approx(float(w.abs().mean()))


def test_stochastic_rounding_is_unbiased():
    torch.manual_seed(0)
    w0, q = _layer(4, "stochastic", seed=3)
    spec_scale = q.scale
    w = q.weight().clone()
    dw = torch.full_like(w, 0.37 * spec_scale)  # a third of a step, well inside the range for most synapses
    inside = (w / spec_scale).abs() <= q.spec.c_max - 2
    moves = []
    for trial in range(400):
        q.codes = (w / spec_scale).round().clone()
        out = w.clone()
        q.apply(out, w + dw)
        moves.append(((out - w) / spec_scale)[inside])
    m = torch.stack(moves)
    mean = float(m.mean())
    stderr = float(m.std()) / math.sqrt(m.numel())
    assert abs(mean - 0.37) < 4 * stderr + 1e-3, (mean, stderr)
    # nearest rounding of the same move is biased: it never moves
    _, qn = _layer(4, "nearest", seed=3)
    out = qn.weight().clone()
    qn.apply(out, out + dw)
    assert torch.equal(out, qn.scale * qn.codes) and float((out - qn.weight()).abs().max()) == 0


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_residual_accumulator_never_loses_update_mass(bits):
    w0, q = _layer(bits, "residual", seed=5)
    w = q.weight().clone()
    start = w.clone()
    g = torch.Generator().manual_seed(7)
    total = torch.zeros_like(w)
    spacing = 2.0 if bits == 1 else 1.0
    never_clipped = torch.ones_like(w, dtype=torch.bool)
    for _ in range(50):
        dw = torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.1 * spacing * q.scale  # mostly below a step
        total += dw
        q.apply(w, w + dw)
        # the range limit is the one place mass goes: there the residual sits at its bound
        lo = (-q.spec.c_max - q.codes) / spacing - 0.5
        hi = (q.spec.c_max - q.codes) / spacing + 0.5
        never_clipped &= (q.residual > lo + 1e-9) & (q.residual < hi - 1e-9)
    held = (w - start) + q.residual * spacing * q.scale
    assert int(never_clipped.sum()) > w.numel() // 4
    torch.testing.assert_close(held[never_clipped], total[never_clipped], rtol=0, atol=1e-12)
    assert float((w - start).abs().max()) > 0  # small moves did add up into whole steps


def test_threshold_drops_small_moves():
    _, q = _layer(8, "nearest", threshold=2.0)
    w = q.weight().clone()
    out = w.clone()
    q.apply(out, w + 1.4 * q.scale)  # rounds to one step, but below the threshold of 2
    assert torch.equal(out, w)
    q.apply(out, w + 2.6 * q.scale)
    inside = (w / q.scale) <= q.spec.c_max - 3
    torch.testing.assert_close(((out - w) / q.scale)[inside], torch.full_like(w, 3.0)[inside])


def test_memristor_follows_its_curves():
    L = 16
    spec = SynapseSpec(bits=8, device="memristor", levels=L, nu_p=3.0, nu_d=1.5)
    w0 = torch.full((1, 5), -10.0, dtype=torch.float64)  # starts at G = 0 (the lowest weight)
    w0[0, 0] = 10.0
    q = QuantizedSynapses(w0 * 0 - 1.0, spec)  # all at G = 0
    q.g = torch.zeros(1, 5, dtype=torch.float64)
    unit = q.scale * 2 * spec.c_max / (L - 1)
    w = q.weight().clone()
    for k in range(1, L + 3):  # one potentiating pulse each, past the top
        q.apply(w, w + unit)
        expect = potentiation_curve(torch.tensor(float(min(k, L - 1))), L, 3.0)
        torch.testing.assert_close(q.g, torch.full_like(q.g, float(expect)))
    assert float(q.g.max()) == pytest.approx(1.0)
    for k in range(1, L):  # now depress: along the other branch
        q.apply(w, w - unit)
        expect = depression_curve(torch.tensor(float(L - 1 - k)), L, 1.5)
        torch.testing.assert_close(q.g, torch.full_like(q.g, float(expect)))
    # steps are conductance-dependent and asymmetric: first potentiation step > last one
    steps = torch.diff(potentiation_curve(torch.arange(L, dtype=torch.float64), L, 3.0))
    assert steps[0] > 3 * steps[-1]
    # a linear memristor (nu = 0) has equal steps
    lin = torch.diff(potentiation_curve(torch.arange(L, dtype=torch.float64), L, 0.0))
    torch.testing.assert_close(lin, torch.full_like(lin, 1 / (L - 1)))


def test_memristor_cycle_to_cycle_noise():
    L = 64
    spec = SynapseSpec(bits=8, device="memristor", levels=L, noise=0.2)
    w0 = torch.zeros(200, 50, dtype=torch.float64)
    w0[0, 0] = 1.0  # sets the range; every other synapse starts in the middle (G = 0.5)
    q = QuantizedSynapses(w0, spec, torch.Generator().manual_seed(0))
    g0 = q.g.clone()
    w = q.weight().clone()
    unit = q.scale * 2 * spec.c_max / (L - 1)
    q.apply(w, w + unit)
    step = (q.g - g0) * (L - 1)  # in ideal linear steps
    assert abs(float(step.mean()) - 1) < 0.01 and abs(float(step.std()) - 0.2) < 0.01


@pytest.mark.parametrize("kw,message", [
    ({"bits": 17}, "weight bits must be 0"), ({"bits": -1}, "weight bits must be 0"),
    ({"bits": 4, "rounding": "floor"}, "unknown rounding 'floor'"),
    ({"bits": 4, "scale": "log"}, "unknown scale rule 'log'"),
    ({"bits": 4, "device": "pcm"}, "unknown device model 'pcm'"),
    ({"bits": 4, "threshold": -1.0}, "must be >= 0"),
    ({"bits": 1, "device": "memristor"}, "needs bits >= 2"),
    ({"bits": 4, "device": "memristor", "levels": 1}, "at least 2 conductance levels"),
])
def test_bad_specs(kw, message):
    with pytest.raises(ValueError, match=message):
        SynapseSpec(**kw)
    with pytest.raises(ValueError, match="cannot derive a weight scale"):
        layer_scale(torch.zeros(3), SynapseSpec(bits=4))


@pytest.mark.parametrize("rounding", ["stochastic", "residual"])
def test_training_with_quantized_synapses_resumes_bitwise(tmp_path, monkeypatch, rounding):
    """Training keeps every weight on its layer's grid; a run interrupted mid-epoch resumes to the
    same weights (the checkpoint holds scales, codes, residuals and the rounding generator)."""
    from conftest import REPO, run_crash_resume
    from spikeep.training.validation import load_config
    from spikeep.training.checkpoint_files import load_checkpoint

    over = ["train.epochs=2", "data.subset=300", "model.hidden=[32]", "train.batch_size=25", "dynamics.T1=15",
            "dynamics.T2=5", "train.checkpoint_every=4", "plasticity.bits=4", f"plasticity.rounding={rounding}",
            "plasticity.headroom=2.0", "plasticity.scale=pow2"]
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", over)
    a, _ = run_crash_resume(cfg, tmp_path, monkeypatch)  # the resumed run ends on the same weights
    state = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["plasticity"]["layers"]
    for name, layer in zip(a.net.layer_names(), a.net.layers):
        c = layer.weight.detach() / state[name]["scale"]
        assert torch.equal(c, c.round()) and float(c.abs().max()) <= 7


# -- chip profiles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,bits,device", [("ideal", 0, "linear"), ("loihi2", 8, "linear"),
                                              ("brainscales2", 7, "linear"), ("spinnaker", 16, "linear"),
                                              ("memristor", 8, "memristor")])
def test_profiles_load_and_give_their_bits(name, bits, device):
    from spikeep.hardware.chips import get_profile
    from spikeep.training.validation import config_from_dict, synapse_spec

    cfg = config_from_dict({"plasticity": {"profile": name}, "model": {"neurons": "spiking"},
                            "train": {"lrs": [0.1, 0.1]}})
    assert cfg.plasticity.bits == bits and cfg.plasticity.device == device
    prof = get_profile(name)
    for k, v in prof.neuron.items():
        assert getattr(cfg.spiking, k) == v
    # explicit keys win over the profile's
    cfg = config_from_dict({"plasticity": {"profile": name, "rounding": "residual"}, "train": {"lrs": [0.1, 0.1]}})
    assert cfg.plasticity.rounding == "residual" and cfg.plasticity.bits == bits
    if name == "loihi2":  # one shared power-of-two exponent per layer
        w0 = torch.empty(64, 32).uniform_(-0.3, 0.3)
        s = layer_scale(w0, synapse_spec(cfg.plasticity))
        assert math.log2(s) == round(math.log2(s))


def test_bad_profiles_give_clear_errors():
    from spikeep.hardware.chips import ChipProfile, Energy, register_profile
    from spikeep.training.validation import config_from_dict
    from spikeep.config import ConfigError

    with pytest.raises(ConfigError, match="unknown chip profile 'truenorth'; known profiles: ideal, loihi2"):
        config_from_dict({"plasticity": {"profile": "truenorth"}, "train": {"lrs": [0.1, 0.1]}})
    with pytest.raises(ValueError, match="weight bits must be >= 1"):
        ChipProfile("mine", {"bits": -2})
    with pytest.raises(ValueError, match="fixed weight scale must be > 0"):
        ChipProfile("mine", {"bits": 4, "scale": 0.0})
    with pytest.raises(ValueError, match="energy per synop must be > 0"):
        ChipProfile("mine", {"bits": 4}, energy=Energy(synop=-1.0))
    with pytest.raises(ValueError, match="unknown synapse keys"):
        ChipProfile("mine", {"bits": 4, "colour": 1})
    with pytest.raises(ValueError, match="exists already"):
        register_profile(ChipProfile("loihi2", {"bits": 8}))
    with pytest.raises(ValueError, match="fixed weight scale must be a finite number > 0"):
        SynapseSpec(bits=4, scale=-0.5)
    assert layer_scale(torch.ones(3), SynapseSpec(bits=4, scale=0.25)) == 0.25


def test_energy_estimate_counts_and_unknown_figures():
    from spikeep.hardware.chips import get_profile
    from spikeep.hardware.energy import energy_estimate
    from spikeep.spiking.metrics import ChipEvents

    ev = ChipEvents(synops=1e4, spikes=100, neuron_updates=500, input_spikes=30, input_synops=2e3, bias_writes=7)
    e = energy_estimate(get_profile("loihi2"), ev, "spikes", updates=10)
    assert e["input"] == pytest.approx(30 * 1.7e-12 + 2e3 * 23.6e-12)
    assert e["total"] == pytest.approx(1e4 * 23.6e-12 + 100 * 1.7e-12 + 10 * 120e-12 + 500 * 81e-12
                                       + 30 * 1.7e-12 + 2e3 * 23.6e-12)
    assert e["complete"] and e["leaves_out"] == [] and "Davies et al. 2018, Loihi" in e["source"]
    e = energy_estimate(get_profile("loihi2"), ev, "bias")  # 7 writes, not 2,000 events
    assert e["input"] == pytest.approx(7 * 23.6e-12) and e["found_in_source"] is True
    e = energy_estimate(get_profile("spinnaker"), ev._replace(input_spikes=0, input_synops=0), "spikes")
    assert e["total"] == pytest.approx(1e4 * 8e-9) and not e["complete"] and e["spikes"] is None
    assert e["leaves_out"] == ["neuron updates", "spikes"] and "NOT found in the source" in e["source"]
    e = energy_estimate(get_profile("memristor"), ev._replace(spikes=0), "spikes")
    assert e["total"] == pytest.approx((1e4 + 2e3) * 0.18e-12)
    assert e["leaves_out"] == ["input spikes", "neuron updates"] and e["found_in_source"] is False
    e = energy_estimate(get_profile("memristor"), ev, "bias")
    assert e["input"] is None and "input bias writes" in e["leaves_out"]
    e = energy_estimate(get_profile("brainscales2"), ev)
    assert e["total"] is None and e["found_in_source"] is None and e["source"] == "no energy figures"


def test_every_energy_figure_has_its_provenance():
    from spikeep.hardware.chips import FIGURES, PROFILES, ChipProfile, Energy, Source, get_profile, provenance

    rows = provenance()
    for p in PROFILES.values():  # each figure given has exactly one source, and none is invented
        given = {k for k in FIGURES if getattr(p.energy, k) is not None}
        assert {r["figure"] for r in rows if r["profile"] == p.name} == given
    loihi = {r["figure"]: r for r in provenance("loihi2")}
    assert loihi["synop"]["joules"] == pytest.approx(23.6e-12) and "Table 2" in loihi["synop"]["where"]
    assert loihi["neuron_update"]["joules"] == pytest.approx(81e-12) and "81 / 52 pJ" in loihi["neuron_update"]["where"]
    assert all(r["kind"].startswith("pre-silicon estimate") and "0.75 V" in r["kind"] for r in loihi.values())
    spin = provenance("spinnaker")
    assert len(spin) == 1 and spin[0]["verified"] is False
    assert get_profile("spinnaker").energy.verified is False and get_profile("loihi2").energy.verified
    assert get_profile("memristor").energy.verified is False  # 11,014 GOP/s/W is not in the abstract cited first
    assert get_profile("brainscales2").energy.verified is None  # no figures: nothing found, nothing claimed
    with pytest.raises(ValueError, match="exactly one Source"):
        ChipProfile("nosource", {"bits": 4}, energy=Energy(synop=1e-12))
    with pytest.raises(ValueError, match="kind"):
        Source("synop", "someone", "Table 1", "a guess", True)


def test_spiking_run_with_a_profile_reports_energy_and_records_integer_codes(tmp_path):
    import numpy as np

    import spikeep.traces as traces
    from conftest import REPO
    from spikeep.training.validation import load_config
    from spikeep.training.trainer import train

    over = ["train.epochs=1", "data.subset=200", "model.hidden=[24]", "train.batch_size=20",
            "model.neurons=\"spiking\"", "spiking.T1=40", "spiking.T2=20", "spiking.window=20",
            "plasticity.profile=\"loihi2\"", "traces.enabled=true", "traces.sample=30", "traces.full_every=5"]
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", over)
    r = train(cfg, tmp_path, progress=False, echo=False)
    row = r.history[-1]
    assert row["spikes_per_inference"] > 0 and row["synops_per_inference"] >= row["spikes_per_inference"]
    # counted independently: every one of the 24 neurons is updated every step of the 40-step free
    # phase; loihi2 takes the input as a bias: one write per hidden neuron for the phase
    assert row["steps_inference"] == 40 and row["energy_input_mode"] == "bias"
    assert row["energy_neuron_J"] == pytest.approx(24 * 40 * 81e-12)
    assert row["energy_input_J"] == pytest.approx(24 * 23.6e-12)
    assert row["energy_spikes_J"] == pytest.approx(row["spikes_per_inference"] * 1.7e-12)
    assert row["energy_synaptic_J"] == pytest.approx(row["synops_per_inference"] * 23.6e-12)  # no input spikes
    expected = (row["synops_per_inference"] * 23.6e-12 + row["spikes_per_inference"] * 1.7e-12
                + 24 * 40 * 81e-12 + 24 * 23.6e-12)
    assert row["energy_estimate_inference_J"] == pytest.approx(expected)
    assert row["energy_estimate_learning_J"] > row["energy_estimate_inference_J"]
    assert row["energy_figures_found_in_source"] is True  # loihi2: every figure found in Davies et al. 2018, Table 2
    assert row["energy_estimate_source"].startswith("loihi2: Davies et al. 2018, Loihi: a neuromorphic manycore "
                                                    "processor with on-chip learning, IEEE Micro 38(1):82-99: Table 2")
    assert row["energy_estimate_leaves_out"] == ""
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "energy_estimate_inference_J" in header and "verified" not in header
    log = (tmp_path / "train.log").read_text()
    assert "energy estimate" in log and "Davies et al. 2018" in log and "as bias" in log
    assert (tmp_path / "raster.png").stat().st_size > 0 and (tmp_path / "rate_convergence.png").stat().st_size > 0
    with traces.open(tmp_path / "traces.h5") as t:
        for name, layer in zip(r.net.layer_names(), r.net.layers):
            lt = t[name]
            assert lt.quantized and lt.group.attrs["bits"] == 8
            codes, w = lt.sample_code[:], lt.sample_weight[:]
            assert codes.dtype == np.int16 and np.abs(codes).max() <= 127
            assert np.allclose(codes * lt.scale, w, rtol=0, atol=1e-6)
            assert "weight" not in lt.group and lt.weight_code.dtype == np.int16
            assert np.allclose(lt.weights(-1), layer.weight.detach().numpy(), atol=1e-6)
        assert "quantized: 8-bit codes" in traces.info(tmp_path / "traces.h5")
