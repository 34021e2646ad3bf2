"""The CIFAR-10 spiking twin (issue 30, item 2): a rate-trained ConvNet's weights run as a spiking network.

The rate network and its spiking twin (the same weights, model.neurons = "spiking": IF neurons driven by
spike events only, spikeep/spiking/) classify the same CIFAR-10 test images (the npz's test split, drawn at
random with data.subset_seed as data.test_subset draws them, normalised as the config says). Reported:

* the rate network's accuracy with its free phase as training evaluates it (dynamics.T1 of the config) and
  at its fixed point (--fixed-T1 steps, a long relaxation: what the spiking equilibrium should match);
* per spiking setting (--variant, [spiking] keys): accuracy, agreement of predictions with both rate
  networks (and how many images only one of them gets right), spikes and SynOps per inference, per layer
  and in total, activity per layer (the fraction of its neurons spiking per step over the phase, which is
  also its mean rate), the per-layer gap between spike rates and the rate fixed point (mean |r - s*| and
  mean r - s*), steps, seconds per image, and an energy estimate per inference from a chip profile's
  event prices (--profile; the twin's float weights, its events priced with the profile's figures, the
  input held as a bias).

Any other network runs the same way (--config, --weights, --set): a spiking-trained ConvNet's "rate network"
is its weights with rate neurons (model.neurons = "rate"), e.g. the MNIST spiking ConvNets of
analysis/results/spiking_deep/ (give --rate-T1: a spiking config's dynamics.T1 is not what it was trained with).

Writes OUT/NAME.json (every figure) and OUT/NAME.md (the table). One CPU thread by default.

    python analysis/cifar10_twin.py --images 2000 --out analysis/results/cifar10_twin \
        --variant "default" --variant "pool trace 0.1: pool_alpha=0.1"
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import time
from pathlib import Path

import torch

from spikeep.data import prepare_data
from spikeep.hardware.chips import get_profile
from spikeep.hardware.energy import energy_estimate
from spikeep.spiking.metrics import Counts
from spikeep.training.build import build_network, make_learner
from spikeep.training.checkpoint_files import load_checkpoint
from spikeep.training.validation import load_config

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "tests" / "data" / "cifar10_cpu_epoch4_fp16.pt"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="cifar10_cpu_sym_ce", help="the network's config (shipped name or path)")
    ap.add_argument("--weights", default=str(WEIGHTS), help="rate-trained weights (a spikeep weights file, "
                    "e.g. a run's best.pt); default: the CPU ConvNet after 4 epochs, in float16")
    ap.add_argument("--images", type=int, default=2000, help="test images (drawn at random, fixed by data.subset_seed)")
    ap.add_argument("--batch", type=int, default=100, help="images per batch")
    ap.add_argument("--rate-T1", type=int, default=0, help="rate free phase as evaluated (0: the config's dynamics.T1)")
    ap.add_argument("--fixed-T1", type=int, default=250, help="steps of the long rate relaxation (fixed point)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL[: KEY=VALUE, ...]",
                    help="a spiking setting: a label and [spiking] keys, e.g. 'long: T1=400, window=100' "
                         "(repeatable; default: one variant, the config's [spiking] section)")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every network (KEY=VALUE)")
    ap.add_argument("--profile", default="loihi2", help="chip profile whose energy figures price the events ('' none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "analysis" / "results" / "cifar10_twin"))
    ap.add_argument("--name", default="twin", help="file stem of the JSON and markdown written to --out")
    return ap.parse_args(argv)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'label: T1=400, window=100' -> ('label', ['spiking.T1=400', 'spiking.window=100'])."""
    label, _, rest = text.partition(":")
    sets = [f"spiking.{kv.strip()}" for kv in rest.split(",") if kv.strip()]
    if not label.strip() or any("=" not in s for s in sets):
        raise SystemExit(f"--variant {text!r}: expected 'LABEL' or 'LABEL: KEY=VALUE, KEY=VALUE'")
    return label.strip(), sets


def load_network(args):
    """(config, network with the weights in float32, the weights file's metadata)."""
    cfg = load_config(args.config, args.set)
    ckpt = load_checkpoint(Path(args.weights), "weights")
    net = build_network(cfg)
    net.load_state_dict({k: v.to(torch.float32) for k, v in ckpt["model"].items()})
    meta = {k: ckpt[k] for k in ("epoch", "test_acc", "dtype", "source") if k in ckpt}
    return cfg, net, meta


