"""Per-image cost of spiking EP training relative to its rate twin, in the same process.

The spiking network (a config with model.neurons = "spiking") and its rate twin (the same config with
model.neurons = "rate" and the rate dynamics' step budgets --rate-T1 / --rate-T2) estimate the EP
update of the same real training batches; blocks alternate between the two `--rounds` times and the
fastest block of each counts (the least disturbed by other work). With --weights (trained weights),
both are also evaluated on the test set, which shows the accuracy at which the costs are compared.

    python analysis/bench_twin.py spikeep/config/shipped/mnist_mlp2_spiking.toml --rate-T1 40 --rate-T2 15 --weights RUN/best.pt
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from spikeep.training.build import build_network, make_learner
from spikeep.training.validation import load_config
from spikeep.data import prepare_data
from spikeep.training.evaluation import evaluate
from spikeep.training.checkpoint_files import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--rate-T1", type=int, required=True)
    ap.add_argument("--rate-T2", type=int, required=True)
    ap.add_argument("--weights", help="trained weights (best.pt) to evaluate both models with")
    ap.add_argument("--batches", type=int, default=4, help="training batches per timed block")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--test", type=int, default=10000, help="test images for the accuracies (with --weights)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfgs = {"spiking": load_config(args.config, args.set + ['model.neurons="spiking"']),
            "rate": load_config(args.config, args.set + ['model.neurons="rate"', f"dynamics.T1={args.rate_T1}",
                                                         f"dynamics.T2={args.rate_T2}"])}
    ds = prepare_data(cfgs["spiking"].data)
    bs = cfgs["spiking"].train.batch_size
    net = build_network(cfgs["spiking"])
    if args.weights:
        net.load_state_dict(load_checkpoint(Path(args.weights), "weights")["model"])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    learners = {k: make_learner(c, net) for k, c in cfgs.items()}
    batches = [(ds.train.x[i * bs:(i + 1) * bs], ds.train.y[i * bs:(i + 1) * bs]) for i in range(args.batches)]
    best = {k: float("inf") for k in learners}
    steps = {}
    for _ in range(args.rounds):
        for name, learner in learners.items():
            net.load_state_dict(state)  # estimates write .grad only; the weights stay as they are
            t0 = time.perf_counter()
            total = 0
            for i, (x, y) in enumerate(batches):
                r = learner.estimate(x, y, torch.Generator().manual_seed(i))
                total += r.steps
            best[name] = min(best[name], (time.perf_counter() - t0) / (len(batches) * bs))
            steps[name] = total / len(batches)
    out = {"config": args.config, "set": args.set, "batch_size": bs, "rate_T1": args.rate_T1, "rate_T2": args.rate_T2,
           "ms_per_train_image": {k: 1e3 * v for k, v in best.items()}, "steps_per_batch": steps,
           "ratio_spiking_over_rate": best["spiking"] / best["rate"], "torch": torch.__version__,
           "threads": torch.get_num_threads(), "machine": platform.machine()}
    print(f"{args.config}: per training image {1e3 * best['spiking']:.2f} ms spiking ({steps['spiking']:.0f} steps per "
          f"batch), {1e3 * best['rate']:.2f} ms rate twin ({steps['rate']:.0f} steps): spiking / rate = "
          f"{out['ratio_spiking_over_rate']:.2f}x")
    if args.weights:
        test = ds.test._replace(x=ds.test.x[:args.test], y=ds.test.y[:args.test])
        acc = {}
        for name, learner in learners.items():
            t0 = time.perf_counter()
            acc[name] = evaluate(learner, test, cfgs[name]).acc
            out.setdefault("ms_per_test_image", {})[name] = 1e3 * (time.perf_counter() - t0) / args.test
        out["test_acc"] = acc
        print(f"  the same weights: test accuracy {acc['spiking']:.2f} % spiking, {acc['rate']:.2f} % rate twin "
              f"({args.test} images); inference {out['ms_per_test_image']['spiking']:.2f} / "
              f"{out['ms_per_test_image']['rate']:.2f} ms per image")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
