"""Accuracy against weight precision: train a config at several weight bit widths and rounding modes
(plus float) and write a markdown table and a plot.

    python analysis/bits_sweep.py models/mnist_mlp.toml --bits 1 2 4 8 --out analysis/results/bits_mnist_mlp
    python analysis/bits_sweep.py models/quickstart.toml --bits 4 8 --roundings nearest stochastic   # quick

Every run is an ordinary run folder under OUT/runs/ (so it can be inspected or resumed); extra
settings go through --set as for `spikeep train`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from spikeep.config import load_config
from spikeep.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--roundings", nargs="+", default=["nearest", "stochastic", "residual"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="runs/bits_sweep")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    cases = [("float", 0, "nearest")] + [(f"{b}-bit {r}", b, r) for b in a.bits for r in a.roundings]
    for name, bits, rounding in cases:
        cfg = load_config(a.config, a.overrides + [f"plasticity.bits={bits}", f"plasticity.rounding={rounding}"])
        run = out / "runs" / name.replace(" ", "_")
        r = train(cfg, run, progress=False, echo=False)
        results[name] = {"bits": bits, "rounding": rounding, "test_acc": r.history[-1]["test_acc"],
                         "best_test_acc": max(h["test_acc"] for h in r.history), "run": str(run)}
        print(f"{name:>22}: test accuracy {results[name]['test_acc']:.2f}%", flush=True)
    (out / "bits_sweep.json").write_text(json.dumps(results, indent=1))
    ref = results["float"]["test_acc"]
    lines = [f"Config `{a.config}` {' '.join('--set ' + o for o in a.overrides)}".rstrip(), "",
             "| weights | " + " | ".join(a.roundings) + " |", "| --- |" + " --- |" * len(a.roundings),
             f"| float32 | {ref:.2f} % |" + " |" * (len(a.roundings) - 1)]
    for b in a.bits:
        cells = [f"{results[f'{b}-bit {r}']['test_acc']:.2f} % ({results[f'{b}-bit {r}']['test_acc'] - ref:+.2f})"
                 for r in a.roundings]
        lines.append(f"| {b}-bit | " + " | ".join(cells) + " |")
    (out / "bits_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in a.roundings:
        ax.plot(a.bits, [results[f"{b}-bit {r}"]["test_acc"] for b in a.bits], "o-", label=r)
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
