"""Export a trained spiking network to NIR, the Neuromorphic Intermediate Representation (PyPI `nir`,
read by Norse, snnTorch, Sinabs/Speck, Rockpool/Xylo, Lava-DL, SpiNNaker2, hxtorch).

What is written is the network that runs at inference, the free phase (Laborieux et al. 2021, Eq. 6
as spikes; spikeep.spiking.simulator):

    input --Affine(W_1, b_1) / Conv2d(W_1/4, b_1/4) + SumPool2d--> IF_1 (LIF_1) --...--> [readout Affine] --> output
    IF_{k+1} --Linear(W_{k+1}^T)--> IF_k                     feedback edges of dense layers (NIR allows cycles)

* Average pooling is the 2x2 sum pool of a convolution whose weights and bias carry the 1/4 (exact in
  floating point: a power of two), so the graph has only nodes every NIR importer knows (Norse 1.1.0
  has no importer for Scale or AvgPool2d).
* Non-leaky neurons are IF nodes (r = 1, v_threshold = theta, v_reset = 0); leaky ones (spiking.leak =
  dt / tau > 0) LIF nodes with tau = 1 / leak, r = tau / dt = 1 / leak, v_leak = 0: with dt = 1 the
  Euler step v <- v + (dt / tau)(R I - v) is spikeep's v <- (1 - leak) v + I (snnTorch's convention).
* The time step: one simulation step is one NIR time unit; metadata["dt"] = 1 on the graph and on
  each neuron node (NIR nodes are continuous-time and have no field for it). Import with dt = 1
  (`norse.torch.from_nir(graph, dt=1.0)`).
* With `spiking.reset = "zero"` and `spiking.v_min = "none"` (spikeep.spiking.neurons.exact_in_nir) the
  neurons are NIR's IF / LIF nodes as they stand (reset to v_reset = 0, no bound on v): such a network
  exports without `approximate` wherever its wiring is expressible. The default neurons reset by
  subtraction (v <- v - theta z) and keep v in [v_min, theta]: stated in each neuron node's metadata
  ("reset", "v_min") and the graph's; a consumer resets to zero and loses the charge above threshold at
  each spike (fewer spikes: README, "Export to NIR").

What NIR cannot express is refused with a message, or, with `approximate=True` (`spikeep export
--approximate`), left out and listed under metadata["spikeep"]["dropped"]: the reset by subtraction and
the clamp (the default neurons), the feedback of conv synapses (a transposed convolution through the
pooling's adjoint), dense feedback into a conv layer (NIR has no reshape to undo the flatten). Refused
even with `approximate`: max-pooling (no NIR node; train with pools "a"), refractoriness, synaptic
filters. `read_graph` reads a file back with its metadata as plain Python (nir.read returns lists of
strings as numpy arrays of bytes).

Never part of the graph, and said so in the metadata: nudging (beta, the +-beta phases), learning,
the step budgets and windows. spikeep's update is synchronous (every synapse carries last step's
spikes); a NIR executor such as nirtorch's runs forward edges within a step and recurrent ones from
the step before, which shifts spike times by a step per layer (see tests/test_nir.py for the bound).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .validation import spiking_params
from ..core.network import EqNetwork
from .files import replace_atomically
from ..spiking.neurons import NeuronParams, NeuronState, exact_in_nir, neuron_step
from .evaluation import load_run
from ..spiking.simulator import SpikingParams


class ExportError(ValueError):
    """The network holds something NIR cannot express; the message says what and how to proceed."""


def _nir():
    try:
        import nir
    except ImportError:  # the optional extra
        raise ExportError('NIR export needs the nir package: pip install "spikeep[nir]"') from None
    return nir


def _arr(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def to_nir(net: EqNetwork, params: SpikingParams, approximate: bool = False, encoding: str = "current",
           extra_metadata: Optional[dict] = None):
    """The free-phase network as a nir.NIRGraph (see the module docstring); raises ExportError for
    what NIR cannot express unless `approximate` allows dropping it."""
    nir = _nir()
    p = params.neuron
    _refuse_inexpressible(net, params)
    dropped = _neuron_drops(p)
    nodes, edges, prev = _forward_nodes(nir, net, p)
    dropped += _feedback_nodes(nir, net, nodes, edges)
    prev = _readout_nodes(nir, net, nodes, edges, prev)
    if dropped and not approximate:
        hint = "" if exact_in_nir(p) else (" (or train with spiking.reset = 'zero' and spiking.v_min = 'none', "
                                            "NIR's own IF / LIF neuron)")
        raise ExportError("NIR cannot express: " + "; ".join(dropped) + ". Pass --approximate "
                          "(to_nir(..., approximate=True)) to export without them; they are then listed "
                          f"in the graph's metadata['spikeep']['dropped']{hint}")
    meta = {"dt": DT, "time_unit": "one simulation step", "reset": _reset_text(p), "spikeep": {
        "what": "the free phase of a network trained with equilibrium propagation (spikeep)",
        "neuron": _neuron_text(p),
        "time_step": "dt = 1: one NIR time unit per simulation step; import with dt = 1",
        "input": ("the input as a constant current, fed every step" if encoding == "current" else
                  "Bernoulli input spikes with p = pixel value, one draw per step"),
        "input_shape": [int(v) for v in net.input_shape],
        "input_flattened": net.synapses[0].flattens_input,
        "avg_pool": "conv_k weight and bias = the trained ones x 1/4, then SumPool2d 2x2 (= average pooling)",
        "readout": ("the output node: the readout Affine of the spikes; its mean over time is the softmax "
                    "readout of the spike rates (argmax = the prediction)" if net.readout is not None else
                    "the last layer's spikes (their rate is the prediction)"),
        "dropped": dropped,
        "not_in_graph": ["nudging (beta, the +beta / -beta phases)", "learning (the local EP rule)",
                         "step budgets and rate windows"],
        "update_order": "synchronous in spikeep: every synapse carries the previous step's spikes",
        "structural_drops": len([d for d in dropped if d.startswith("feedback")]),
        **(extra_metadata or {}),
    }}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=True)


DT = 1.0  # one simulation step per NIR time unit
RESET = "subtract: v <- v - v_threshold after a spike (not NIR's reset to v_reset)"
RESET_ZERO = "zero: v <- v_reset = 0 after a spike (NIR's IF / LIF)"


def _reset_text(p: NeuronParams) -> str:
    return RESET_ZERO if p.reset == "zero" else RESET


def _neuron_text(p: NeuronParams) -> str:
    leak = f"LIF: v <- (1 - {p.leak}) v + I per step" if p.leak > 0 else "IF: v <- v + I per step"
    if p.reset == "zero":
        bound = "" if p.v_min == -math.inf else f", v kept >= v_min = {p.v_min}"
        return f"{leak}, spike if v > theta = {p.theta}, then v <- 0{bound}"
    return f"{leak}, spike if v > theta = {p.theta}, then v <- v - theta, v kept in [{p.v_min}, {p.theta}]"


def _neuron_drops(p: NeuronParams) -> list[str]:
    """What of the neuron NIR's IF / LIF node (reset to v_reset = 0, v unbounded) does not say."""
    if p.reset == "zero":
        return [] if p.v_min == -math.inf else [f"the membrane's lower bound v_min = {p.v_min} (NIR's IF and LIF "
                                                f"have none; spiking.v_min = 'none' exports exactly)"]
    return ["reset by subtraction (v <- v - theta z): NIR's IF and LIF reset to v_reset = 0",
            f"the membrane clamp to [v_min, theta] = [{p.v_min}, {p.theta}]"]


