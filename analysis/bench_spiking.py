"""Event vs dense spike propagation: time per simulated step of a 784-1024-1024-10 spiking network
(or, with --conv, of the MNIST ConvNet 1x28x28-32c5-avg-64c5-avg-10: conv synapses, kernel-slice events).

Every layer (input included, as Poisson spikes) is given spikes at the chosen activity; one
`SpikingSimulator.step` (currents from those spikes, then every neuron) is timed for the dense back
end (matrix products over the spike tensor) and the event back end (embedding_bag over the fan-out
table rows, [W_{k+1}^T | W_k], of the neurons that spiked), in the same process, on the same state. Both results are
compared (they must agree). Prints a table of ms per step and the event speed-up, and the crossover
activity where the two cost the same (what `backend = "auto"` uses: spikeep.spiking.simulator.DEFAULT_CROSSOVER,
and DEFAULT_CONV_CROSSOVER for layers that drive conv synapses).

    python analysis/bench_spiking.py [--batch 1 8 32] [--activity 0.01 0.05 0.2 0.5] [--json FILE]
    python analysis/bench_spiking.py --conv [--batch 1 8 32] [--activity 0.01 0.05 0.2]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from spikeep.config import ModelConfig
from spikeep.core.network import EqNetwork
from spikeep.spiking.neurons import NeuronParams
from spikeep.spiking.propagation import fan_out_tables
from spikeep.spiking.simulator import SimState, SpikingParams, SpikingSimulator


def make_state(sim: SpikingSimulator, inp, activity: float, gen: torch.Generator) -> tuple[SimState, torch.Tensor]:
    st = sim.init_state(inp)
    z = tuple((torch.rand(t.shape, generator=gen) < activity).to(t.dtype) for t in st.z)
    xs = (torch.rand(inp.x.shape, generator=gen) < activity).to(inp.x.dtype)
    return st._replace(z=z), xs


def time_step(sim: SpikingSimulator, inp, st: SimState, xs: torch.Tensor, tables, repeats: int) -> tuple[float, SimState]:
    out = sim.step(inp, st, 0.0, xs, tables)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = sim.step(inp, st, 0.0, xs, tables)
    return (time.perf_counter() - t0) / repeats * 1e3, out


def time_pair(sims, inp, st, xs, tables, repeats: int, rounds: int):
    """Alternate dense and event blocks `rounds` times; keep each back end's fastest block (the
    least disturbed by other work on the machine, as timeit recommends)."""
    best = {"dense": float("inf"), "event": float("inf")}
    outs = {}
    for _ in range(rounds):
        for b in ("dense", "event"):
            ms, outs[b] = time_step(sims[b], inp, st, xs, tables if b == "event" else None, repeats)
            best[b] = min(best[b], ms)
    return best["dense"], best["event"], outs["dense"], outs["event"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--activity", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    ap.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024])
    ap.add_argument("--conv", action="store_true", help="the MNIST ConvNet (32c5-avg-64c5-avg-10) instead")
    ap.add_argument("--repeats", type=int, default=50, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=7, help="alternating dense/event blocks; the fastest counts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.conv:
        net = EqNetwork(ModelConfig(input_shape=[1, 28, 28], channels=[32, 64], kernels=[5, 5], strides=[1, 1],
                                    paddings=[0, 0], pools="aa", n_classes=10, loss="mse"))
        arch = "1x28x28-32c5-avg-64c5-avg-10"
    else:
        net = EqNetwork(ModelConfig(input_shape=[1, 28, 28], hidden=args.hidden, n_classes=10, loss="mse"))
        arch = "-".join(map(str, [784, *args.hidden, 10]))
    print(f"{arch} spiking network, float32, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in args.batch:
        x = torch.rand(batch, 1, 28, 28)
        inp = net.prepare(x)
        print(f"\nbatch {batch}\n  activity | dense ms/step | event ms/step | event speed-up")
        for a in args.activity:
            sims = {b: SpikingSimulator(net, SpikingParams(NeuronParams(), backend=b, encoding="poisson"))
                    for b in ("dense", "event")}
            tables = fan_out_tables(net)  # made once per phase in a real run
            st, xs = make_state(sims["dense"], inp, a, gen)
            ms_d, ms_e, out_d, out_e = time_pair(sims, inp, st, xs, tables, args.repeats, args.rounds)
            for u, v in zip(out_d.u + out_d.f, out_e.u + out_e.f):
                assert torch.allclose(u, v, rtol=1e-4, atol=1e-4), "dense and event back ends disagree"
            rows.append({"batch": batch, "activity": a, "dense_ms": ms_d, "event_ms": ms_e, "speedup": ms_d / ms_e})
            print(f"  {a:8.2%} | {ms_d:13.3f} | {ms_e:13.3f} | {ms_d / ms_e:6.2f}x")
        rs = [r for r in rows if r["batch"] == batch]
        act = np.array([r["activity"] for r in rs])
        ratio = np.log(np.array([r["speedup"] for r in rs]))
        cross = None
        for i in range(len(rs) - 1):  # first sign change of log(speed-up), interpolated in log activity
            if ratio[i] > 0 >= ratio[i + 1]:
                f = ratio[i] / (ratio[i] - ratio[i + 1])
                cross = float(np.exp(np.log(act[i]) + f * (np.log(act[i + 1]) - np.log(act[i]))))
        print(f"  crossover (event = dense): {'%.1f %%' % (100 * cross) if cross else 'outside the range'}")
        for r in rs:
            r["crossover"] = cross
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": arch, "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
