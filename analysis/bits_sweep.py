"""Accuracy against weight precision: train a config at several weight bit widths and rounding modes
(plus float) and write a markdown table and a plot.

    python analysis/bits_sweep.py spikeep/config/shipped/mnist_mlp.toml --bits 1 2 4 8 --out analysis/results/bits_mnist_mlp
    python analysis/bits_sweep.py spikeep/config/shipped/quickstart.toml --bits 4 8 --roundings nearest stochastic   # quick

Every run is an ordinary run folder under OUT/runs/ (so it can be inspected or resumed); extra
settings go through --set as for `spikeep train`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikeep.training.validation import load_config
from spikeep.training.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--roundings", nargs="+", default=["nearest", "stochastic", "residual"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--headroom", nargs="+", default=[], metavar="BITS:H",
                    help="weight range per bit width, e.g. 1:3 2:1 4:4 8:16 (default: the config's)")
    ap.add_argument("--only", nargs="+", default=[], metavar="BITS:ROUNDING",
                    help="run only these cells of the grid (the table shows '-' for the others)")
    ap.add_argument("--out", default="runs/bits_sweep")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    headroom = {int(k): float(v) for k, v in (h.split(":") for h in a.headroom)}
    only = {(int(k), v) for k, v in (c.split(":") for c in a.only)}
    results = {}
    cases = [("float", 0, "nearest")] + [(f"{b}-bit {r}", b, r) for b in a.bits for r in a.roundings
                                         if not only or (b, r) in only]
    for name, bits, rounding in cases:
        extra = [f"plasticity.bits={bits}", f"plasticity.rounding={rounding}"]
        if bits in headroom:
            extra.append(f"plasticity.headroom={headroom[bits]}")
        run = out / "runs" / name.replace(" ", "_")
        done = run / "summary.json"
        if done.is_file() and json.loads(done.read_text()).get("finished"):  # a finished run is kept
            summ = json.loads(done.read_text())
            acc, best = summ["final_test_acc"], summ["best_test_acc"]
        else:
            cfg = load_config(a.config, a.overrides + extra)
            r = train(cfg, run, resume=(run / "checkpoint.pt").is_file(), progress=False, echo=False)
            acc, best = r.history[-1]["test_acc"], max(h["test_acc"] for h in r.history)
        results[name] = {"bits": bits, "rounding": rounding, "test_acc": acc, "best_test_acc": best,
                         "headroom": headroom.get(bits), "run": str(run)}
        print(f"{name:>22}: test accuracy {results[name]['test_acc']:.2f}%", flush=True)
    (out / "bits_sweep.json").write_text(json.dumps(results, indent=1))
    ref = results["float"]["test_acc"]
    cmd = " ".join([f"`{a.config}`"] + [f"--set {o}" for o in a.overrides]
                   + ([f"--headroom {' '.join(a.headroom)}"] if a.headroom else []))
    lines = [f"Config {cmd}", "",
             "| weights | headroom | " + " | ".join(a.roundings) + " |", "| --- | --- |" + " --- |" * len(a.roundings),
             f"| float32 | | {ref:.2f} % |" + " |" * (len(a.roundings) - 1)]
    for b in a.bits:
        cells = [f"{results[k]['test_acc']:.2f} % ({results[k]['test_acc'] - ref:+.2f})" if k in results else "-"
                 for k in (f"{b}-bit {r}" for r in a.roundings)]
        lines.append(f"| {b}-bit | {headroom.get(b, '')} | " + " | ".join(cells) + " |")
    (out / "bits_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in a.roundings:
        pts = [(b, results[f"{b}-bit {r}"]["test_acc"]) for b in a.bits if f"{b}-bit {r}" in results]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=r)
    ax.axhline(ref, color="k", ls="--", label="float32")
    ax.set_xlabel("weight bits")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(a.bits)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bits_sweep.png", dpi=110)
    print(f"wrote {out}/bits_sweep.md, .json, .png")


if __name__ == "__main__":
    main()