def _refuse_inexpressible(net: EqNetwork, params: SpikingParams) -> None:
    refused, p = [], params.neuron
    if p.refractory > 0:
        refused.append(f"refractory neurons (spiking.refractory = {p.refractory}): NIR has no refractory "
                       f"period; export supports spiking.refractory = 0")
    if params.syn_alpha != 1.0:
        refused.append(f"a synaptic current filter (spiking.syn_alpha = {params.syn_alpha}); export needs 1")
    if not net.is_chain:
        refused.append("skip connections (model.skips): export writes chains of layers")
    for k, s in enumerate(net.synapses):
        why = s.nir_refusal()
        if why is not None:
            refused.append(f"synapse {k}: {why}")
    if refused:
        raise ExportError("cannot export to NIR: " + "; ".join(refused))


def _neuron_node(nir, shape: tuple, p: NeuronParams):
    """IF (leak 0) or LIF (tau = 1 / leak, r = tau / dt) with spikeep's reset (and v_min, if any) stated in
    its metadata."""
    full = lambda v: np.full(shape, v, dtype=np.float32)
    meta = {"dt": DT, "reset": _reset_text(p)}
    if p.v_min > -math.inf:
        meta["v_min"] = float(p.v_min)
    if p.leak > 0:
        tau = DT / p.leak
        return "lif", nir.LIF(tau=full(tau), r=full(tau / DT), v_leak=full(0.0), v_threshold=full(p.theta),
                              v_reset=full(0.0), metadata=meta)
    return "if", nir.IF(r=full(1.0), v_threshold=full(p.theta), v_reset=full(0.0), metadata=meta)


