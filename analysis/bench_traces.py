"""Benchmark: what recording weight traces adds to training time.

The paper's CIFAR-10 ConvNet (3.8 M weights, softmax readout) trains with symmetric EP on random
CIFAR-shaped batches, in one process, alternately without and with a TraceRecorder that records
`--sample` synapses per layer every iteration (value, delta-W, gradient, per-layer summaries) and
full weight tensors. Prints time per iteration of both, the time of one full snapshot, and the
overhead for an epoch of `--epoch-iters` iterations with one full snapshot per epoch (the setting of
the issue), plus the pessimistic overhead measured with a snapshot every `--iters` iterations.

    python analysis/bench_traces.py                      # CPU, batch 16, T1 50, T2 10
    python analysis/bench_traces.py --T1 250 --T2 25 --batch 128 --device cuda
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from spikeep.training.validation import load_config
from spikeep.learning.ep import ep_gradients
from spikeep.core.network import EqNetwork
from spikeep.traces import TraceRecorder, layer_specs

PAPER = load_config(Path(__file__).resolve().parents[1] / "spikeep" / "config" / "shipped" / "cifar10_paper.toml").model  # Table 2's ConvNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--T1", type=int, default=50)
    ap.add_argument("--T2", type=int, default=10)
    ap.add_argument("--iters", type=int, default=8, help="iterations per timed block")
    ap.add_argument("--blocks", type=int, default=3, help="alternating blocks of each variant")
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--epoch-iters", type=int, default=391, help="iterations per epoch (CIFAR-10, batch 128)")
    ap.add_argument("--compression", default="gzip", help="the trace filter (the default of [traces], gzip)")
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    net = EqNetwork(PAPER).to(dev).use_channels_last()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, 32, 32, generator=g).to(dev)
    y = torch.randint(0, 10, (a.batch,), generator=g).to(dev)
    names = net.layer_names()
    weights = {n: l.weight for n, l in zip(names, net.layers)}
    biases = {n: l.bias for n, l in zip(names, net.layers)}
    n_weights = sum(w.numel() for w in weights.values())
    tmp = Path(tempfile.mkdtemp())
    rec = TraceRecorder(tmp / "traces.h5", layer_specs(net, a.sample, 0), attrs={}, compression=a.compression)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    rec_time = [0.0, 0]  # seconds spent in the recorder, iterations recorded

    def iteration(record: bool, it: int):
        opt.zero_grad()
        ep_gradients(net, x, y, "symmetric", 1.0, a.T1, a.T2)
        t = time.perf_counter()
        before = rec.sample(weights) if record else None
        spent = time.perf_counter() - t
        opt.step()
        if record:
            sync()
            t = time.perf_counter()
            rec.record(it, 1, weights, before, {n: w.grad for n, w in weights.items()})
            sync()
            rec_time[0] += spent + time.perf_counter() - t
            rec_time[1] += 1

    iteration(False, 0)  # warm-up
    plain, traced, snaps = [], [], []
    it = 0
    for _ in range(a.blocks):
        sync()
        t0 = time.perf_counter()
        for _ in range(a.iters):
            iteration(False, 0)
        sync()
        plain.append((time.perf_counter() - t0) / a.iters)
        sync()
        t0 = time.perf_counter()
        for _ in range(a.iters):
            it += 1
            iteration(True, it)
        tf = time.perf_counter()
        rec.flush()
        sync()
        t1 = time.perf_counter()
        rec_time[0] += t1 - tf  # the block's buffered rows written to disk
        rec.snapshot(it, 1, weights, biases)
        sync()
        snaps.append(time.perf_counter() - t1)
        traced.append((t1 - t0) / a.iters)
    rec.close()
    p, t, s = min(plain), min(traced), min(snaps)
    per_iter = rec_time[0] / rec_time[1]  # measured inside the traced iterations (flushes included below)
    epoch = (per_iter * a.epoch_iters + s) / (p * a.epoch_iters)
    pessimistic = (per_iter * a.iters + s) / (p * a.iters)
    size = (tmp / "traces.h5").stat().st_size / 2**20
    print(f"paper ConvNet, {n_weights / 1e6:.2f} M weights | device {a.device} | batch {a.batch}, T1 {a.T1}, "
          f"T2 {a.T2} | {a.sample} synapses/layer every iteration, {a.compression}")
    print(f"  training iteration without traces: {p * 1e3:9.1f} ms")
    print(f"  training iteration with traces:    {t * 1e3:9.1f} ms  (difference within run-to-run noise)")
    print(f"  recorder time per iteration (sample + record, timed inside): {per_iter * 1e3:.2f} ms")
    print(f"  one full snapshot (all weights):   {s * 1e3:9.1f} ms")
    print(f"  overhead per epoch of {a.epoch_iters} iterations with one full snapshot: {100 * epoch:.2f} %")
    print(f"  pessimistic: a full snapshot every {a.iters} iterations: {100 * pessimistic:.2f} %")
    print(f"  file: {size:.1f} MiB for {it} iterations and {a.blocks} snapshots")
    if a.json:
        Path(a.json).write_text(json.dumps({"iteration_s": p, "traced_iteration_s": t, "snapshot_s": s,
                                            "recorder_s_per_iteration": per_iter,
                                            "epoch_overhead": epoch, "pessimistic_overhead": pessimistic,
                                            "args": vars(a), "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
