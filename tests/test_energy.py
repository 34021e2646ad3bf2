"""Energy estimates a chip designer can check: the breakdown by part recomputed independently from
counted events (neurons x steps, spikes, spikes x synapses, input events) for a small network and each
way a chip can take the input, and no profile presenting a missing figure as found in its source."""
import math
import re
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO

# Davies et al. 2018, Table 2 (Loihi), written out here rather than read from chips.py
SYNOP, SPIKE, NEURON, UPDATE = 23.6e-12, 1.7e-12, 81e-12, 120e-12
BIAS_WRITE = SYNOP  # loihi2 charges a bias write as one synaptic spike operation (its documented choice)
HIDDEN, N_CLASSES, N_IN, T = [12, 8], 10, 784, 40


def _sim(encoding="current", chip_input=""):
    from spikeep.training.build import build_network, make_learner
    from spikeep.training.validation import load_config

    over = [f"model.hidden={HIDDEN}", "model.neurons=\"spiking\"", f"spiking.T1={T}", "spiking.T2=20",
            "spiking.window=20", f"spiking.encoding=\"{encoding}\"", "plasticity.profile=\"loihi2\"",
            "train.lrs=[0.1, 0.1, 0.05]", "model.init_scale=3.0"]
    if chip_input:
        over.append(f"spiking.chip_input=\"{chip_input}\"")
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", over)
    net = build_network(cfg, torch.device("cpu"))
    return cfg, make_learner(cfg, net).sim


def _fan_out_by_hand() -> tuple[int, list[int]]:
    """Synapses each spike reaches in the 784-12-8 network with a 10-class softmax readout: forward to
    the next layer, back to the layer below (not the input), the readout from the last layer."""
    sizes = HIDDEN
    out = []
    for k, _ in enumerate(sizes):
        f = (sizes[k + 1] if k + 1 < len(sizes) else N_CLASSES) + (sizes[k - 1] if k > 0 else 0)
        out.append(f)
    return sizes[0], out


@pytest.mark.parametrize("chip_input,encoding", [("bias", "current"), ("spikes", "current"), ("spikes", "given")])
def test_energy_breakdown_recomputed_from_counted_events(chip_input, encoding):
    from spikeep.training.evaluation import Evaluation
    from spikeep.hardware.energy import energy_columns

    cfg, sim = _sim("current", chip_input)
    g = torch.Generator().manual_seed(0)
    B = 3
    x = torch.rand(B, 1, 28, 28, generator=g) * (torch.rand(B, 1, 28, 28, generator=g) < 0.3)  # sparse, in [0, 1]
    train = (torch.rand(T, B, 1, 28, 28, generator=g) < x).float() if encoding == "given" else None
    ph = sim.run_phase(sim.net.prepare(x), None, T, input_spikes=train, record=B)
    assert ph.steps == T

    # counted independently: spikes from the recorded rasters (every sample, every step), synapses by hand
    fo_in, fo = _fan_out_by_hand()
    spikes = [float(r.sum()) for r in ph.raster]
    assert sum(spikes) > 0
    neuron_updates = sum(HIDDEN) * T * B
    synops = sum(s * f for s, f in zip(spikes, fo))
    if encoding == "given":  # simulated input spikes, each reaching the first layer's synapses
        in_spikes = float(train.sum())
        in_synops = in_spikes * fo_in
    else:  # a rate code with p = x per step: its expected spikes
        in_spikes = float(x.sum()) * T
        in_synops = in_spikes * fo_in
    bias_writes = HIDDEN[0] * B  # one per first-layer neuron, once for the phase
    if chip_input == "bias":
        want_input = bias_writes * BIAS_WRITE
    else:
        want_input = in_spikes * SPIKE + in_synops * SYNOP
    want = {"energy_input_J": want_input / B, "energy_synaptic_J": synops * SYNOP / B,
            "energy_neuron_J": neuron_updates * NEURON / B, "energy_spikes_J": sum(spikes) * SPIKE / B}

    # the code's columns, through the trainer's path (per-inference events of an Evaluation)
    ev = Evaluation(0.0, 0.0, 0.0, 0.0, T, ph.counts.events().scaled(1 / B))
    stats = SimpleNamespace(seen=B, updates=10 * B, events=ph.counts.events()._asdict())
    row = energy_columns(cfg, ev, stats)
    for k, v in want.items():
        assert row[k] == pytest.approx(v, rel=1e-9), k
    assert row["energy_estimate_inference_J"] == pytest.approx(sum(want.values()), rel=1e-9)
    assert row["energy_estimate_learning_J"] == pytest.approx(sum(want.values()) + 10 * UPDATE, rel=1e-9)
    assert row["energy_input_mode"] == chip_input
    assert row["energy_estimate_leaves_out"] == "" and row["energy_figures_found_in_source"] is True
    if chip_input == "bias":  # a bias write per neuron, not per pixel per synapse per step
        assert row["energy_input_J"] < 0.01 * row["energy_estimate_inference_J"]


