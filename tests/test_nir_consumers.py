"""NIR's own neuron (spiking.reset = "zero", spiking.v_min = "none"): trains, exports without
--approximate, and the exported MLP and ConvNet run in Norse, snnTorch and sinabs (the Speck
toolchain's simulator) with exactly the twin's spike counts; what each importer does on its own
(the upstream errors the README quotes) is pinned here too, so a fixed upstream bug shows up."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import REPO, batch_for, small_conv, small_mlp
from spikeep.cli import main
from spikeep.config import ConfigError
from spikeep.spiking.neurons import NeuronParams, NeuronState, exact_in_nir, neuron_step
from spikeep.spiking.simulator import SpikingParams, SpikingSimulator
from spikeep.training.nir_consumers import has_cycle, run_in_sinabs, run_in_snntorch
from spikeep.training.nir_export import ExportError, read_graph, run_in_norse, to_nir
from spikeep.training.trainer import train
from spikeep.training.validation import load_config, spiking_params

nir = pytest.importorskip("nir")
QUICK = REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"
EXACT = SpikingParams(NeuronParams(reset="zero", v_min=-math.inf))
INSTALL = {"snntorch": "pip install snntorch==1.0.0 (in the test extra)",
           "sinabs": "pip install --no-deps sinabs==3.1.3 pbr (its nir <= 1.0.4 pin cannot hold IF.v_reset; "
                     ".ci/run installs it so)",
           "rockpool": "pip install --no-deps rockpool==3.1.0 (.ci/run installs it so)"}


def need(module: str):
    return pytest.importorskip(module, reason=f"{module} is not installed: {INSTALL[module]}")


def nets():
    """The MLP (one hidden layer, softmax readout) and the ConvNet (conv 4c3, average pool, readout)."""
    mlp = small_mlp(loss="cross_entropy", hidden=(16,), scale=2.0).float()
    conv = small_conv(pools="a", channels=(4,), paddings=(1,), strides=(1,), loss="cross_entropy", scale=3.0).float()
    return {"mlp": (mlp, 400), "convnet": (conv, 120)}


def twin(net, x, steps):
    """spikeep's own spiking simulation of the network: spike counts per layer over `steps` steps
    (one window) and the readout of their rates."""
    with torch.no_grad():
        ph = SpikingSimulator(net, dataclasses.replace(EXACT, window=steps)).run_phase(net.prepare(x), None, steps)
        return [(r * steps).round() for r in ph.rates], net.logits(ph.rates)


def exported(net, tmp_path, params=EXACT, **kw):
    path = tmp_path / "g.nir"
    nir.write(str(path), to_nir(net, params, **kw))
    return read_graph(path)


def graph_input(net, x):
    return x.flatten(1) if net.synapses[0].flattens_input else x


def test_reset_to_zero_neuron():
    """v <- v + I; spike if v > theta; then v <- 0, with no lower bound: a constant current I fires
    every floor(theta / I) + 1 steps; the default neuron (subtract, clamp) is unchanged."""
    p = NeuronParams(reset="zero", v_min=-math.inf)
    assert exact_in_nir(p) and not exact_in_nir(NeuronParams()) and not exact_in_nir(NeuronParams(reset="zero"))
    current = torch.tensor([0.3, 0.7, 1.5, 2.5, -0.4])
    st, zs = NeuronState(torch.zeros(5), torch.zeros(5, dtype=torch.int32)), []
    for _ in range(60):
        z, st = neuron_step(current, st, p)
        assert bool((st.v[z > 0] == 0).all())  # exactly zero after a spike
        zs.append(z)
    period = torch.floor(2.0 / current[:4]) + 1
    assert torch.equal(torch.stack(zs).sum(0)[:4], torch.floor(60 / period))
    assert float(st.v[4]) == pytest.approx(-0.4 * 60, rel=1e-5)  # no bound below
    _, bounded = neuron_step(current, st, NeuronParams(reset="zero", v_min=-2.0))
    assert float(bounded.v[4]) == -2.0
    with pytest.raises(ValueError, match="reset must be 'subtract'"):
        SpikingParams(NeuronParams(reset="half"))


def test_config_keys_and_their_errors():
    cfg = load_config(QUICK, ['model.neurons="spiking"', 'spiking.reset="zero"', 'spiking.v_min="none"'])
    assert exact_in_nir(spiking_params(cfg.spiking).neuron)
    assert spiking_params(load_config(QUICK, []).spiking).neuron == NeuronParams()  # the default as it was
    for bad, match in (('spiking.reset="half"', "spiking.reset must be 'subtract'"),
                       ('spiking.v_min="never"', "spiking.v_min must be a number <= 0 or 'none'"),
                       ("spiking.v_min=0.5", "v_min must be a number <= 0")):
        with pytest.raises(ConfigError, match=match):
            load_config(QUICK, [bad])


def test_exact_neurons_export_without_approximate():
    """Nothing dropped for the MLPs (dense feedback is exact) and the one-layer ConvNet; what NIR still
    cannot express (conv feedback, a lower bound) needs approximate, and the default names the fix."""
    for net in (nets()["mlp"][0], small_mlp(hidden=(24, 16)).float(), nets()["convnet"][0]):
        g = to_nir(net, EXACT)
        assert g.metadata["spikeep"]["dropped"] == [] and g.metadata["reset"].startswith("zero")
        assert all("v_min" not in n.metadata for k, n in g.nodes.items() if k.startswith("if_"))
    with pytest.raises(ExportError, match="spiking.reset = 'zero' and spiking.v_min = 'none'"):
        to_nir(nets()["mlp"][0], SpikingParams())
    with pytest.raises(ExportError, match="lower bound v_min = -2.0") as e:
        to_nir(nets()["mlp"][0], SpikingParams(NeuronParams(reset="zero")))
    assert "reset by subtraction" not in str(e.value)
    with pytest.raises(ExportError, match="feedback of synapse 1"):
        to_nir(small_conv(pools="aa", loss="cross_entropy").float(), EXACT)


def test_quickstart_trains_with_exact_neurons_and_exports_with_the_cli(tmp_path, capsys):
    sets = ["data.subset=1000", "train.epochs=1", 'model.neurons="spiking"', "model.hidden=[64]", "spiking.T1=40",
            "spiking.T2=10", "spiking.window=10", 'spiking.reset="zero"', 'spiking.v_min="none"']
    run = tmp_path / "run"
    import json
    train(load_config(QUICK, sets), run, progress=False, echo=False)
    assert json.loads((run / "summary.json").read_text())["best_test_acc"] > 40.0  # chance: 10 %
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "net.nir")]) == 0  # no --approximate
    assert "not in the graph" not in capsys.readouterr().out
    g = read_graph(tmp_path / "net.nir")
    assert g.metadata["spikeep"]["dropped"] == [] and type(g.nodes["if_0"]).__name__ == "IF"
    from spikeep.training.evaluation import load_run
    from spikeep.data import prepare_data
    cfg, net, _ = load_run(run)
    x = prepare_data(cfg.data).test.x[:16].float()
    ours, logits = twin(net.float(), x, 40)
    counts, out = run_in_norse(g, x.flatten(1), 40)  # Norse as imported: its IF is this neuron
    assert torch.equal(counts["if_0"], ours[0]) and float(ours[0].sum()) > 100
    assert torch.equal((out / 40).argmax(1), logits.argmax(1))


CONSUMERS = {
    "norse": lambda g, x, t: run_in_norse(g, x, t),  # as imported, one image at a time where it flattens
    "snntorch": run_in_snntorch,
    "sinabs": run_in_sinabs,
}


@pytest.mark.parametrize("which", ["mlp", "convnet"])
@pytest.mark.parametrize("consumer", list(CONSUMERS))
def test_consumer_spikes_as_the_twin(tmp_path, consumer, which):
    """Each consumer runs the exported graph with exactly the twin's spike counts per neuron (one
    spiking layer driven by a constant current: the update order cannot differ), and its output node
    is the twin's readout of the rates."""
    if consumer != "norse":
        need(consumer)
    net, steps = nets()[which]
    x, _ = batch_for(net, 6)
    x = x.float()
    ours, logits = twin(net, x, steps)
    assert float(ours[0].sum()) > 1000  # the layer spikes, else equal counts prove little
    counts, out = CONSUMERS[consumer](exported(net, tmp_path), graph_input(net, x), steps)
    assert sorted(counts) == ["if_0"] and torch.equal(counts["if_0"], ours[0])
    assert torch.allclose(out / steps, logits, atol=1e-5) and torch.equal((out / steps).argmax(1), logits.argmax(1))


