"""Run an exported NIR graph in other NIR consumers than Norse, with the workaround each needs to run
NIR's IF node as NIR defines it (reset to v_reset = 0, one spike per step, no bound on v): the same
call shape as nir_export.run_in_norse, so the tests compare every consumer's spike counts with
spikeep's twin (a network trained with spiking.reset = "zero" and spiking.v_min = -inf).

    run_in_snntorch(graph, x, steps)   snntorch.import_nir.import_from_nir (snnTorch 1.0.0)
    run_in_sinabs(graph, x, steps)     sinabs.nir.from_nir (sinabs 3.1.3, the Speck toolchain's simulator)

Each returns ({neuron node: spike counts (B, *shape)}, the output node's sum over the steps (B, ...)),
the input x (B, ...) held as a constant current for `steps` steps. What each consumer's importer does
on its own, and why each workaround is needed (README, "Export to NIR"; tests/test_nir_consumers.py):

* snnTorch maps an IF node to `snn.Leaky(beta=0.9, init_hidden=False)` with reset by subtraction: a
  leaky neuron, and one that returns a (spikes, membrane) tuple, which the next module cannot take
  (`TypeError: linear(): argument 'input' (position 1) must be Tensor, not tuple`). The workaround
  swaps in snnTorch's own `snn.Leaky(beta=1, threshold=v_threshold, reset_mechanism="zero",
  init_hidden=True, reset_delay=False)`, which is NIR's IF with dt = 1 (v <- v + I; spike if v > theta;
  v <- 0). Its Flatten is torch's Flatten(start_dim=0), which flattens the batch too: shifted by one.
* sinabs maps an IF node to `IAFSqueeze` with sinabs' defaults: several spikes per step (MultiSpike),
  reset by subtraction, and `min_v_mem = -v_threshold`: none of them NIR's IF. The workaround swaps in
  sinabs' own `IAFSqueeze(spike_fn=SingleSpike, reset_fn=MembraneReset(0), min_v_mem=None)`, with the
  threshold one float32 step above theta because sinabs spikes at v >= threshold and NIR's reference
  importers (Norse, snnTorch) at v > theta. sinabs pins nir <= 1.0.4, which has no IF.v_reset and cannot
  hold this graph; installed without its dependencies (`pip install --no-deps sinabs pbr`) next to
  nir 1.0.8 it imports and runs it.
* Neither runs feedback: snnTorch's importer (nirtorch.nir_to_torch) and sinabs' (nirtorch's
  GraphExecutor, each layer over the whole time series in turn, time folded into the batch) both
  leave a cycle's closing edge out without a word: a two-hidden-layer spikeep MLP runs in both as if it
  had no feedback (its counts equal Norse's of the graph without the feedback nodes). So both runners
  refuse graphs with cycles; feed-forward graphs (one hidden layer; ConvNets, whose conv feedback
  export drops) run.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

NEURON_PREFIXES = ("if_", "lif_")


def _threshold(node) -> float:
    th = np.unique(np.asarray(node.v_threshold))
    if th.size != 1:
        raise ValueError(f"one threshold per layer expected, got {th.size} different ones")
    return float(th[0])


def has_cycle(graph) -> bool:
    """Whether the graph's edges close a loop (spikeep's dense feedback edges do)."""
    succ: dict = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    state: dict = {}  # 1: on the current path, 2: done

    def visit(n) -> bool:
        state[n] = 1
        for m in succ.get(n, ()):
            if state.get(m) == 1 or (m not in state and visit(m)):
                return True
        state[n] = 2
        return False

    return any(n not in state and visit(n) for n in list(succ))


def _check_if_nodes(graph, consumer: str) -> list[str]:
    """The graph's neuron nodes: IF nodes that reset to zero (what these workarounds cover), in a graph
    without cycles (both importers silently leave feedback edges out: the module docstring)."""
    import nir

    if has_cycle(graph):
        raise ValueError(f"{consumer} runs feed-forward graphs only: its importer leaves feedback edges out "
                         f"without a word (a cycle here: spikeep's dense feedback); export a network "
                         f"without feedback, e.g. one hidden layer")

    names = [n for n, node in graph.nodes.items() if isinstance(node, (nir.IF, nir.LIF))]
    for n in names:
        node = graph.nodes[n]
        if not isinstance(node, nir.IF):
            raise ValueError(f"{consumer}: node {n} is a {type(node).__name__}; this runner takes IF nodes "
                             f"(spiking.leak = 0)")
        if not (np.all(np.asarray(node.r) == 1) and np.all(np.asarray(node.v_reset) == 0)):
            raise ValueError(f"{consumer}: node {n} needs r = 1 and v_reset = 0, as spikeep exports")
    return names


def run_in_snntorch(graph, x: torch.Tensor, steps: int):
    """The graph imported with snnTorch's import_from_nir, its IF nodes' modules replaced by snnTorch
    Leaky neurons with beta = 1 and reset to zero, its Flatten modules shifted past the batch axis;
    run for `steps` steps on the constant input x (see the module docstring)."""
    names = _check_if_nodes(graph, "snnTorch")
    import snntorch as snn
    from snntorch.import_nir import import_from_nir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = import_from_nir(graph)
    counts: dict = {}
    for n in names:
        cell = snn.Leaky(beta=1.0, threshold=_threshold(graph.nodes[n]), reset_mechanism="zero",
                         init_hidden=True, reset_delay=False)
        cell.register_forward_hook(lambda mod, inp, z, n=n: counts.__setitem__(n, counts.get(n, 0) + z))
        setattr(m, n, cell)
    for name, mod in list(m.named_children()):
        if isinstance(mod, torch.nn.Flatten) and mod.start_dim == 0:  # NIR's axes exclude the batch
            setattr(m, name, torch.nn.Flatten(1, mod.end_dim))
    out = 0
    with torch.no_grad():
        for _ in range(steps):
            y = m(x)
            out = out + (y[0] if isinstance(y, tuple) else y)
    return counts, out


def run_in_sinabs(graph, x: torch.Tensor, steps: int):
    """The graph imported with sinabs.nir.from_nir, its IF nodes' modules replaced by sinabs IAFSqueeze
    layers that are NIR's IF (one spike per step, reset to zero, no lower bound, spike if v > theta);
    the constant input x repeated over `steps` steps, time folded into the batch as sinabs' Squeeze
    layers take it (see the module docstring)."""
    names = _check_if_nodes(graph, "sinabs")
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, SingleSpike
    from sinabs.nir import from_nir

    b = x.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = from_nir(graph, batch_size=b)
    for node in m.execution_order:
        if node.name in names:
            th = torch.nextafter(torch.tensor(_threshold(graph.nodes[node.name])), torch.tensor(np.inf))
            node.elem = sl.IAFSqueeze(spike_threshold=th, spike_fn=SingleSpike, reset_fn=MembraneReset(0.0),
                                      min_v_mem=None, batch_size=b)
    series = x.unsqueeze(1).expand(b, steps, *x.shape[1:]).reshape(b * steps, *x.shape[1:])
    with torch.no_grad():
        y, state = m(series, None) if m.return_state else (m(series), None)
    if state is None:
        raise RuntimeError("sinabs' graph executor returned no state: the spike counts cannot be read")
    per_step = lambda t: t.reshape(b, steps, *t.shape[1:]).sum(1)  # noqa: E731
    return {n: per_step(state.cache[n]) for n in names}, per_step(y)
