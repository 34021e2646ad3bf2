"""Benchmark: training speed against torch's CPU thread count, for rate and spiking configs.

For each config, builds its network, learner and optimizer once and times training iterations on
real batches (the config's own data, batch size and phases), alternating blocks at 1, 2, ... threads
(`torch.set_num_threads`) in the same process, so load from elsewhere hits every setting alike.
Prints seconds per iteration (best block) and each setting's time relative to one thread.

    python analysis/bench_threads.py                                # quickstart, MNIST MLP, spiking MLP, spiking ConvNet
    python analysis/bench_threads.py spikeep/config/shipped/mnist_conv.toml --threads 1 2 4
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from spikeep.training.build import build_network, make_learner, make_optimizer
from spikeep.training.validation import load_config
from spikeep.data import prepare_data

REPO = Path(__file__).resolve().parent.parent
DEFAULT = ["spikeep/config/shipped/quickstart.toml", "spikeep/config/shipped/mnist_mlp.toml", "spikeep/config/shipped/mnist_mlp_spiking.toml",
           "spikeep/config/shipped/mnist_conv_spiking.toml"]


def iteration(learner, opt, x, y, gen) -> None:
    opt.zero_grad(set_to_none=False)
    learner.estimate(x, y, gen, gen)
    opt.step()


def bench(path: str, threads: list[int], iters: int, blocks: int) -> dict:
    cfg = load_config(REPO / path if not Path(path).is_absolute() else path, ["data.subset=2000"])
    torch.manual_seed(0)
    net = build_network(cfg, torch.device("cpu"))
    learner, opt = make_learner(cfg, net), make_optimizer(net, cfg)
    ds = prepare_data(cfg.data)
    B = cfg.train.batch_size
    x, y = ds.train.x[:B * iters], ds.train.y[:B * iters]
    gen = torch.Generator().manual_seed(0)
    iteration(learner, opt, x[:B], y[:B], gen)  # warm-up (first-call costs)
    best = {k: float("inf") for k in threads}
    for _ in range(blocks):
        for k in threads:
            torch.set_num_threads(k)
            t0 = time.perf_counter()
            for i in range(iters):
                iteration(learner, opt, x[i * B:(i + 1) * B], y[i * B:(i + 1) * B], gen)
            best[k] = min(best[k], (time.perf_counter() - t0) / iters)
    return {"config": path, "neurons": cfg.model.neurons, "batch_size": B, "seconds_per_iteration": best,
            "relative_to_1_thread": {k: best[k] / best[threads[0]] for k in threads}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", default=DEFAULT)
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, 2, os.cpu_count() or 1}))
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}; seconds per iteration (best of {a.blocks} blocks)")
    for c in a.configs:
        r = bench(c, a.threads, a.iters, a.blocks)
        rows.append(r)
        print(f"{c:<36} {r['neurons']:<8} batch {r['batch_size']:>4}: "
              + "  ".join(f"{k} thr {r['seconds_per_iteration'][k]:.3f} s ({r['relative_to_1_thread'][k]:.2f}x)"
                          for k in a.threads), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
