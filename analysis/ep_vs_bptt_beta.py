"""EP's gradient estimate against BPTT as beta shrinks (Laborieux et al. 2021, Sec. 3).

On a small converged ConvNet in float64, compare the one-sided and symmetric estimates with the BPTT
gradient of the same loss for several beta; print the relative errors and log-log slopes, and plot
them (error ~ beta for one-sided, ~ beta^2 for symmetric).

    python analysis/ep_vs_bptt_beta.py --out analysis/results/ep_vs_bptt_beta
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from spikeep.learning.bptt import bptt_gradients
from spikeep.config import ModelConfig
from spikeep.core.dynamics import free_phase, nudged_phase
from spikeep.learning.estimators import one_sided_estimate, symmetric_estimate
from spikeep.core.network import EqNetwork

BETAS = [0.4, 0.2, 0.1, 0.05, 0.02, 0.01]


def slope(xs, ys):
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def run(loss: str, activation: str, pools: str, T: int = 400, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    net = EqNetwork(ModelConfig(input_shape=[1, 8, 8], channels=[4], kernels=[3], strides=[1], paddings=[1],
                                pools=pools, hidden=[16], n_classes=4, loss=loss, activation=activation)).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (8,), generator=g)
    inp = net.prepare(x, y)
    free = free_phase(net, inp, T, tol=1e-14)
    _, ref = bptt_gradients(net, x, y, T, write=False)
    flat = lambda gs: torch.cat([v.flatten() for v in gs.values()])
    delta = lambda a, ba, b, bb: net.dphi_dtheta_delta(inp, a, ba, inp, b, bb)
    R = flat(ref)
    rows = []
    for beta in BETAS:
        sp = nudged_phase(net, inp, free.state, T, beta).state
        sm = nudged_phase(net, inp, free.state, T, -beta).state
        o = flat(one_sided_estimate(delta, free.state, sp, beta))
        s = flat(symmetric_estimate(delta, sp, sm, beta))
        rows.append({"beta": beta, "one_sided": float((o - R).norm() / R.norm()),
                     "symmetric": float((s - R).norm() / R.norm())})
    four = rows[:4]
    return {"loss": loss, "activation": activation, "pools": pools, "free_delta": free.delta, "rows": rows,
            "slope_one_sided_0.4-0.05": slope([r["beta"] for r in four], [r["one_sided"] for r in four]),
            "slope_symmetric_0.4-0.05": slope([r["beta"] for r in four], [r["symmetric"] for r in four])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/ep_vs_bptt_beta")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [("cross_entropy", "sigmoid", "a"), ("cross_entropy", "sigmoid", "m"), ("mse", "sigmoid", "a"),
             ("cross_entropy", "my_hard_sig", "m"), ("mse", "my_hard_sig", "m")]
    results = [run(*c) for c in cases]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.3 * len(results), 3.2), sharey=True)
    for ax, r in zip(axes, results):
        b = [row["beta"] for row in r["rows"]]
        ax.loglog(b, [row["one_sided"] for row in r["rows"]], "o:", label="one-sided")
        ax.loglog(b, [row["symmetric"] for row in r["rows"]], "s-", label="symmetric")
        ax.set_title(f"{r['loss']}, {r['activation']}, pool {r['pools']}", fontsize=8)
        ax.set_xlabel("beta")
    axes[0].set_ylabel("||EP - BPTT|| / ||BPTT||")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ep_vs_bptt_beta.png", dpi=110)
    (out / "ep_vs_bptt_beta.json").write_text(json.dumps(results, indent=1))
    print(f"{'case':<36} " + " ".join(f"b={b:<6}" for b in BETAS) + "  slope(0.4-0.05)")
    for r in results:
        name = f"{r['loss']}/{r['activation']}/{r['pools']}"
        for est in ("one_sided", "symmetric"):
            print(f"{name + ' ' + est:<36} " + " ".join(f"{row[est]:.1e}" for row in r["rows"])
                  + f"  {r[f'slope_{est}_0.4-0.05']:.2f}")
    print(f"wrote {out}/ep_vs_bptt_beta.png and .json")


if __name__ == "__main__":
    main()
