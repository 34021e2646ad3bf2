"""Which relaxation schedule does EP's estimate need? Candidates against a long, cold float64 relaxation.

For one network (a config) at several stages of training (weight files: `best.pt`, `weights/epoch_NNN.pt`
of a run with train.keep_epoch_weights, or "init" for the config's initial weights), a few training
images, and each candidate schedule (free / nudged budgets, sync / async, cold / warm start, stopping
rule), the candidate's EP estimate (the config's estimator and beta, in the config's precision) is
compared per layer with the same estimator computed in float64 from zeros with long phases (default
T1 800 / T2 200): cosine and relative error |g - g_ref| / |g_ref| of each layer's weight gradient, and
the steps each phase ran.

A warm start starts the free phase from the float64 free equilibrium of the *previous* stage's weights
for the same images (what a per-sample warm start sees one epoch later); the first stage has none.
The relative stopping rule (dynamics.stop = "relative") takes its free-phase reference from a primer
batch of other images run just before, as the previous batch of a training run would give it.

    python analysis/schedules.py cifar10_cpu_sym_ce --weights init RUN/weights/epoch_001.pt \\
        RUN/weights/epoch_003.pt --out analysis/results/schedules/estimates
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from spikeep.training.build import build_network, make_learner
from spikeep.training.checkpoint_files import load_checkpoint
from spikeep.core.dynamics import free_phase
from spikeep.data import prepare_data
from spikeep.learning.ep import ep_gradients
from spikeep.training.validation import load_config

# name -> (config overrides, warm start from the previous stage's equilibrium)
CANDIDATES: dict[str, tuple[list[str], bool]] = {
    "T1 30 / T2 10": (["dynamics.T1=30", "dynamics.T2=10"], False),
    "T1 60 / T2 15": (["dynamics.T1=60", "dynamics.T2=15"], False),
    "T1 120 / T2 25": (["dynamics.T1=120", "dynamics.T2=25"], False),
    "T1 250 / T2 25 (paper)": (["dynamics.T1=250", "dynamics.T2=25"], False),
    "T1 400 / T2 50": (["dynamics.T1=400", "dynamics.T2=50"], False),
    "async T1 30 / T2 10": (["dynamics.T1=30", "dynamics.T2=10", "dynamics.engine=fused",
                             "dynamics.schedule=async"], False),
    "async T1 60 / T2 15": (["dynamics.T1=60", "dynamics.T2=15", "dynamics.engine=fused",
                             "dynamics.schedule=async"], False),
    "warm T1 30 / T2 10": (["dynamics.T1=30", "dynamics.T2=10"], True),
    "warm T1 60 / T2 15": (["dynamics.T1=60", "dynamics.T2=15"], True),
    "max_change 1e-4 (T1 250 / T2 25)": (["dynamics.T1=250", "dynamics.T2=25", "dynamics.tol=1e-4",
                                          "dynamics.tol_every=10"], False),
    "T1 250 / T2 100": (["dynamics.T1=250", "dynamics.T2=100"], False),
    "T1 30 / T2 100": (["dynamics.T1=30", "dynamics.T2=100"], False),
    "T1 60 / T2 100": (["dynamics.T1=60", "dynamics.T2=100"], False),
    "T1 100 / T2 100": (["dynamics.T1=100", "dynamics.T2=100"], False),
    "T1 60 / T2 60": (["dynamics.T1=60", "dynamics.T2=60"], False),
    "relative 0.05 (T1 60 / T2 200)": (["dynamics.T1=60", "dynamics.T2=200", "dynamics.stop=relative",
                                        "dynamics.rtol=0.05", "dynamics.tol_every=5"], False),
    "relative 0.05, free 0.5 (T1 250 / T2 200)": (["dynamics.T1=250", "dynamics.T2=200", "dynamics.stop=relative",
                                                   "dynamics.rtol=0.05", "dynamics.free_rtol=0.5",
                                                   "dynamics.tol_every=5"], False),
    "relative 0.05, free 1 (T1 250 / T2 200)": (["dynamics.T1=250", "dynamics.T2=200", "dynamics.stop=relative",
                                                 "dynamics.rtol=0.05", "dynamics.free_rtol=1",
                                                 "dynamics.tol_every=5"], False),
    "relative 0.1, free 1 (T1 250 / T2 200)": (["dynamics.T1=250", "dynamics.T2=200", "dynamics.stop=relative",
                                                "dynamics.rtol=0.1", "dynamics.free_rtol=1",
                                                "dynamics.tol_every=5"], False),
    "relative 0.1 (T1 60 / T2 200)": (["dynamics.T1=60", "dynamics.T2=200", "dynamics.stop=relative",
                                       "dynamics.rtol=0.1", "dynamics.tol_every=5"], False),
    "relative 0.1 (T1 400 / T2 200)": (["dynamics.T1=400", "dynamics.T2=200", "dynamics.stop=relative",
                                        "dynamics.rtol=0.1", "dynamics.tol_every=5"], False),
    "relative 0.05 (T1 400 / T2 200)": (["dynamics.T1=400", "dynamics.T2=200", "dynamics.stop=relative",
                                         "dynamics.rtol=0.05", "dynamics.tol_every=5"], False),
    "relative 0.02 (T1 400 / T2 200)": (["dynamics.T1=400", "dynamics.T2=200", "dynamics.stop=relative",
                                         "dynamics.rtol=0.02", "dynamics.tol_every=5"], False),
    "relative 0.05 (T1 250 / T2 50)": (["dynamics.T1=250", "dynamics.T2=50", "dynamics.stop=relative",
                                        "dynamics.rtol=0.05", "dynamics.tol_every=5"], False),
    "warm relative 0.05 (T1 400 / T2 200)": (["dynamics.T1=400", "dynamics.T2=200", "dynamics.stop=relative",
                                              "dynamics.rtol=0.05", "dynamics.tol_every=5"], True),
    # the same budgets in float64 and the reference's budget in float32: schedule and precision apart
    "float64 T1 60 / T2 15": (["dynamics.T1=60", "dynamics.T2=15", "dynamics.dtype=float64"], False),
    "float64 T1 250 / T2 25": (["dynamics.T1=250", "dynamics.T2=25", "dynamics.dtype=float64"], False),
    "float64 T1 250 / T2 100": (["dynamics.T1=250", "dynamics.T2=100", "dynamics.dtype=float64"], False),
    "float32 T1 800 / T2 200": (["dynamics.T1=800", "dynamics.T2=200"], False),
}


def layer_grads(net) -> dict:
    """Each layer's weight gradient (the estimate), as float64."""
    return {n: p.grad.detach().double().clone() for n, p in net.named_parameters() if n.endswith("weight")}


