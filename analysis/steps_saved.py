"""Steps to equilibrium of the paper's CIFAR-10 ConvNet per schedule and start (dynamics.schedule,
dynamics.warm_start): the residual max |s_{t+1} - s_t| per step (sync) or sweep (async; a sweep costs the
convolutions of one sync step), the steps to reach each tolerance, and the effect on the symmetric
estimate (cosine and relative error against the estimate at a tightly converged free state).

    python analysis/steps_saved.py [--images 8] [--weights RUN/best.pt] [--out DIR]

Warm start: the free phase of the same images started from their equilibrium under slightly different
weights (the weights perturbed by one SGD-sized step, 1e-3 relative), as a per-sample warm start sees it.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from spikeep.training.validation import load_config
from spikeep.core.dynamics import free_phase, nudged_phase
from spikeep.core.relaxer import Relaxer, RelaxSettings
from spikeep.core.network import EqNetwork
from spikeep.data import load_cifar10, normalize
from spikeep.learning.estimators import symmetric_estimate

REPO = Path(__file__).resolve().parents[1]
TOLS = (1e-2, 1e-3, 1e-4, 1e-6)


def trajectory(net, inp, start, T, schedule="sync"):
    res, s, rx = [], start, Relaxer(RelaxSettings(schedule=schedule))
    for _ in range(T):
        s, r = rx.block(net, inp, s, 0.0, 1)
        res.append(float(r))
    return s, res


def estimate(net, inp, s, T2=25, beta=0.5):
    sp = nudged_phase(net, inp, s, T2, beta).state
    sm = nudged_phase(net, inp, s, T2, -beta).state
    return symmetric_estimate(lambda a, ba, b, bb: net.dphi_dtheta_delta(inp, a, ba, inp, b, bb), sp, sm, beta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--T", type=int, default=150)
    ap.add_argument("--weights")
    ap.add_argument("--out", default="runs/steps_saved")
    a = ap.parse_args()
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "cifar10_paper.toml")
    test = normalize(load_cifar10(None, "").test, cfg.data.mean, cfg.data.std)
    x, y = test.x[:a.images].double(), test.y[:a.images]
    torch.manual_seed(0)
    net = EqNetwork(cfg.model).double()
    if a.weights:
        net.load_state_dict({k: v.double() for k, v in torch.load(a.weights, weights_only=True)["model"].items()})
    out = {}
    with torch.no_grad():
        inp = net.prepare(x, y)
        tight = free_phase(net, inp, 1000, tol=1e-13).state
        g_ref = estimate(net, inp, tight)
        other = copy.deepcopy(net)
        for p in other.parameters():
            p.mul_(1 + 1e-3 * torch.randn_like(p))
        warm0 = free_phase(other, other.prepare(x, y), 1000, tol=1e-13).state
        for name, sched, start in (("sync, from zeros", "sync", None), ("async, from zeros", "async", None),
                                   ("sync, warm start", "sync", warm0), ("async, warm start", "async", warm0)):
            s0 = net.init_state(a.images) if start is None else start
            s, res = trajectory(net, inp, s0, a.T, sched)
            row = {"residual": res, "steps_to": {str(t): next((i + 1 for i, r in enumerate(res) if r < t), None)
                                                 for t in TOLS}}
            for t in (1e-3, 1e-4):  # the estimate after stopping at tolerance t
                n = row["steps_to"][str(t)]
                if n is not None:
                    st, _ = trajectory(net, inp, s0, n, sched)
                    g = estimate(net, inp, st)
                    w = "synapses.0.weight"
                    d = g[w].flatten() - g_ref[w].flatten()
                    row[f"conv0_rel_error_at_{t}"] = float(d.norm() / g_ref[w].norm())
            out[name] = row
            print(name, row["steps_to"], {k: v for k, v in row.items() if k.startswith("conv0")}, flush=True)
    d = Path(a.out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "steps_saved.json").write_text(json.dumps({"args": vars(a), "rows": out}, indent=1) + "\n")
    lines = ["| run | " + " | ".join(f"steps to {t:g}" for t in TOLS) + " | conv0 estimate error at 1e-3 | at 1e-4 |",
             "| --- |" + " --- |" * (len(TOLS) + 2)]
    for name, r in out.items():
        cells = [str(r["steps_to"][str(t)]) for t in TOLS]
        errs = [f"{100 * r[k]:.3f} %" if k in r else "-" for k in ("conv0_rel_error_at_0.001", "conv0_rel_error_at_0.0001")]
        lines.append(f"| {name} | " + " | ".join(cells + errs) + " |")
    (d / "steps_saved.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