def _forward_nodes(nir, net: EqNetwork, p: NeuronParams) -> tuple[dict, list, str]:
    """Input, then per layer its synapse (flatten, affine or conv + sum pool) and its neurons."""
    syn = net.synapses
    in_shape = tuple(net.input_shape)
    flat = syn[0].flattens_input
    nodes: dict = {"input": nir.Input(input_type=np.array([math.prod(in_shape)] if flat else list(in_shape)))}
    edges: list[tuple[str, str]] = []
    prev = "input"

    def add(name, node):
        nonlocal prev
        nodes[name] = node
        edges.append((prev, name))
        prev = name

    for k, s in enumerate(syn):
        for name, node in s.nir_nodes(nir, k):
            add(name, node)
        kind, node = _neuron_node(nir, tuple(s.post_shape), p)
        add(f"{kind}_{k}", node)
    return nodes, edges, prev


def _feedback_nodes(nir, net: EqNetwork, nodes: dict, edges: list) -> list[str]:
    """Dense feedback as Linear(W^T) edges from layer k back into layer k - 1; what cannot be, returned."""
    dropped, kind = [], "lif" if "lif_0" in nodes else "if"
    for k in range(1, len(net.synapses)):
        s = net.synapses[k]
        node, why = s.nir_feedback(nir)
        if node is not None:
            nodes[f"feedback_{k}"] = node
            edges += [(f"{kind}_{k}", f"feedback_{k}"), (f"feedback_{k}", f"{kind}_{k - 1}")]
        else:
            dropped.append(f"feedback of synapse {k} ({why})")
    return dropped


def _readout_nodes(nir, net: EqNetwork, nodes: dict, edges: list, prev: str) -> str:
    syn = net.synapses
    if net.readout is not None:
        r = net.readout
        if len(syn[-1].post_shape) > 1:  # a conv layer last: the readout sees it flattened (C, H, W order)
            nodes["flatten_readout"] = nir.Flatten(input_type={"input": np.array(syn[-1].post_shape)},
                                                   start_dim=0, end_dim=-1)
            edges.append((prev, "flatten_readout"))
            prev = "flatten_readout"
        nodes["readout"] = nir.Affine(weight=_arr(r.weight), bias=_arr(r.bias))
        edges.append((prev, "readout"))
        prev = "readout"
        out_shape = (r.weight.shape[0],)
    else:
        out_shape = tuple(syn[-1].post_shape)
    nodes["output"] = nir.Output(output_type=np.array(out_shape))
    edges.append((prev, "output"))
    return "output"