def compare(g: dict, ref: dict) -> dict:
    out = {}
    for n, r in ref.items():
        a = g[n].flatten()
        out[n] = {"cosine": float(F.cosine_similarity(a, r.flatten(), 0)),
                  "rel_error": float((a - r.flatten()).norm() / r.norm())}
    return out


def load_weights(net, spec: str) -> str:
    """Weights into net from a weight file (or "init": as built); returns the stage's label."""
    if spec == "init":
        return "init"
    ck = load_checkpoint(Path(spec), "weights")
    net.load_state_dict(ck["model"])
    return f"epoch {ck.get('epoch', '?')} ({ck.get('test_acc', float('nan')):.1f} % test)"


def reference(cfg_path: str, sets: list, spec: str, x, y, T1: int, T2: int, estimator: str, beta: float):
    """Float64, from zeros, long phases: the estimate and the free equilibrium."""
    cfg = load_config(cfg_path, sets + ["dynamics.dtype=float64", "dynamics.precision=strict", "dynamics.tol=0",
                                        "dynamics.engine=eager", "dynamics.stop=max_change"])
    net = build_network(cfg)
    label = load_weights(net, spec)
    r = ep_gradients(net, x, y, estimator, beta, T1, T2, generator=torch.Generator().manual_seed(0))
    return label, layer_grads(net), r.s_free


def candidate(cfg_path: str, sets: list, spec: str, x, y, primer, warm_from: Optional[tuple]) -> dict:
    cfg = load_config(cfg_path, sets)
    net = build_network(cfg)
    load_weights(net, spec)
    learner = make_learner(cfg, net)
    e = cfg.estimator
    if cfg.dynamics.stop == "relative":  # the free phase's reference from a batch before this one
        learner.estimate(primer[0], primer[1], torch.Generator().manual_seed(1))
    dtype = next(net.parameters()).dtype
    start = tuple(s.to(dtype) for s in warm_from) if warm_from is not None else None
    t0 = time.perf_counter()
    r = ep_gradients(net, x, y, e.name, e.beta, cfg.dynamics.T1, cfg.dynamics.T2, cfg.dynamics.tol,
                     torch.Generator().manual_seed(0), state=start, tol_every=cfg.dynamics.tol_every,
                     settling=getattr(learner, "settling", None))
    seconds = time.perf_counter() - t0
    return {"grads": layer_grads(net), "steps_free": r.free_steps,
            "steps_nudged": (r.steps - r.free_steps) / r.nudged_phases, "seconds": seconds}