def test_images(args, cfg):
    """The test images: data.test_subset drawn at random (the training set cut to a token subset)."""
    c = load_config(args.config, args.set + [f"data.test_subset={args.images}", "data.subset=10"])
    ds = prepare_data(c.data)
    if ds.test.y.shape[0] < args.images:
        raise SystemExit(f"only {ds.test.y.shape[0]} test images, asked for {args.images}")
    return ds.test.x, ds.test.y, {"name": ds.name, "mean": c.data.mean, "std": c.data.std,
                                  "subset_seed": c.data.subset_seed, "test_images": int(ds.test.y.shape[0])}


@torch.no_grad()
def rate_network(args, net, x, y, T1: int) -> dict:
    """The rate network's free phase of T1 steps on every batch: states, predictions, loss, seconds."""
    cfg = load_config(args.config, args.set + ['model.neurons="rate"', f"dynamics.T1={T1}"])  # a spiking config's rate twin too
    learner = make_learner(cfg, net)
    states, t0 = [], time.perf_counter()
    for i in range(0, len(y), args.batch):
        states.append(learner.free_equilibrium(x[i:i + args.batch]).state)
    seconds = time.perf_counter() - t0
    s = [torch.cat(layer) for layer in zip(*states)]
    top2 = net.logits(s).softmax(1).topk(2, 1).values
    return {"T1": T1, "state": s, "pred": net.logits(s).argmax(1), "loss": float(net.loss(s, y).mean()),
            "margin": top2[:, 0] - top2[:, 1], "seconds_per_image": seconds / len(y)}


@torch.no_grad()
def spiking_twin(args, net, sets: list[str], x, y) -> dict:
    """The spiking twin's free phase (the [spiking] T1 budget) on every batch: rates, predictions,
    counts summed over the images, steps and the settle statistic per batch, seconds."""
    cfg = load_config(args.config, args.set + ['model.neurons="spiking"'] + sets)
    sim = make_learner(cfg, net).sim
    rates, counts, steps, deltas, t0 = [], None, [], [], time.perf_counter()
    for i in range(0, len(y), args.batch):
        ph = sim.run_phase(net.prepare(x[i:i + args.batch]), None, cfg.spiking.T1)
        rates.append(ph.rates)
        counts = ph.counts if counts is None else counts + ph.counts
        steps.append(ph.steps)
        deltas.append(ph.delta)
    seconds = time.perf_counter() - t0
    r = [torch.cat(layer) for layer in zip(*rates)]
    return {"cfg": cfg, "rates": r, "pred": net.logits(r).argmax(1), "loss": float(net.loss(r, y).mean()),
            "counts": counts, "steps": steps, "deltas": deltas, "seconds_per_image": seconds / len(y)}


def agreement(pred, ref, y) -> dict:
    """How two classifiers' predictions compare on the same images."""
    a, b = pred == y, ref == y
    return {"same_prediction_pct": 100.0 * float((pred == ref).float().mean()),
            "only_this_right": int((a & ~b).sum()), "only_reference_right": int((~a & b).sum())}


def layer_names(net) -> list[str]:
    return [f"{s.kind}{k + 1} {'x'.join(map(str, s.post_shape))}" for k, s in enumerate(net.synapses)]


def energy(args, counts: Counts, n: int) -> dict:
    """Joules per inference from the profile's event prices, the input taken as a bias (one write per
    first-layer neuron). Not as rate-coded input spikes: the normalised images hold negative values, for
    which a rate code with p = x per step does not exist (its counted "expected spikes" would be negative)."""
    if not args.profile:
        return {}
    prof = get_profile(args.profile)
    e = energy_estimate(prof, counts.events().scaled(1 / n), "bias")
    return {"profile": prof.name, "chip_input": "bias",
            "per_inference_J": {k: e[k] for k in ("input", "synaptic", "neuron", "spikes", "total")},
            "leaves_out": e["leaves_out"], "source": e["source"]}


