"""Precision of the symmetric EP estimate, per layer, against float64: the paper's CIFAR-10 ConvNet
(Laborieux et al. 2021), real CIFAR-10 test images normalised as in models/cifar10_ep_symmetric_ce.toml.

    python analysis/precision.py [--device cpu] [--images 8] [--T1 60] [--T2 15] [--beta 0.5] [--out DIR]

The same weights (float64 copies of float32 ones) relax and estimate in each precision; for each
layer it prints ||g - g64|| / ||g64|| and the cosine with g64. Rows:
  float32, naive     the difference of the two phases' correlations (the paper's code, spikeep before)
  float32            the states differenced before they are correlated (spikeep's estimators)
  bf16 drives        drives in bfloat16 (autocast), states and the estimate in float32
  bf16 drives, naive the same dynamics with the naive difference
  bf16 free phase    the free phase's drives in bfloat16, the nudged phases in float32 (from that s*)
  tf32 (CUDA only)   matmuls and convolutions in TF32, the rest float32
Writes precision.json and precision.md to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from spikeep.build import load_config, set_precision
from spikeep.core.dynamics import free_phase, nudged_phase
from spikeep.core.network import EqNetwork
from spikeep.data import load_cifar10, normalize
from spikeep.learning.estimators import symmetric_estimate

REPO = Path(__file__).resolve().parents[1]


def estimates(net: EqNetwork, x, y, T1, T2, beta, free_dtype=None, polish=0):
    """(naive, cancellation-free) symmetric estimates by parameter name; `free_dtype` computes the
    first T1 - polish steps of the free phase's drives in that dtype, the rest in the network's own."""
    with torch.no_grad():
        inp = net.prepare(x, y)
        own = net.drive_dtype
        net.use_drive_dtype(free_dtype or own)
        s0 = free_phase(net, inp, T1 - polish).state
        net.use_drive_dtype(own)
        if polish:
            s0 = free_phase(net, inp, polish, s0).state
        sp = nudged_phase(net, inp, s0, T2, beta).state
        sm = nudged_phase(net, inp, s0, T2, -beta).state
        naive_p, naive_m = net.dphi_dtheta(inp, sp, beta), net.dphi_dtheta(inp, sm, -beta)
        naive = {k: (naive_m[k] - naive_p[k]) / (2 * beta) for k in naive_p}
        delta = symmetric_estimate(lambda a, ba, b, bb: net.dphi_dtheta_delta(inp, a, ba, inp, b, bb), sp, sm, beta)
    return naive, delta


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
    a = ap.parse_args()
    cfg = load_config(REPO / "models" / "cifar10_ep_symmetric_ce.toml")
    test = normalize(load_cifar10(cfg.data.root or None, cfg.data.npz).test, cfg.data.mean, cfg.data.std)
    x, y = test.x[:a.images], test.y[:a.images]
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    net32 = EqNetwork(cfg.model).to(dev)
    net64 = EqNetwork(cfg.model).double().to(dev)
    net64.load_state_dict({k: v.double() for k, v in net32.state_dict().items()})
    set_precision("strict")
    _, ref = estimates(net64, x.double().to(dev), y.to(dev), a.T1, a.T2, a.beta)
    rows = {}
    naive, delta = estimates(net32, x.to(dev), y.to(dev), a.T1, a.T2, a.beta)
    rows["float32, naive"], rows["float32"] = compare(naive, ref, net32), compare(delta, ref, net32)
    net32.use_drive_dtype(torch.bfloat16)
    naive, delta = estimates(net32, x.to(dev), y.to(dev), a.T1, a.T2, a.beta)
    rows["bf16 drives, naive"], rows["bf16 drives"] = compare(naive, ref, net32), compare(delta, ref, net32)
    net32.use_drive_dtype(None)
    naive, delta = estimates(net32, x.to(dev), y.to(dev), a.T1, a.T2, a.beta, free_dtype=torch.bfloat16)
    rows["bf16 free phase, float32 nudged phases"] = compare(delta, ref, net32)
    for polish in (10, 20, 30):
        naive, delta = estimates(net32, x.to(dev), y.to(dev), a.T1, a.T2, a.beta, torch.bfloat16, polish)
        rows[f"bf16 free phase but its last {polish} steps, float32 nudged phases"] = compare(delta, ref, net32)
    if dev.type == "cuda":
        set_precision("tf32")
        naive, delta = estimates(net32, x.to(dev), y.to(dev), a.T1, a.T2, a.beta)
        rows["tf32, naive"], rows["tf32"] = compare(naive, ref, net32), compare(delta, ref, net32)
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
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.md").write_text(text + "\n")
    (out / "precision.json").write_text(json.dumps({"args": vars(a), "torch": torch.__version__, "rows": rows},
                                                   indent=1) + "\n")
    print(f"wrote {out / 'precision.md'} and .json")


if __name__ == "__main__":
    main()
