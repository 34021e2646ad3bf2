"""Benchmark: what each HDF5 filter of the trace file costs (`traces.compression`, `gzip_level`).

The paper's CIFAR-10 ConvNet (3.8 M weights) at initialisation, weights nudged a little between rows;
one TraceRecorder per filter in the same process records `--sample` synapses per layer (record + flush)
and full snapshots. Prints the best of `--rows` times of each and the file size, and the ratio of each
filter's snapshot time to the uncompressed one.

    OMP_NUM_THREADS=1 python analysis/bench_trace_filters.py
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from spikeep.training.validation import load_config
from spikeep.core.network import EqNetwork
from spikeep.traces import TraceRecorder, layer_specs

PAPER = load_config(Path(__file__).resolve().parents[1] / "spikeep" / "config" / "shipped" / "cifar10_paper.toml").model  # Table 2's ConvNet
FILTERS = (("none", 1), ("lzf", 1), ("gzip", 1), ("gzip", 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=4)
    a = ap.parse_args()
    torch.manual_seed(0)
    net = EqNetwork(PAPER)
    names = net.layer_names()
    weights = {n: l.weight for n, l in zip(names, net.layers)}
    biases = {n: l.bias for n, l in zip(names, net.layers)}
    base = None
    print(f"{'filter':<8} {'record+flush ms':>16} {'snapshot ms':>12} {'x none':>7} {'MiB':>6}")
    for comp, level in FILTERS:
        tmp = Path(tempfile.mkdtemp())
        rec = TraceRecorder(tmp / "t.h5", layer_specs(net, a.sample, 0), attrs={}, compression=comp,
                            gzip_level=level)
        rows, snaps = [], []
        for i in range(a.rows):
            with torch.no_grad():
                for w in weights.values():
                    w.add_(torch.randn_like(w), alpha=1e-4)
            before = rec.sample(weights)
            t0 = time.perf_counter()
            rec.record(i + 1, 1, weights, before, weights)
            rec.flush()
            t1 = time.perf_counter()
            rec.snapshot(i + 1, 1, weights, biases)
            rows.append(t1 - t0)
            snaps.append(time.perf_counter() - t1)
        rec.close()
        base = base or min(snaps)
        name = comp + (f" {level}" if comp == "gzip" else "")
        print(f"{name:<8} {1e3 * min(rows):>16.1f} {1e3 * min(snaps):>12.0f} {min(snaps) / base:>7.1f} "
              f"{(tmp / 't.h5').stat().st_size / 2**20:>6.1f}")


if __name__ == "__main__":
    main()
