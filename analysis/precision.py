"""Precision of the symmetric EP estimate, per layer, against float64: the paper's CIFAR-10 ConvNet
(Laborieux et al. 2021), real CIFAR-10 test images normalised as in spikeep/config/shipped/cifar10_paper.toml.

    python analysis/precision.py [--device cpu] [--images 8] [--T1 60] [--T2 15] [--beta 0.5] [--out DIR]

The same weights (float64 copies of float32 ones) relax and estimate in each precision; for each
layer it prints ||g - g64|| / ||g64|| and the cosine with g64, on two metrics:

  from zero          g64 of a float64 run from zeros, as the precision's own run (today's metric: it
                     mixes "another equilibrium" with "a wrong estimate");
  same equilibrium   g64 of float64 phases started from the precision's own free state (the float64 free
                     phase polishes it to max |s_{t+1} - s_t| < 1e-13 first): the estimate's own error.

and the residual max |s_T - s_{T-1}| at the end of each phase. Rows:
  float32, naive     the difference of the two phases' correlations (the paper's code, spikeep before)
  float32            the states differenced before they are correlated (spikeep's estimators)
  bf16 drives        drives in bfloat16 (autocast), states and the estimate in float32
  bf16 drives, naive the same dynamics with the naive difference
  bf16 free phase    the free phase's drives in bfloat16, the nudged phases in float32 (from that s*)
  tf32 (CUDA only)   matmuls and convolutions in TF32, the rest float32
  bf16_incremental   float32 drives updated by bfloat16 convolutions of each step's change, exact float32
                     recomputation every 20 steps (core.relaxer); "no recompute": the same without the bound
--weights RUN_DIR/best.pt (or checkpoint.pt) uses trained weights instead of the initialisation.
Writes precision.json and precision.md to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from spikeep.training.validation import load_config
from spikeep.training.torch_settings import set_precision
from spikeep.core.dynamics import free_phase, nudged_phase
from spikeep.core.relaxer import EAGER, Relaxer, RelaxSettings
from spikeep.core.network import EqNetwork
from spikeep.data import load_cifar10, normalize
from spikeep.learning.estimators import symmetric_estimate

REPO = Path(__file__).resolve().parents[1]


def residual(net: EqNetwork, inp, s, beta=0.0) -> float:
    """max |s_{t+1} - s_t| of one more (reference) step from s."""
    with torch.no_grad():
        return max(float((a - b).abs().max()) for a, b in zip(net.step(inp, s, beta), s))


def estimates(net: EqNetwork, x, y, T1, T2, beta, free_relaxer=None, polish=0, info=None, s_start=None,
              relaxer: Relaxer = EAGER):
    """(naive, cancellation-free) symmetric estimates by parameter name, the phases run by `relaxer`;
    `free_relaxer` runs the first T1 - polish steps of the free phase (e.g. bf16 drives), the rest
    `relaxer`. `info` (a dict) receives the free state and the residuals; `s_start`: the free phase's start."""
    with torch.no_grad():
        inp = net.prepare(x, y)
        s0 = free_phase(net, inp, T1 - polish, s_start, relaxer=free_relaxer or relaxer).state
        if polish:
            s0 = free_phase(net, inp, polish, s0, relaxer=relaxer).state
        sp = nudged_phase(net, inp, s0, T2, beta, relaxer=relaxer).state
        sm = nudged_phase(net, inp, s0, T2, -beta, relaxer=relaxer).state
        naive_p, naive_m = net.dphi_dtheta(inp, sp, beta), net.dphi_dtheta(inp, sm, -beta)
        naive = {k: (naive_m[k] - naive_p[k]) / (2 * beta) for k in naive_p}
        delta = symmetric_estimate(lambda a, ba, b, bb: net.dphi_dtheta_delta(inp, a, ba, inp, b, bb), sp, sm, beta)
        if info is not None:
            info.update(s_free=s0, res_free=residual(net, inp, s0), res_plus=residual(net, inp, sp, beta),
                        res_minus=residual(net, inp, sm, -beta))  # residuals by the reference step
    return naive, delta


def same_equilibrium_reference(net64: EqNetwork, x64, y, s_free, T2, beta, tol=1e-13, max_steps=2000):
    """The float64 estimate at the low-precision run's own equilibrium: float64 free phase from s_free
    until max |s_{t+1} - s_t| < tol, float64 nudged phases (T2 steps) from there."""
    with torch.no_grad():
        inp = net64.prepare(x64, y)
        s = tuple(t.double() for t in s_free)
        r = free_phase(net64, inp, max_steps, s, tol=tol)
        moved = max(float((a - b).abs().max()) for a, b in zip(r.state, s))
        sp = nudged_phase(net64, inp, r.state, T2, beta).state
        sm = nudged_phase(net64, inp, r.state, T2, -beta).state
        g = symmetric_estimate(lambda a, ba, b, bb: net64.dphi_dtheta_delta(inp, a, ba, inp, b, bb), sp, sm, beta)
    return g, {"polish_steps": r.steps, "polish_residual": r.delta, "polish_moved": moved}