def test_loihi2_takes_a_bias_by_default_and_poisson_input_takes_spikes():
    from spikeep.config import ConfigError
    from spikeep.training.validation import load_config

    cfg, _ = _sim()
    assert cfg.spiking.chip_input == "bias"
    base = REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"
    poisson = ["model.neurons=\"spiking\"", "spiking.encoding=\"poisson\"", "plasticity.profile=\"loihi2\""]
    assert load_config(base, poisson).spiking.chip_input == "spikes"  # the only way a Poisson-driven network can be priced
    with pytest.raises(ConfigError, match="chip_input = 'bias'"):
        load_config(base, poisson + ["spiking.chip_input=\"bias\""])
    assert load_config(base, ["model.neurons=\"spiking\"", "spiking.encoding=\"poisson\"",
                              "plasticity.profile=\"memristor\""]).spiking.chip_input == "spikes"
    with pytest.raises(ConfigError, match="needs inputs in \\[0, 1\\]"):
        load_config(base, ["model.neurons=\"spiking\"", "plasticity.profile=\"spinnaker\"", "data.mean=[0.13]",
                           "data.std=[0.31]"])


def test_no_profile_presents_a_missing_figure_as_found_in_its_source():
    from spikeep.hardware.chips import PROFILES
    from spikeep.hardware.energy import energy_columns
    from spikeep.training.evaluation import Evaluation
    from spikeep.spiking.metrics import ChipEvents

    ev = Evaluation(0.0, 0.0, 0.0, 0.0, 40, ChipEvents(1e4, 100.0, 500.0, 50.0, 600.0, 12.0))
    stats = SimpleNamespace(seen=2, updates=30, events=ChipEvents(3e4, 300.0, 1500.0, 150.0, 1800.0, 36.0)._asdict())
    for p in PROFILES.values():
        for mode in ("spikes", "bias"):
            cfg = SimpleNamespace(plasticity=SimpleNamespace(profile=p.name), spiking=SimpleNamespace(chip_input=mode))
            row = energy_columns(cfg, ev, stats)
            values = [v for k, v in row.items() if k.endswith("_J")]
            assert not any(isinstance(v, float) and math.isnan(v) for v in values), (p.name, row)
            if not p.energy.has_figures():  # nothing priced: no joules, no claim, and it says so
                assert values == [] and "energy_figures_found_in_source" not in row
                assert "no energy figures" in row["energy_estimate_source"] and row["energy_estimate_leaves_out"]
                continue
            used = (["spike", "synop"] if mode == "spikes" else ["input"]) + ["synop", "neuron_update", "spike", "update"]
            assert bool(row["energy_estimate_leaves_out"]) == any(getattr(p.energy, f) is None for f in used)
            for part in ("energy_input_J", "energy_synaptic_J", "energy_neuron_J", "energy_spikes_J"):
                assert row[part] is None or row[part] > 0  # unknown, never a made-up zero or NaN
            found = row.get("energy_figures_found_in_source")
            assert found == all(s.verified for s in p.energy.sources
                                if s.figure != "input" or mode == "bias")
            # every source quoted whole: its full citation and where in it, nothing cut at a comma
            for s in p.energy.sources:
                if s.figure != "input" or mode == "bias":
                    assert s.citation in row["energy_estimate_source"] and s.where in row["energy_estimate_source"]
    assert "11,014 GOP/s/W" in energy_columns(SimpleNamespace(plasticity=SimpleNamespace(profile="memristor"),
                                                              spiking=SimpleNamespace(chip_input="")),
                                              ev, stats)["energy_estimate_source"]


def test_every_source_is_a_full_citation():
    from spikeep.hardware.chips import PROFILES

    for p in PROFILES.values():
        for s in p.energy.sources:  # authors and year, title, venue with volume or proceedings
            assert re.search(r"\b(19|20)\d\d, [^,]+, .+", s.citation), s.citation
            assert s.where and (not s.verified or "Table" in s.where or "p." in s.where), (p.name, s.where)