def test_consumers_agree_on_a_deeper_convnet_and_refuse_feedback(tmp_path):
    """Two conv layers (their conv feedback dropped with approximate): snnTorch and sinabs give Norse's
    counts exactly (all run forward edges within a step; spikeep's twin, which also has the feedback
    and carries every spike a step later, differs). Graphs with feedback cycles are refused by both
    runners: their importers would drop the feedback without a word."""
    net = small_conv(pools="aa", loss="cross_entropy", scale=3.0).float()
    x, _ = batch_for(net, 4)
    g = exported(net, tmp_path, approximate=True)
    ref, ref_out = run_in_norse(g, x.float(), 60, batched_flatten=True)
    assert float(ref["if_1"].sum()) > 100
    for consumer in ("snntorch", "sinabs"):
        if not _installed(consumer):
            continue
        counts, out = CONSUMERS[consumer](g, x.float(), 60)
        assert all(torch.equal(counts[k], ref[k]) for k in ref), consumer
        assert torch.allclose(out, ref_out, atol=1e-4), consumer
    mlp2 = exported(small_mlp(loss="cross_entropy", hidden=(24, 16), scale=2.0).float(), tmp_path)
    assert has_cycle(mlp2) and not has_cycle(g)
    for run in (run_in_snntorch, run_in_sinabs):
        with pytest.raises(ValueError, match="feed-forward graphs only"):
            run(mlp2, torch.zeros(2, 36), 5)


