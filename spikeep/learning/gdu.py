"""Gradient Descending Updates: EP's step-wise updates against BPTT's truncated gradients.

Ernoult et al. 2019 (Eq. 6) and Laborieux et al. 2021 (Fig. 2): after a free phase long enough to
reach s*, the EP update accumulated over the first t steps of the nudged phase,

    one-sided:  -1/beta     (dPhi^beta/dtheta(s^beta_t) - dPhi/dtheta(s*))
    symmetric:  -1/(2 beta) (dPhi^beta/dtheta(s^beta_t) - dPhi^-beta/dtheta(s^-beta_t)),

equals (exactly when the transition derives from Phi, to first order in beta) the BPTT gradient
of L(s_T) truncated to the last t steps of the free phase. Both are expressed as gradients of the
loss (sign included).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..core.dynamics import free_phase
from ..core.network import EqNetwork
from .bptt import bptt_per_step
from .estimators import one_sided_estimate, symmetric_estimate

Tensor = torch.Tensor


@torch.no_grad()
def gdu_check(net: EqNetwork, x: Tensor, y: Tensor, T1: int, K: int, beta: float) -> dict[str, Any]:
    """Compare cumulative EP updates with truncated BPTT gradients for t = 1..K, per layer.

    Returns a dict: {"t": [1..K], "layers": [...], "estimators": {name: {layer: {"rel_error": [...],
    "cosine": [...]}}}, "delta_free": float} plus the raw cumulative updates under "traces"
    (tensors, for plotting) which `save_gdu` drops from the JSON.
    """
    if K <= 0 or T1 <= 0:
        raise ValueError(f"T1 and K must be positive numbers of steps, got T1={T1}, K={K}")
    if beta == 0.0:
        raise ValueError("the GDU check needs beta != 0")
    inp = net.prepare(x, y)
    free = free_phase(net, inp, T1)
    s_star = free.state
    delta = max(float((a - b).abs().max()) for a, b in zip(net.step(inp, s_star), s_star))

    # BPTT: gradient of L(s_{T1+K}) through the last t steps only, t = 1..K (cumulative sum)
    per_step = bptt_per_step(net, inp.x, inp.y, s_star, K)
    bptt_cum, acc = [], {n: torch.zeros_like(g) for n, g in per_step[0].items()}
    for g in per_step:
        acc = {n: a + g[n] for n, a in acc.items()}
        bptt_cum.append(acc)

    # EP: nudged trajectories with +beta and -beta from s*
    dphi_delta = lambda a, ba, b, bb: net.dphi_dtheta_delta(inp, a, ba, inp, b, bb)  # noqa: E731
    s_p, s_m = s_star, s_star
    ep = {"one_sided": [], "symmetric": []}
    for _ in range(K):
        s_p = net.step(inp, s_p, beta)
        s_m = net.step(inp, s_m, -beta)
        ep["one_sided"].append(one_sided_estimate(dphi_delta, s_star, s_p, beta))
        ep["symmetric"].append(symmetric_estimate(dphi_delta, s_p, s_m, beta))

    layers = list(net.layer_parameters().items())
    # errors are relative to ||BPTT(t)|| of the layer; where that is ~0 (a layer BPTT has not reached
    # yet, t below its distance to the output, or a silent layer), relative to the layer's largest
    # ||BPTT||, and failing that to the largest of any layer
    top = max(float(g.norm()) for gs in bptt_cum for g in gs.values())
    out: dict[str, Any] = {"t": list(range(1, K + 1)), "layers": [n for n, _ in layers],
                           "beta": beta, "T1": T1, "K": K, "delta_free": delta, "estimators": {},
                           "warnings": []}
    if top == 0.0:
        top = 1.0
        out["warnings"].append("BPTT's gradient is zero in every layer (silent or saturated network): "
                               "errors are absolute, not relative")
    if delta > 1e-6:
        out["warnings"].append(f"the free phase has not converged (max |s_(T1+1) - s_T1| = {delta:.1e}): "
                               f"the GDU property assumes s* is a fixed point; raise T1")
    for est, traj in ep.items():
        out["estimators"][est] = {name: _layer_errors(traj, bptt_cum, idx, K, top) for name, idx in layers}
    out["samples"] = _sampled_synapses(ep, bptt_cum, layers, K)
    return out


def _layer_errors(traj: list, bptt_cum: list, idx: list, K: int, top: float) -> dict[str, list[float]]:
    """One layer's relative error and cosine of an EP trajectory against BPTT at t = 1..K."""
    rel, cos = [], []
    e_t = [torch.cat([traj[t][i].flatten() for i in idx]) for t in range(K)]
    b_t = [torch.cat([bptt_cum[t][i].flatten() for i in idx]) for t in range(K)]
    scale = max(float(b.norm()) for b in b_t)
    scale = scale if scale > 1e-9 * top else top
    for e, b in zip(e_t, b_t):
        nb = float(b.norm())
        rel.append(float((e - b).norm()) / (nb if nb > 1e-9 * scale else max(scale, 1e-300)))
        cos.append(float(torch.nn.functional.cosine_similarity(e, b, dim=0)) if nb > 1e-9 * scale
                   else float("nan"))
    return {"rel_error": rel, "cosine": cos}


def _sampled_synapses(ep: dict, bptt_cum: list, layers: list, K: int) -> dict:
    """Three synapses per layer, drawn once (seed 0), for the Fig. 2-like plot."""
    g = torch.Generator().manual_seed(0)
    samples = {}
    for name, idx in layers:
        w = idx[0]  # the layer's weight
        pick = torch.randperm(bptt_cum[0][w].numel(), generator=g)[:3]
        samples[name] = {
            "index": pick.tolist(),
            "bptt": [[float(bptt_cum[t][w].flatten()[j]) for t in range(K)] for j in pick],
            **{est: [[float(ep[est][t][w].flatten()[j]) for t in range(K)] for j in pick] for est in ep},
        }
    return samples


def save_gdu(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write gdu.json and gdu.png (EP updates vs truncated BPTT per layer, like Fig. 2)."""
    from ..training.plots import plot_gdu

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "gdu.json", out_dir / "gdu.png"
    json_path.write_text(json.dumps(result, indent=1))
    plot_gdu(result, png_path)
    return json_path, png_path
