"""Export to NIR: the graph nir.read type-checks, holds the trained weights, refuses what NIR cannot
express (nothing written), and, imported into Norse (norse.torch.from_nir), spikes as spikeep's twin."""
import hashlib
import math

import numpy as np
import pytest
import torch

from conftest import REPO, batch_for, small_conv, small_mlp
from spikeep.training.validation import load_config
from spikeep.cli import main
from spikeep.training.nir_export import ExportError, read_graph, run_in_norse, to_nir
from spikeep.spiking.neurons import NeuronParams
from spikeep.spiking.simulator import SpikingParams, SpikingSimulator
from spikeep.training.trainer import train

nir = pytest.importorskip("nir")
QUICK = REPO / "spikeep" / "config" / "shipped" / "quickstart.toml"


def folder_hash(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


class NodeNeuron(torch.nn.Module):
    """The neuron a NIR IF / LIF node describes, from the node's own fields (r, v_threshold, tau,
    v_leak) with dt = 1 (metadata["dt"]), Euler-stepped as NIR's equations read:
        IF   v <- v + r I                          LIF  v <- v + (1 / tau) ((v_leak - v) + r I)
    spike if v > v_threshold; then, as the node's metadata["reset"] states, reset by subtraction,
    v <- v - v_threshold, and v kept in [metadata["v_min"], v_threshold]. Written here, apart from
    spikeep's neuron, so an exported threshold, tau, r or v_leak that is not the trained network's
    changes the spikes."""

    def __init__(self, node):
        super().__init__()
        f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        assert node.metadata["dt"] == 1.0 and node.metadata["reset"].startswith("subtract")
        self.r, self.th = f(node.r), f(node.v_threshold)
        self.lif = type(node).__name__ == "LIF"
        if self.lif:
            self.inv_tau, self.v_leak = 1.0 / f(node.tau), f(node.v_leak)
        self.v_min = float(node.metadata["v_min"])

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        if self.lif:
            v = v + self.inv_tau * ((self.v_leak - v) + self.r * x)
        else:
            v = v + self.r * x
        z = (v > self.th).to(x.dtype)
        v = torch.minimum(torch.clamp(v - z * self.th, min=self.v_min), self.th)
        return z, v


def run_with_node_neurons(monkeypatch, graph, x, steps, **kw):
    """run_in_norse with each IF / LIF node simulated by NodeNeuron(that node): Norse's importer for the
    wiring and the synapses, the graph's own neuron parameters for the neurons."""
    import norse.torch as nt

    real = nt.from_nir

    def from_nir(g, *a, **k):
        m = real(g, *a, **k)
        for node in m.execution_order:
            if node.name.startswith(("if_", "lif_")):
                node.elem = NodeNeuron(g.nodes[node.name])
        return m

    monkeypatch.setattr(nt, "from_nir", from_nir)
    try:
        return run_in_norse(graph, x, steps, **kw)
    finally:
        monkeypatch.setattr(nt, "from_nir", real)


def spiking_run(tmp_path, name, extra=()):
    sets = ["data.subset=100", "train.epochs=1", "train.batch_size=50", 'model.neurons="spiking"', "spiking.T1=20",
            "spiking.T2=10", "spiking.window=10", "estimator.name=symmetric", *extra]
    train(load_config(QUICK, sets), tmp_path / name, progress=False, echo=False)
    return tmp_path / name


def test_export_writes_a_graph_nir_reads_and_type_checks(tmp_path, capsys):
    run = spiking_run(tmp_path, "mlp", ["model.hidden=[20,12]", "train.lrs=[0.1,0.1,0.05]"])
    out = tmp_path / "mlp.nir"
    assert main(["export", str(run), str(out), "--approximate"]) == 0
    assert "reset by subtraction" in capsys.readouterr().out
    g = nir.read(str(out))
    g = nir.NIRGraph(g.nodes, g.edges, g.metadata, type_check=True)  # raises on a type mismatch
    ckpt = torch.load(run / "best.pt", weights_only=True)["model"]
    names = {k for k in ckpt}
    w = {n: v.numpy() for n, v in ckpt.items()}
    dense = sorted(k for k in names if k.endswith(".weight") and "readout" not in k)
    assert dense == ["synapses.0.weight", "synapses.1.weight"]  # 784-20-12; the readout apart
    assert np.array_equal(g.nodes["affine_0"].weight, w[dense[0]])
    assert np.array_equal(g.nodes["affine_1"].weight, w[dense[1]])
    assert np.array_equal(g.nodes["feedback_1"].weight, w[dense[1]].T)  # feedback edge: Linear(W^T)
    assert np.array_equal(g.nodes["readout"].weight, w["readout.weight"])
    assert ("if_1", "feedback_1") in g.edges and ("feedback_1", "if_0") in g.edges  # a cycle
    assert g.nodes["if_0"].v_threshold.shape == (20,) and np.all(g.nodes["if_0"].v_threshold == 2.0)
    # read_graph gives the metadata back as plain Python (nir.read: numpy arrays of bytes)
    meta = read_graph(out).metadata
    dropped = meta["spikeep"]["dropped"]
    assert isinstance(dropped, list) and all(type(d) is str for d in dropped)
    assert any("reset by subtraction" in d for d in dropped) and any("clamp" in d for d in dropped)
    assert meta["dt"] == 1.0 and meta["reset"].startswith("subtract")
    assert type(meta["spikeep"]["input_flattened"]) is bool and meta["spikeep"]["input_shape"] == [1, 28, 28]
    assert read_graph(out).nodes["if_0"].metadata == {"dt": 1.0, "reset": meta["reset"], "v_min": -2.0}


def test_export_refuses_and_writes_nothing(tmp_path, capsys):
    run = spiking_run(tmp_path, "mlp", ["model.hidden=[16]"])
    before = folder_hash(tmp_path)
    out = tmp_path / "out.nir"
    assert main(["export", str(run), str(out)]) == 2  # reset by subtraction needs --approximate
    assert "--approximate" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "out.h5"), "--approximate"]) == 2
    assert ".nir" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere"), str(out), "--approximate"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert folder_hash(tmp_path) == before and not out.exists()