def compare(g, ref, net):
    out = {}
    for layer, names in net.layer_parameters().items():
        w = names[0]  # the layer's weight
        a, b = g[w].double().flatten().cpu(), ref[w].flatten().cpu()
        out[layer] = {"rel_error": float((a - b).norm() / b.norm()),
                      "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--T1", type=int, default=60)
    ap.add_argument("--T2", type=int, default=15)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/precision")
    ap.add_argument("--npz", default="", help="CIFAR-10 npz (default: the config's data, $SPIKEEP_DATA)")
    ap.add_argument("--weights", help="a run's best.pt or checkpoint.pt (trained weights)")
    ap.add_argument("--recompute-every", type=int, default=20)
    ap.add_argument("--impl", default="torch", choices=["torch", "triton"], help="kernels of the relaxer")
    a = ap.parse_args()
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "cifar10_paper.toml")
    test = normalize(load_cifar10(cfg.data.root or None, a.npz or cfg.data.npz).test, cfg.data.mean, cfg.data.std)
    x, y = test.x[:a.images], test.y[:a.images]
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    net32 = EqNetwork(cfg.model).to(dev)
    net64 = EqNetwork(cfg.model).double().to(dev)
    if a.weights:
        ck = torch.load(a.weights, map_location="cpu", weights_only=True)
        net32.load_state_dict({k: v.float() for k, v in ck["model"].items()})
    net64.load_state_dict({k: v.double() for k, v in net32.state_dict().items()})
    set_precision("strict")
    x64, y = x.double().to(dev), y.to(dev)
    ref_info: dict = {}
    _, ref = estimates(net64, x64, y, a.T1, a.T2, a.beta, info=ref_info)
    rows, same, res = {}, {}, {"float64": {k: v for k, v in ref_info.items() if k != "s_free"}}

    def run(name, net, naive_name=None, **kw):
        info: dict = {}
        naive, delta = estimates(net, x.to(dev), y, a.T1, a.T2, a.beta, info=info, **kw)
        rows[name] = compare(delta, ref, net)
        if naive_name:
            rows[naive_name] = compare(naive, ref, net)
        g_same, polish = same_equilibrium_reference(net64, x64, y, info["s_free"], a.T2, a.beta)
        same[name] = compare(delta, g_same, net)
        res[name] = {**{k: v for k, v in info.items() if k != "s_free"}, **polish}
        print(f"{name}: done", flush=True)

    run("float32", net32, "float32, naive")
    bf16 = Relaxer(RelaxSettings(precision="bf16", kernels=a.impl))
    run("bf16 drives", net32, "bf16 drives, naive", relaxer=bf16)
    run("bf16 free phase, float32 nudged phases", net32, free_relaxer=bf16)
    for K, label in ((a.recompute_every, f"bf16_incremental (exact recompute every {a.recompute_every})"),
                     (10**9, "bf16_incremental, no recompute (drift unbounded)")):
        run(label, net32, relaxer=Relaxer(RelaxSettings(precision="bf16_incremental", kernels=a.impl, recompute_every=K)))
    if dev.type == "cuda":
        set_precision("tf32")
        run("tf32", net32, "tf32, naive")
        set_precision("strict")
    layers = list(net32.layer_parameters())
    lines = [f"Symmetric EP estimate vs float64, paper ConvNet, {a.images} CIFAR-10 test images, T1 {a.T1}, "
             f"T2 {a.T2}, beta {a.beta}, device {a.device} ({platform.processor() or platform.machine()}), "
             f"torch {torch.__version__}", "",
             "| precision | " + " | ".join(f"{n} rel. error (cosine)" for n in layers) + " |",
             "| --- |" + " --- |" * len(layers)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[n]['rel_error']:.2f} % ({r[n]['cosine']:.5f})"
                                                  for n in layers) + " |")
    lines += ["", "Same equilibrium: against float64 phases started from the row's own free state", "",
              "| precision | " + " | ".join(f"{n} rel. error (cosine)" for n in layers) + " |",
              "| --- |" + " --- |" * len(layers)]
    for name, r in same.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[n]['rel_error']:.2f} % ({r[n]['cosine']:.5f})"
                                                  for n in layers) + " |")
    lines += ["", "Residual max |s_{t+1} - s_t| at the end of each phase; float64 polish of the free state",
              "", "| run | free | +beta | -beta | polish steps | polish moved the state by |", "| --- |" + " --- |" * 5]
    for name, r in res.items():
        lines.append(f"| {name} | {r['res_free']:.2e} | {r['res_plus']:.2e} | {r['res_minus']:.2e} | "
                     f"{r.get('polish_steps', '')} | {r.get('polish_moved', float('nan')):.2e} |")
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.md").write_text(text + "\n")
    (out / "precision.json").write_text(json.dumps({"args": vars(a), "torch": torch.__version__, "rows": rows,
                                                    "same_equilibrium": same, "residuals": res},
                                                   indent=1) + "\n")
    print(f"wrote {out / 'precision.md'} and .json")


if __name__ == "__main__":
    main()