def write_md(out: Path, stages: list) -> None:
    """schedules.md: one table per stage, a column per layer (its weight's name)."""
    layers = list(stages[0]["rows"][0]["layers"]) if stages and stages[0]["rows"] else []
    lines = []
    for st in stages:
        lines += [f"### {st['stage']} (`{st['weights']}`)", "",
                  "| candidate | steps free / nudged | " + " | ".join(f"`{n.removesuffix('.weight')}` cos (rel err)"
                                                                   for n in layers)
                  + " | ms per image |", "| --- | --- | " + " | ".join("---" for _ in layers) + " | --- |"]
        for r in st["rows"]:
            lines.append(f"| {r['candidate']} | {r['steps_free']} / {r['steps_nudged']:.0f} | "
                         + " | ".join(f"{r['layers'][n]['cosine']:.4f} ({r['layers'][n]['rel_error']:.3f})"
                                      for n in layers) + f" | {r['ms_per_image']:.1f} |")
        lines.append("")
    (out / "schedules.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    ap.add_argument("--weights", nargs="+", default=["init"],
                    help="stages, in training order: 'init' or weight files (best.pt, weights/epoch_NNN.pt)")
    ap.add_argument("--images", type=int, default=32, help="training images the estimates are compared on")
    ap.add_argument("--seed", type=int, default=0, help="which images (a random draw of the training set)")
    ap.add_argument("--ref-T1", type=int, default=800)
    ap.add_argument("--ref-T2", type=int, default=200)
    ap.add_argument("--only", nargs="*", default=None, help="candidate names to run (default: all)")
    ap.add_argument("--out", required=True, help="folder for schedules.json and schedules.md")
    ap.add_argument("--md-only", action="store_true", help="only rewrite OUT/schedules.md from OUT/schedules.json")
    args = ap.parse_args()
    if args.md_only:
        write_md(Path(args.out), json.loads((Path(args.out) / "schedules.json").read_text())["stages"])
        return
    torch.manual_seed(0)
    base = load_config(args.config, args.set)
    ds = prepare_data(base.data)
    pick = torch.randperm(ds.train.y.shape[0], generator=torch.Generator().manual_seed(args.seed))
    idx, primer_idx = pick[:args.images], pick[args.images:2 * args.images]
    x, y = ds.train.x[idx], ds.train.y[idx]
    primer = (ds.train.x[primer_idx], ds.train.y[primer_idx])
    e = base.estimator
    names = args.only if args.only else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown candidate(s) {unknown}; known: {list(CANDIDATES)}")
    stages, prev_free = [], None
    for spec in args.weights:
        label, ref, s_free = reference(args.config, args.set, spec, x.double(), y, args.ref_T1, args.ref_T2,
                                       e.name, e.beta)
        rows = []
        for name in names:
            sets, warm = CANDIDATES[name]
            if warm and prev_free is None:
                continue
            c = candidate(args.config, args.set + sets, spec, x, y, primer, prev_free if warm else None)
            cmp = compare(c["grads"], ref)
            rows.append({"candidate": name, "steps_free": c["steps_free"], "steps_nudged": c["steps_nudged"],
                         "ms_per_image": 1e3 * c["seconds"] / len(y), "layers": cmp,
                         "min_cosine": min(v["cosine"] for v in cmp.values()),
                         "max_rel_error": max(v["rel_error"] for v in cmp.values())})
            print(f"[{label}] {name:38s} steps {c['steps_free']:4d} / {rows[-1]['steps_nudged']:5.1f} | "
                  + " ".join(f"{v['cosine']:.4f}" for v in cmp.values()) + f" | max rel err "
                  f"{rows[-1]['max_rel_error']:.3f} | {rows[-1]['ms_per_image']:.1f} ms/image", flush=True)
        stages.append({"weights": spec, "stage": label, "rows": rows})
        prev_free = s_free
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": args.config, "set": args.set, "images": args.images, "seed": args.seed,
            "reference": {"T1": args.ref_T1, "T2": args.ref_T2, "dtype": "float64", "start": "zeros"},
            "estimator": e.name, "beta": e.beta, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "candidates": {n: CANDIDATES[n][0] for n in names}}
    (out / "schedules.json").write_text(json.dumps({"meta": meta, "stages": stages}, indent=1) + "\n")
    write_md(out, stages)
    print(f"wrote {out / 'schedules.json'} and {out / 'schedules.md'}")


if __name__ == "__main__":
    main()