def spiking_figures(args, net, sp: dict, rate: dict, fixed: dict, y) -> dict:
    """Every figure of one spiking variant (see the module docstring)."""
    n, c, p = len(y), sp["counts"], sp["cfg"].spiking
    steps = sum(s * min(args.batch, n - i * args.batch) for i, s in enumerate(sp["steps"])) / n
    layers = []
    for k, name in enumerate(layer_names(net)):
        neurons = sp["rates"][k][0].numel()
        layers.append({"layer": name, "neurons": neurons, "spikes_per_inference": float(c.spikes[k]) / n,
                       "synops_per_inference": float(c.synops[k]) / n,
                       "activity": float(c.spikes[k]) / (n * neurons * steps),
                       "last_window_rate": float(sp["rates"][k].mean()),
                       "rate_network_state": float(fixed["state"][k].mean()),
                       "mean_abs_rate_gap": float((sp["rates"][k] - fixed["state"][k]).abs().mean()),
                       "mean_rate_gap": float((sp["rates"][k] - fixed["state"][k]).mean())})
    ev = c.events().scaled(1 / n)
    return {"settings": {k: getattr(p, k) for k in ("T1", "window", "rate_tol", "theta", "leak", "syn_alpha",
                                                    "pool_alpha", "encoding", "backend", "trace_tau", "v_min")},
            "test_acc": 100.0 * float((sp["pred"] == y).float().mean()), "test_loss": sp["loss"],
            "vs_rate": agreement(sp["pred"], rate["pred"], y), "vs_fixed_point": agreement(sp["pred"], fixed["pred"], y),
            "spikes_per_inference": float(c.spikes.sum()) / n, "synops_per_inference": float(c.synops.sum()) / n,
            "input_bias_writes_per_inference": ev.bias_writes, "neuron_updates_per_inference": ev.neuron_updates,
            "activity": float(c.spikes.sum()) / (n * sum(v["neurons"] for v in layers) * steps),
            "fixed_point_margin_median_where_different": float(fixed["margin"][sp["pred"] != fixed["pred"]].median())
            if bool((sp["pred"] != fixed["pred"]).any()) else None,
            "layers": layers, "steps_per_inference": steps, "settle_statistic_last": max(sp["deltas"]),
            "seconds_per_image": sp["seconds_per_image"], "energy": energy(args, c, n)}


def pct(v: float) -> str:
    return f"{v:.2f} %"


