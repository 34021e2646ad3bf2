"""A trained spiking run exported to NIR, read back and run in Norse, against spikeep's own twin.

Exports the run (spikeep export --approximate), reads the file with nir.read, imports it with
norse.torch.from_nir, swaps Norse's IF (reset to zero) for spikeep's subtractive IF
(spikeep.training.nir_export.SubtractiveIF) and simulates T steps of the first test images with the input as a
constant current. Compares per layer the spike counts with spikeep's spiking twin over the same T
steps, and the graph's predictions (argmax of the output node's sum over the T steps: the readout
Affine of the spikes) with the twin's and the labels; also with Norse's own reset to zero. Graphs with a
Flatten node (ConvNets) run batched with Norse's Flatten shifted past the batch axis
(`run_in_norse(..., batched_flatten=True)`; the tests check it gives the numbers of Norse as imported).

    python analysis/nir_check.py RUN_DIR --out analysis/results/spiking_deep/mlp2/nir_check.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from spikeep.training.validation import spiking_params
from spikeep.data import prepare_data
from spikeep.training.evaluation import load_run
from spikeep.training.nir_export import export_run, run_in_norse
from spikeep.spiking.simulator import SpikingParams, SpikingSimulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--T", type=int, default=150, help="steps (the run's free-phase budget by default)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import nir

    run = Path(args.run_dir)
    cfg, net, _ = load_run(run)
    ds = prepare_data(cfg.data)
    x, y = ds.test.x[:args.images], ds.test.y[:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        info = export_run(run, Path(tmp) / "net.nir", approximate=True)
        size = (Path(tmp) / "net.nir").stat().st_size
        graph = nir.read(str(Path(tmp) / "net.nir"))
    params = spiking_params(cfg.spiking)
    twin = SpikingSimulator(net, SpikingParams(params.neuron, window=args.T)).run_phase(net.prepare(x), None, args.T)
    ours = [(r * args.T).round() for r in twin.rates]
    out = {"run": str(run), "images": args.images, "T": args.T, "nir_nodes": info["nodes"], "nir_edges": info["edges"],
           "nir_bytes": size, "dropped": info["dropped"], "layers": {}}
    with torch.no_grad():
        pred_twin = net.logits(twin.rates).argmax(1)
    out["acc_twin"] = 100.0 * float((pred_twin == y).float().mean())
    for subtract in (True, False):
        key = "subtractive" if subtract else "norse_reset_to_zero"
        flat_in = len(graph.nodes["input"].output_type["output"]) == 1
        counts, output = run_in_norse(graph, x.flatten(1) if flat_in else x, args.T,
                                      params.neuron if subtract else None, batched_flatten=True)
        pred = output.argmax(1)  # the graph's own output node
        names = sorted(counts, key=lambda n: int(n.split("_")[1]))
        out[key] = {"acc": 100.0 * float((pred == y).float().mean()),
                    "same_prediction_as_twin": 100.0 * float((pred == pred_twin).float().mean()),
                    "spikes_vs_twin_percent": 100.0 * (sum(float(counts[n].sum()) for n in names)
                                                       / sum(float(c.sum()) for c in ours) - 1.0),
                    "layers": {n: {"max_abs_count_diff": float((counts[n] - c).abs().max()),
                                   "mean_abs_count_diff": float((counts[n] - c).abs().mean()),
                                   "mean_count_twin": float(c.mean()),
                                   "mean_count_norse": float(counts[n].mean())}
                               for n, c in zip(names, ours)}}
        print(f"{key}: accuracy {out[key]['acc']:.2f} % (twin {out['acc_twin']:.2f} %), same prediction as the twin "
              f"for {out[key]['same_prediction_as_twin']:.2f} % of images, spikes {out[key]['spikes_vs_twin_percent']:+.1f} % "
              f"vs the twin; per layer "
              + "; ".join(f"{n}: mean |count diff| {v['mean_abs_count_diff']:.3f}, max {v['max_abs_count_diff']:.0f} "
                          f"(mean count {v['mean_count_twin']:.1f} twin, {v['mean_count_norse']:.1f} Norse)"
                          for n, v in out[key]["layers"].items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
