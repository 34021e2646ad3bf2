"""Export a trained spiking network to NIR, the Neuromorphic Intermediate Representation (PyPI `nir`,
read by Norse, snnTorch, Sinabs/Speck, Rockpool/Xylo, Lava-DL, SpiNNaker2, hxtorch).

What is written is the network that runs at inference, the free phase (Laborieux et al. 2021, Eq. 6
as spikes; spikeep.spiking.simulator):

    input --Affine(W_1, b_1) / Conv2d(+ SumPool2d + Scale 1/4)--> IF_1 --...--> IF_N --> [readout Affine] --> output
    IF_{k+1} --Linear(W_{k+1}^T)--> IF_k                     feedback edges of dense layers (NIR allows cycles)

IF nodes carry per-neuron arrays (r = 1, v_threshold = theta, v_reset = 0): NIR's IF integrates
v <- v + R I per step and resets to v_reset. What NIR cannot express is refused with a message, or,
with `approximate=True` (`spikeep export --approximate`), left out and listed under
metadata["spikeep"]["dropped"]:

* reset by subtraction (v <- v - theta z) and the membrane clamp to [v_min, theta]: every spikeep IF
  neuron has both, so every export needs `approximate`; a reader gets NIR's reset to v_reset;
* the feedback of conv synapses (a transposed convolution through the pooling's adjoint), and dense
  feedback into a conv layer (NIR has no reshape node to undo the flatten);
* max-pooling: NIR has no max-pool node; refused even with `approximate` (train with pools "a").

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

from .build import spiking_params
from .core.interactions import Conv, Dense
from .core.network import EqNetwork
from .files import replace_atomically
from .spiking.neurons import NeuronParams, NeuronState, lif_box_step
from .evaluation import load_run
from .spiking.simulator import SpikingParams


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
    dropped, refused = [], []
    p = params.neuron
    if p.leak > 0 or p.refractory > 0:
        refused.append(f"leaky or refractory neurons (leak {p.leak}, refractory {p.refractory}): export "
                       f"supports IF neurons (spiking.leak = 0, spiking.refractory = 0)")
    if params.syn_alpha != 1.0:
        refused.append(f"a synaptic current filter (spiking.syn_alpha = {params.syn_alpha}); export needs 1")
    for k, s in enumerate(net.synapses):
        if isinstance(s, Conv) and s.pool_kind == "m":
            refused.append(f"synapse {k} max-pools: NIR has no max-pool node; train with average pooling "
                           f"(model.pools 'a')")
        elif not isinstance(s, (Conv, Dense)):
            refused.append(f"synapse {k} is a {type(s).__name__}, which export does not know")
    if refused:
        raise ExportError("cannot export to NIR: " + "; ".join(refused))
    dropped.append("reset by subtraction (v <- v - theta z): NIR's IF resets to v_reset = 0")
    dropped.append(f"the membrane clamp to [v_min, theta] = [{p.v_min}, {p.theta}]")

    syn, n = net.synapses, len(net.synapses)
    nodes: dict = {}
    edges: list[tuple[str, str]] = []
    in_shape = tuple(net.input_shape)
    flat_input = isinstance(syn[0], Dense)
    nodes["input"] = nir.Input(input_type=np.array([math.prod(in_shape)] if flat_input else list(in_shape)))
    prev = "input"
    for k, s in enumerate(syn):
        shape = tuple(s.post_shape)
        if isinstance(s, Dense):
            if k > 0 and len(syn[k - 1].post_shape) > 1:  # a conv layer below: flatten it
                nodes[f"flatten_{k}"] = nir.Flatten(input_type={"input": np.array(syn[k - 1].post_shape)},
                                                    start_dim=0, end_dim=-1)
                edges.append((prev, f"flatten_{k}"))
                prev = f"flatten_{k}"
            nodes[f"affine_{k}"] = nir.Affine(weight=_arr(s.weight), bias=_arr(s.bias))
            edges.append((prev, f"affine_{k}"))
            prev = f"affine_{k}"
        else:
            nodes[f"conv_{k}"] = nir.Conv2d(input_shape=tuple(s.pre_shape[1:]), weight=_arr(s.weight),
                                            stride=s.stride, padding=s.padding, dilation=1, groups=1,
                                            bias=_arr(s.bias))
            edges.append((prev, f"conv_{k}"))
            prev = f"conv_{k}"
            if s.pool_kind == "a":  # average = sum over the 2x2 window, times 1/4
                nodes[f"sumpool_{k}"] = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                                      padding=np.array([0, 0]))
                nodes[f"scale_{k}"] = nir.Scale(scale=np.full(shape, 0.25, dtype=np.float32))
                edges += [(prev, f"sumpool_{k}"), (f"sumpool_{k}", f"scale_{k}")]
                prev = f"scale_{k}"
        nodes[f"if_{k}"] = nir.IF(r=np.ones(shape, np.float32), v_threshold=np.full(shape, p.theta, np.float32),
                                  v_reset=np.zeros(shape, np.float32))
        edges.append((prev, f"if_{k}"))
        prev = f"if_{k}"
    for k in range(1, n):  # feedback of synapse k: from layer k back into layer k - 1
        s = syn[k]
        if isinstance(s, Dense) and len(s.pre_shape) == 1:
            nodes[f"feedback_{k}"] = nir.Linear(weight=_arr(s.feedback_weight.t()))
            edges += [(f"if_{k}", f"feedback_{k}"), (f"feedback_{k}", f"if_{k - 1}")]
        else:
            dropped.append(f"feedback of synapse {k} (conv synapse: a transposed convolution through the "
                           f"pooling's adjoint, which NIR cannot express)" if isinstance(s, Conv) else
                           f"feedback of synapse {k} (dense synapse into a conv layer: NIR has no node to "
                           f"unflatten W^T z)")
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

    structural = [d for d in dropped if d.startswith("feedback")]
    if not approximate:
        raise ExportError("NIR cannot express: " + "; ".join(dropped) + ". Pass --approximate "
                          "(to_nir(..., approximate=True)) to export without them; they are then listed "
                          "in the graph's metadata['spikeep']['dropped']")
    meta = {"spikeep": {
        "what": "the free phase of a network trained with equilibrium propagation (spikeep)",
        "neuron": f"IF: v <- v + I per step, spike if v > theta = {p.theta}",
        "time_step": "one NIR time unit per simulation step (r = 1, dt = 1)",
        "input": ("the input as a constant current, fed every step" if encoding == "current" else
                  "Bernoulli input spikes with p = pixel value, one draw per step"),
        "input_shape": list(in_shape),
        "input_flattened": flat_input,
        "readout": ("softmax readout: argmax of the readout of the spike rates (the mean over time)"
                    if net.readout is not None else "the last IF layer's spike rates"),
        "dropped": dropped,
        "not_in_graph": ["nudging (beta, the +beta / -beta phases)", "learning (the local EP rule)",
                         "step budgets and rate windows"],
        "update_order": ("synchronous in spikeep: every synapse carries the previous step's spikes"),
        "structural_drops": len(structural),
        **(extra_metadata or {}),
    }}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=True)


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
        return lif_box_step(x, state, self.p)


def norse_spike_counts(graph, x: torch.Tensor, steps: int, neuron: Optional[NeuronParams] = None) -> dict:
    """Import a NIR graph with norse.torch.from_nir, run it for `steps` steps on the constant input x
    and return each IF node's spike counts {name: (B, *shape)}. With `neuron`, spikeep's IF
    (SubtractiveIF) replaces the IAFCell Norse makes of each IF node (reset to zero)."""
    import warnings

    import norse.torch as nt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Norse and nirtorch deprecation warnings
        m = nt.from_nir(graph)
    if neuron is not None:
        for node in m.execution_order:
            if node.name.startswith("if_"):
                node.elem = SubtractiveIF(neuron)  # one module per node: nirtorch tells nodes by module
    counts, state = {}, None
    with torch.no_grad():
        for _ in range(steps):
            _, state = m(x) if state is None else m(x, state)
            for name, v in state.cache.items():
                if name.startswith("if_"):
                    counts[name] = counts.get(name, 0) + v
    return counts


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