def _installed(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def test_snntorch_as_imported_maps_if_to_a_leaky_neuron_and_crashes(tmp_path):
    """snnTorch 1.0.0's import_from_nir: an IF node becomes Leaky(beta = 0.9, reset by subtraction,
    init_hidden = False), which returns (spikes, membrane); the next Linear fails on the tuple. The
    README quotes this error; run_in_snntorch is the workaround."""
    need("snntorch")
    from snntorch.import_nir import import_from_nir

    m = import_from_nir(exported(nets()["mlp"][0], tmp_path))
    cell = m.get_submodule("if_0")
    assert float(cell.beta) == pytest.approx(0.9) and cell.reset_mechanism == "subtract" and not cell.init_hidden
    with pytest.raises(TypeError, match=r"linear\(\): argument 'input' \(position 1\) must be Tensor, not tuple"):
        m(torch.zeros(2, 36))


def test_sinabs_as_imported_is_not_nirs_if(tmp_path):
    """sinabs 3.1.3's from_nir: an IF node becomes IAFSqueeze with several spikes per step, reset by
    subtraction and v kept >= -v_threshold; it runs, with more spikes than NIR's IF (the README's
    numbers); run_in_sinabs is the workaround."""
    need("sinabs")
    from sinabs.activation import MembraneSubtract, MultiSpike
    from sinabs.nir import from_nir

    net, steps = nets()["mlp"]
    x, _ = batch_for(net, 6)
    x = x.float()
    m = from_nir(exported(net, tmp_path), batch_size=6)
    cell = m.get_submodule("if_0")
    assert cell.spike_fn is MultiSpike and isinstance(cell.reset_fn, MembraneSubtract)
    assert bool((cell.min_v_mem == -2.0).all())
    with torch.no_grad():
        _, state = m(x.flatten(1).unsqueeze(1).expand(6, steps, 36).reshape(6 * steps, 36))
    counts = state.cache["if_0"].reshape(6, steps, 16).sum(1)
    ours = twin(net, x, steps)[0][0]
    assert float(counts.sum()) > 1.1 * float(ours.sum())  # the charge above threshold is kept


def test_rockpool_converts_neither_if_nor_conv2d_nor_lif(tmp_path):
    """rockpool 3.1.0's from_nir (the Xylo toolchain) converts Affine, Linear, LI, CubaLIF and
    LIF only, and its LIF branch reads `tau_mem`, which NIR's LIF does not have; its LIFTorch resets
    by subtraction only, so it cannot run NIR's IF even through a workaround. The README quotes these."""
    need("rockpool")
    import re

    from rockpool.nn.modules.torch.nir import from_nir

    for which, kind in (("mlp", "nir.ir.neuron.IF"), ("convnet", "nir.ir.conv.Conv2d")):
        with pytest.raises(NotImplementedError, match=re.escape(f"Cannot convert <class '{kind}'> to rockpool module")):
            from_nir(exported(nets()[which][0], tmp_path))
    lif = SpikingParams(NeuronParams(leak=0.05, reset="zero", v_min=-math.inf))
    with pytest.raises(AttributeError, match="'LIF' object has no attribute 'tau_mem'"):
        from_nir(exported(nets()["mlp"][0], tmp_path, lif))