def _plain(v):
    """nir.read's metadata as plain Python: arrays of bytes or strings -> lists of str, bytes -> str."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "SOU":
            return [x.decode() if isinstance(x, bytes) else str(x) for x in v.reshape(-1)]
        return v.tolist()
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def read_graph(path: str | Path):
    """nir.read, with the graph's and every node's metadata turned back into plain Python (lists of
    str, floats, bools)."""
    graph = _nir().read(str(path))
    graph.metadata = _plain(dict(graph.metadata))
    for node in graph.nodes.values():
        if getattr(node, "metadata", None):
            node.metadata = _plain(dict(node.metadata))
    return graph


class SubtractiveIF(torch.nn.Module):
    """spikeep's IF neuron (Norse's heaviside and subtractive reset, membrane clamp) as a stateful
    module for nirtorch's GraphExecutor (`forward(input, state) -> (spikes, state)`): swap it in for
    the IAFCell that norse.torch.from_nir makes of an IF node (which resets to zero) to run an exported
    graph with the neurons it was trained with. Use one instance per node (nirtorch tells nodes apart
    by their modules)."""

    def __init__(self, p: NeuronParams = NeuronParams()):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, state: Optional[NeuronState] = None):
        if state is None:
            state = NeuronState(torch.zeros_like(x), torch.zeros_like(x, dtype=torch.int32))
        return neuron_step(x, state, self.p)


def run_in_norse(graph, x: torch.Tensor, steps: int, neuron: Optional[NeuronParams] = None,
                 batched_flatten: bool = False):
    """Import a NIR graph with norse.torch.from_nir (dt = 1), run it for `steps` steps on the constant
    input x (B, ...) and return ({neuron node: spike counts (B, *shape)}, the output node's sum over
    the steps (B, ...)). With `neuron`, spikeep's neuron (SubtractiveIF) replaces the cell Norse makes
    of each IF/LIF node (reset to zero).

    Norse 1.1.0 maps NIR's Flatten(start_dim=0) (axes without the batch) onto torch's Flatten(0), which
    flattens the batch too. So graphs with a Flatten node run one image at a time, without a batch
    dimension, in Norse as imported; `batched_flatten=True` instead replaces those modules with
    Flatten(1) and runs the batch at once (a workaround on Norse's side, same numbers, faster)."""
    import warnings

    import norse.torch as nt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Norse and nirtorch deprecation warnings
        m = nt.from_nir(graph, dt=DT, ignore_warnings=True)
    for node in m.execution_order:
        if neuron is not None and node.name.startswith(("if_", "lif_")):
            node.elem = SubtractiveIF(neuron)  # one module per node: nirtorch tells nodes by module
        if batched_flatten and isinstance(node.elem, torch.nn.Flatten):
            node.elem = torch.nn.Flatten(node.elem.start_dim + 1, node.elem.end_dim)
    unbatched = not batched_flatten and any(isinstance(n, _nir().Flatten) for n in graph.nodes.values())
    rows = [x[i] for i in range(x.shape[0])] if unbatched else [x]
    counts, outs = [], []
    with torch.no_grad():
        for xi in rows:
            c, out, state = {}, 0, None
            for _ in range(steps):
                y, state = m(xi) if state is None else m(xi, state)
                out = out + y
                for name, v in state.cache.items():
                    if name.startswith(("if_", "lif_")):
                        c[name] = c.get(name, 0) + v
            counts.append(c)
            outs.append(out)
    if unbatched:
        return {k: torch.stack([c[k] for c in counts]) for k in counts[0]}, torch.stack(outs)
    return counts[0], outs[0]


def export_run(run_dir: str | Path, out: str | Path, which: str = "best", approximate: bool = False) -> dict:
    """Write a spiking run's trained network (best.pt or checkpoint.pt) to `out` as a NIR file."""
    nir = _nir()
    run_dir, out = Path(run_dir), Path(out)
    cfg, net, path = load_run(run_dir, which)
    if cfg.model.neurons != "spiking":
        raise ExportError(f"{run_dir} trained a rate network (model.neurons = {cfg.model.neurons!r}); NIR export "
                          f"writes spiking networks: train with model.neurons = 'spiking'")
    graph = to_nir(net, spiking_params(cfg.spiking), approximate, cfg.spiking.encoding,
                   {"run_id": cfg.run_id, "weights": path.name, "T1": cfg.spiking.T1, "window": cfg.spiking.window})
    with tempfile.TemporaryDirectory() as tmp:  # nir.write needs a file name: write, then replace atomically
        nir.write(str(Path(tmp) / "graph.nir"), graph)
        replace_atomically(out, (Path(tmp) / "graph.nir").read_bytes())
    return {"out": str(out), "nodes": len(graph.nodes), "edges": len(graph.edges),
            "dropped": graph.metadata["spikeep"]["dropped"]}