def test_export_refuses_max_pool_even_approximately_and_drops_conv_feedback():
    with pytest.raises(ExportError, match="max-pool"):
        to_nir(small_conv(pools="ma"), SpikingParams(), approximate=True)
    with pytest.raises(ExportError, match="syn_alpha"):
        to_nir(small_mlp(), SpikingParams(syn_alpha=0.5), approximate=True)
    g = to_nir(small_conv(pools="aa", hidden=(8,), loss="cross_entropy").float(), SpikingParams(), approximate=True)
    g = nir.NIRGraph(g.nodes, g.edges, g.metadata, type_check=True)
    kinds = [type(g.nodes[n]).__name__ for n in ("conv_0", "sumpool_0", "if_0", "flatten_2", "affine_2")]
    assert kinds == ["Conv2d", "SumPool2d", "IF", "Flatten", "Affine"]
    assert not any(type(n).__name__ in ("Scale", "AvgPool2d") for n in g.nodes.values())  # Norse imports neither
    net = small_conv(pools="aa", hidden=(8,), loss="cross_entropy").float()
    assert np.array_equal(g.nodes["conv_0"].weight, net.synapses[0].weight.detach().numpy() * 0.25)  # the 1/4 folded in
    assert np.array_equal(g.nodes["conv_0"].bias, net.synapses[0].bias.detach().numpy() * 0.25)
    # a ConvNet with the readout straight after the last conv layer: flattened before the readout
    g2 = to_nir(small_conv(pools="aa", loss="cross_entropy").float(), SpikingParams(), approximate=True)
    g2 = nir.NIRGraph(g2.nodes, g2.edges, g2.metadata, type_check=True)
    assert ("if_1", "flatten_readout") in g2.edges and ("flatten_readout", "readout") in g2.edges
    assert not any(n.startswith("feedback") for n in g.nodes)
    assert sum("feedback of synapse" in d for d in g.metadata["spikeep"]["dropped"]) == 2


@pytest.mark.parametrize("hidden", [(16,), (24, 16)])
def test_graph_imported_into_norse_spikes_as_the_twin(tmp_path, monkeypatch, hidden):
    net = small_mlp(loss="cross_entropy", hidden=hidden, scale=2.0).float()
    x, _ = batch_for(net, 8)
    x = x.float()
    path = tmp_path / "g.nir"
    nir.write(str(path), to_nir(net, SpikingParams(), approximate=True))
    graph = read_graph(path)
    T = 400
    twin = SpikingSimulator(net, SpikingParams(window=T)).run_phase(net.prepare(x), None, T)
    ours = [(r * T).round() for r in twin.rates]  # spike counts of the one window
    # the graph's own neuron nodes (threshold, r as exported), reset by subtraction as they state
    sub, _ = run_with_node_neurons(monkeypatch, graph, x.flatten(1), T)
    # and spikeep's SubtractiveIF swapped in (run_in_norse's neuron=) gives the same counts
    swapped, _ = run_in_norse(graph, x.flatten(1), T, NeuronParams())
    assert all(torch.equal(swapped[k], sub[k]) for k in sub)
    for k, c in enumerate(ours):
        d = (sub[f"if_{k}"] - c).abs()
        if len(hidden) == 1:  # one spiking layer driven by a constant current: the very same spikes
            assert float(d.max()) == 0.0
        else:  # nirtorch runs forward edges within a step, spikeep one step later: at most one spike apart
            assert float(d.max()) <= 1.0 and float(d.mean()) <= 0.1, (k, float(d.max()), float(d.mean()))
    # Norse's own IF (reset to zero) loses the charge above threshold at every spike: for the first
    # layer (constant current I = W x + b) it fires every floor(theta / I) + 1 steps, never faster
    # than the twin's clip(I / theta, 0, 1) (the explained, bounded difference)
    if len(hidden) == 1:
        zero = run_in_norse(graph, x.flatten(1), T)[0]["if_0"]
        with torch.no_grad():
            current = net.prepare(x).drive  # (B, 16): W_1 x + b_1
        period = torch.where(current > 0, torch.floor(2.0 / current.clamp(min=1e-9)) + 1,
                             torch.full_like(current, math.inf))
        assert torch.equal(zero.detach(), torch.floor(T / period))
        assert bool((zero <= ours[0] + 1).all())