def summary_table(out: dict) -> list[str]:
    """One row per spiking variant: what the gap study compares."""
    r, vs = out["rate"], out["spiking"]
    names = [x["layer"].split()[0] for x in next(iter(vs.values()))["layers"]]
    head = (["spiking variant", "accuracy", f"gap to rate T1 {r['T1']} (pp)", "same prediction: rate / fixed point",
             "rate - fixed point, mean per layer (" + ", ".join(names) + ")", "mean abs per layer", "steps",
             "s per image"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k, v in vs.items():
        lines.append("| " + " | ".join([
            k, pct(v["test_acc"]), f"{v['test_acc'] - r['test_acc']:+.2f}",
            f"{v['vs_rate']['same_prediction_pct']:.2f} / {v['vs_fixed_point']['same_prediction_pct']:.2f} %",
            ", ".join(f"{x['mean_rate_gap']:+.4f}" for x in v["layers"]),
            ", ".join(f"{x['mean_abs_rate_gap']:.4f}" for x in v["layers"]),
            f"{v['steps_per_inference']:.0f}", f"{v['seconds_per_image']:.3f}"]) + " |")
    f = out["rate_fixed_point"]
    return lines + ["", f"Rate network: {pct(r['test_acc'])} with its free phase as trained (T1 {r['T1']}), "
                        f"{pct(f['test_acc'])} at its fixed point (T1 {f['T1']}); "
                        f"{out['fixed_vs_rate']['same_prediction_pct']:.2f} % same predictions. "
                        f"{out['data']['test_images']} test images."]


def markdown(out: dict) -> str:
    """The table of OUT/NAME.md: rate networks, then one column per spiking variant."""
    r, f, vs = out["rate"], out["rate_fixed_point"], out["spiking"]
    head = ["", f"rate, T1 {r['T1']} (as trained)", f"rate, T1 {f['T1']} (fixed point)"] + list(vs)
    rows = [["test accuracy", pct(r["test_acc"]), pct(f["test_acc"])] + [pct(v["test_acc"]) for v in vs.values()],
            ["gap to the rate network (pp)", "", f"{f['test_acc'] - r['test_acc']:+.2f}"]
            + [f"{v['test_acc'] - r['test_acc']:+.2f}" for v in vs.values()],
            ["same prediction as the rate network", "", pct(out["fixed_vs_rate"]["same_prediction_pct"])]
            + [pct(v["vs_rate"]["same_prediction_pct"]) for v in vs.values()],
            ["same prediction as the fixed point", "", ""]
            + [pct(v["vs_fixed_point"]["same_prediction_pct"]) for v in vs.values()],
            [f"fixed point's softmax margin (top 1 - top 2), median where the predictions differ (all images: "
             f"{f['margin_median']:.3f})", "", ""]
            + [f"{v['fixed_point_margin_median_where_different']:.3f}"
               if v["fixed_point_margin_median_where_different"] is not None else "-" for v in vs.values()],
            ["right where the rate network is wrong / wrong where it is right", "", ""]
            + [f"{v['vs_rate']['only_this_right']} / {v['vs_rate']['only_reference_right']}" for v in vs.values()],
            ["steps per inference", str(r["T1"]), str(f["T1"])] + [f"{v['steps_per_inference']:.0f}" for v in vs.values()],
            ["spikes per inference", "", ""] + [f"{v['spikes_per_inference']:,.0f}" for v in vs.values()],
            ["SynOps per inference", "", ""] + [f"{v['synops_per_inference']:.3g}" for v in vs.values()],
            ["activity (spikes per neuron per step)", "", ""] + [f"{v['activity']:.4f}" for v in vs.values()]]
    some = next(iter(vs.values()))
    for k, layer in enumerate(some["layers"]):
        rows.append([f"{layer['layer']}: activity (rate network's mean state)", "",
                     f"({layer['rate_network_state']:.4f})"] + [f"{v['layers'][k]['activity']:.4f}" for v in vs.values()])
        rows.append([f"{layer['layer']}: spikes / SynOps per inference", "", ""]
                    + [f"{v['layers'][k]['spikes_per_inference']:,.0f} / {v['layers'][k]['synops_per_inference']:.3g}"
                       for v in vs.values()])
        rows.append([f"{layer['layer']}: rate - fixed point, mean (mean abs)", "", ""]
                    + [f"{v['layers'][k]['mean_rate_gap']:+.4f} ({v['layers'][k]['mean_abs_rate_gap']:.4f})"
                       for v in vs.values()])
    if some["energy"]:
        rows.append([f"energy per inference, {some['energy']['profile']} event prices (input as a bias)", "", ""]
                    + [f"{v['energy']['per_inference_J']['total'] * 1e3:.2f} mJ" for v in vs.values()])
    threads = out["threads"]
    rows.append([f"seconds per image ({threads} CPU thread{'s' if threads != 1 else ''})", f"{r['seconds_per_image']:.3f}", f"{f['seconds_per_image']:.3f}"]
                + [f"{v['seconds_per_image']:.3f}" for v in vs.values()])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + ["| " + " | ".join(row) + " |" for row in rows]
    settings = [f"* {k}: " + ", ".join(f"{a} {b}" for a, b in v["settings"].items()) for k, v in vs.items()]
    return "\n".join(summary_table(out) + ["", "All figures:", ""] + lines + ["", "Spiking settings:", ""]
                     + settings) + "\n"


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    cfg, net, meta = load_network(args)
    x, y, data = test_images(args, cfg)
    rate = rate_network(args, net, x, y, args.rate_T1 or cfg.dynamics.T1)
    fixed = rate_network(args, net, x, y, args.fixed_T1)
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    out = {"command": shlex.join(["python", "analysis/cifar10_twin.py"] + args.argv), "config": args.config,
           "weights": str(Path(args.weights).resolve().relative_to(REPO)) if Path(args.weights).resolve().is_relative_to(REPO)
           else args.weights, "weights_meta": meta, "data": data, "layers": layer_names(net),
           "rate": {}, "rate_fixed_point": {}, "fixed_vs_rate": agreement(fixed["pred"], rate["pred"], y), "spiking": {}}
    for key, r in (("rate", rate), ("rate_fixed_point", fixed)):
        out[key] = {"T1": r["T1"], "test_acc": 100.0 * float((r["pred"] == y).float().mean()), "test_loss": r["loss"],
                    "seconds_per_image": r["seconds_per_image"], "margin_median": float(r["margin"].median()),
                    "mean_state_per_layer": [float(s.mean()) for s in r["state"]]}
    for label, sets in variants:
        sp = spiking_twin(args, net, sets, x, y)
        out["spiking"][label] = {"set": sets, **spiking_figures(args, net, sp, rate, fixed, y)}
        print(f"{label}: {out['spiking'][label]['test_acc']:.2f} % spiking vs {out['rate']['test_acc']:.2f} % rate "
              f"({sp['seconds_per_image']:.3f} s per image)", flush=True)
    out.update(seconds_total=time.perf_counter() - t0, threads=torch.get_num_threads(), torch=torch.__version__,
               machine=platform.machine())
    return out


def main(argv=None) -> dict:
    import sys
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    out = run(args)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (folder / f"{args.name}.md").write_text(markdown(out))
    print(markdown(out))
    return out


if __name__ == "__main__":
    main()
