"""Settling that ends phases: what it costs the spiking EP estimate and the predictions.

For one network (a config, optionally with trained weights), a few real training batches and a slice
of the test set, each (window, rate_tol) setting of the spiking twin is compared with the rate
network's own EP update on the same weights and batch (rate dynamics run to convergence):

* steps the free and nudged phases used (rate_tol = 0: the whole budget);
* cosine between the spiking estimate and the rate EP estimate, per parameter tensor (weights);
* test accuracy of the free phase (inference) on the test slice, and spikes per inference;
* seconds per training image (estimate) and per test image (inference), in this process.

    python analysis/settling.py spikeep/config/shipped/mnist_mlp2_spiking.toml --weights RUN/best.pt --out analysis/results/spiking_deep/settling_mlp
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spikeep.training.build import build_network, make_learner
from spikeep.training.validation import load_config
from spikeep.data import prepare_data
from spikeep.learning.ep import ep_gradients
from spikeep.training.checkpoint_files import load_checkpoint


def cosines(a: dict, b: dict) -> dict:
    return {n: float(F.cosine_similarity(a[n].flatten().double(), b[n].flatten().double(), 0)) for n in a
            if n.endswith("weight")}


def grads(net) -> dict:
    return {n: p.grad.detach().clone() for n, p in net.named_parameters()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--weights", help="a best.pt / checkpoint.pt whose weights to use (default: the initial ones)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=3, help="training batches the estimate is compared on")
    ap.add_argument("--test", type=int, default=1000, help="test images for the accuracy of the free phase")
    ap.add_argument("--windows", type=int, nargs="+", default=[10, 20, 25, 50])
    ap.add_argument("--tols", type=float, nargs="+", default=[0.0, 0.002, 0.004, 0.008])
    ap.add_argument("--rate-T1", type=int, default=300, help="rate reference: free steps (to convergence)")
    ap.add_argument("--rate-T2", type=int, default=100, help="rate reference: nudged steps")
    ap.add_argument("--out", required=True, help="folder for settling.json and settling.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = load_config(args.config, args.set)
    ds = prepare_data(cfg.data)
    net = build_network(cfg)
    if args.weights:
        net.load_state_dict(load_checkpoint(Path(args.weights), "weights")["model"])
    e = cfg.estimator
    xs = [ds.train.x[i * args.batch:(i + 1) * args.batch] for i in range(args.batches)]
    ys = [ds.train.y[i * args.batch:(i + 1) * args.batch] for i in range(args.batches)]
    ref = []
    for x, y in zip(xs, ys):  # the rate network's EP update on the same weights (converged phases)
        ep_gradients(net, x, y, e.name, e.beta, args.rate_T1, args.rate_T2, generator=torch.Generator().manual_seed(0))
        ref.append(grads(net))
    xt, yt = ds.test.x[:args.test], ds.test.y[:args.test]
    rows = []
    for w in args.windows:
        for tol in args.tols:
            c = load_config(args.config, args.set + [f"spiking.window={w}", f"spiking.rate_tol={tol}",
                                                     f"spiking.T1={max(cfg.spiking.T1, 2 * w)}",
                                                     f"spiking.T2={max(cfg.spiking.T2, 2 * w)}"])
            learner = make_learner(c, net)
            cos, free, nudged, t0 = [], 0, 0, time.perf_counter()
            for x, y, g in zip(xs, ys, ref):
                r = learner.estimate(x, y, torch.Generator().manual_seed(0))
                cos.append(cosines(grads(net), g))
                free += r.free_steps
                nudged += (r.steps - r.free_steps) / max(r.nudged_phases, 1)
            t_train = (time.perf_counter() - t0) / sum(len(y) for y in ys)
            t0 = time.perf_counter()
            correct, spikes, inf_steps, nb = 0, 0.0, 0, 0
            for i in range(0, len(yt), 500):
                eq = learner.free_equilibrium(xt[i:i + 500])
                correct += int((net.logits(eq.state).argmax(1) == yt[i:i + 500]).sum())
                spikes += eq.spikes
                inf_steps += eq.steps
                nb += 1
            t_test = (time.perf_counter() - t0) / len(yt)
            mean_cos = {n: sum(d[n] for d in cos) / len(cos) for n in cos[0]}
            row = {"window": w, "rate_tol": tol, "steps_free": free / len(xs), "steps_nudged": nudged / len(xs),
                   "steps_inference": inf_steps / nb, "cosine": mean_cos, "min_cosine": min(mean_cos.values()),
                   "test_acc": 100.0 * correct / len(yt), "spikes_per_inference": spikes / len(yt),
                   "s_per_train_image": t_train, "s_per_test_image": t_test}
            rows.append(row)
            print(f"window {w:3d} tol {tol:.3f}: steps free {row['steps_free']:6.1f} nudged {row['steps_nudged']:6.1f} "
                  f"inference {row['steps_inference']:6.1f} | min cos {row['min_cosine']:.3f} | test acc "
                  f"{row['test_acc']:.2f}% | {1e3 * t_train:.2f} ms/train image, {1e3 * t_test:.2f} ms/test image",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": args.config, "set": args.set, "weights": args.weights, "batch": args.batch,
            "batches": args.batches, "test_images": args.test, "rate_reference": [args.rate_T1, args.rate_T2],
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}
    (out / "settling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = ["| window | rate_tol | steps free / nudged / inference | min cosine with rate EP | test acc | ms per train / test image |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['window']} | {r['rate_tol']:g} | {r['steps_free']:.0f} / {r['steps_nudged']:.0f} / "
                     f"{r['steps_inference']:.0f} | {r['min_cosine']:.3f} | {r['test_acc']:.2f} % | "
                     f"{1e3 * r['s_per_train_image']:.2f} / {1e3 * r['s_per_test_image']:.2f} |")
    (out / "settling.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'settling.json'} and {out / 'settling.md'}")


if __name__ == "__main__":
    main()