def test_convnet_graph_imports_into_norse_and_spikes_as_the_twin(tmp_path, monkeypatch):
    """An average-pooled spiking ConvNet (conv 4c3-avg, softmax readout) imports into Norse as written:
    the same spike counts per neuron as spikeep's twin (with spikeep's subtractive IF), and the graph's
    output node gives the twin's readout and predictions."""
    net = small_conv(pools="a", channels=(4,), paddings=(1,), strides=(1,), loss="cross_entropy", scale=3.0).float()
    x, _ = batch_for(net, 4)
    x = x.float()
    path = tmp_path / "conv.nir"
    nir.write(str(path), to_nir(net, SpikingParams(), approximate=True))
    graph = read_graph(path)
    assert ("if_0", "flatten_readout") in graph.edges
    T = 120
    twin = SpikingSimulator(net, SpikingParams(window=T)).run_phase(net.prepare(x), None, T)
    ours = (twin.rates[0] * T).round()
    assert float(ours.sum()) > 50  # the layer spikes (else the check below proves nothing)
    # one image at a time (Norse's importer as is), each IF node simulated from its own parameters
    counts, out = run_with_node_neurons(monkeypatch, graph, x, T)
    assert torch.equal(counts["if_0"], ours)
    with torch.no_grad():
        logits = net.logits(twin.rates)
    assert torch.allclose(out / T, logits, atol=1e-5) and torch.equal((out / T).argmax(1), logits.argmax(1))
    fast, out_fast = run_in_norse(graph, x, T, NeuronParams(), batched_flatten=True)  # spikeep's IF swapped in
    assert torch.equal(fast["if_0"], ours) and torch.allclose(out_fast, out, atol=1e-5)
    # Norse's own IF (reset to zero) fires less: never more than the twin in this one-layer net
    zero, _ = run_in_norse(graph, x, T, batched_flatten=True)
    assert bool((zero["if_0"] <= ours).all()) and float(zero["if_0"].sum()) < float(ours.sum())


def test_leaky_neurons_export_as_lif_nodes(tmp_path, monkeypatch):
    """leak = dt / tau > 0 exports LIF nodes (tau = r = 1 / leak, dt = 1); imported into Norse with dt = 1
    and spikeep's neuron swapped in, the counts are the twin's; refractoriness is still refused."""
    params = SpikingParams(neuron=NeuronParams(leak=0.05), window=300)
    net = small_mlp(loss="cross_entropy", hidden=(16,), scale=2.0).float()
    x, _ = batch_for(net, 6)
    x = x.float()
    path = tmp_path / "lif.nir"
    nir.write(str(path), to_nir(net, params, approximate=True))
    graph = read_graph(path)
    lif = graph.nodes["lif_0"]
    assert type(lif).__name__ == "LIF" and not any(n.startswith("if_") for n in graph.nodes)
    assert np.allclose(lif.tau, 20.0) and np.allclose(lif.r, 20.0) and np.all(lif.v_leak == 0)
    assert graph.metadata["spikeep"]["neuron"].startswith("LIF: v <- (1 - 0.05) v + I")
    with torch.no_grad():
        twin = SpikingSimulator(net, params).run_phase(net.prepare(x), None, 300)
    ours = (twin.rates[0] * 300).round()
    assert float(ours.sum()) > 100
    counts, _ = run_in_norse(graph, x.flatten(1), 300, params.neuron)
    assert torch.equal(counts["lif_0"], ours)
    # the LIF node's own tau, r, v_leak and threshold, Euler-stepped with dt = 1: the same spikes
    node_counts, _ = run_with_node_neurons(monkeypatch, graph, x.flatten(1), 300)
    assert torch.equal(node_counts["lif_0"], ours)
    with pytest.raises(ExportError, match="refractory"):
        to_nir(net, SpikingParams(neuron=NeuronParams(refractory=2)), approximate=True)


def test_nir_check_scores_the_graphs_output_node(tmp_path):
    import json
    import subprocess
    import sys
    run = spiking_run(tmp_path, "mlp", ["model.hidden=[16]"])
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "nir_check.py"), str(run), "--images", "20", "--T", "30",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    # one spiking layer, constant current: the graph with spikeep's neuron is the twin, output node included
    assert res["subtractive"]["same_prediction_as_twin"] == 100.0 and res["subtractive"]["acc"] == res["acc_twin"]
    assert res["subtractive"]["layers"]["if_0"]["max_abs_count_diff"] == 0.0
    assert res["norse_reset_to_zero"]["spikes_vs_twin_percent"] <= 0.0
