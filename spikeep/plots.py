"""Every picture spikeep draws, in one place (matplotlib, Agg, imported on first use; each figure
written atomically): training curves, feedback alignment angles, spike rasters and rate convergence,
and the EP-vs-BPTT comparison of the GDU check.

    plot_curves(path, history, title)           train/test loss and error per epoch (curves.png)
    plot_angles(path, history, title)           angle between forward and feedback weights (angles.png)
    plot_raster(phases, names, path)            spikes of sample 0, one panel per layer, phases side by side
    plot_rate_convergence(phases, names, path)  running rate estimates and window-to-window changes
    spike_pictures(phases, names, run_dir)      both spiking pictures (raster.png, rate_convergence.png)
    plot_gdu(result, path)                      EP updates vs truncated BPTT per layer (gdu.png)

`phases` is what spikeep.spiking.simulator.probe_phases returns: [(phase name, Phase with a raster)].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .files import save_figure_atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_angles(path: Path, history: list[dict], title: str) -> None:
    """Angle between forward and feedback weights per layer and epoch (Laborieux et al. 2021, Fig. 5)."""
    plt = _plt()

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key in sorted(k for k in history[-1] if k.startswith("angle_")):
        ax.plot(ep, [h.get(key, float("nan")) for h in history], "o-", label=key[len("angle_"):])
    ax.set_xlabel("epoch")
    ax.set_ylabel("angle(w_f, w_b) (degrees)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def plot_curves(path: Path, history: list[dict], title: str) -> None:
    plt = _plt()

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["test_loss"] for h in history], "s-", label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, [100 - h["train_acc"] for h in history], "o-", label="train")
    b.plot(ep, [100 - h["test_acc"] for h in history], "s-", label="test")
    b.set_xlabel("epoch")
    b.set_ylabel("error (%)")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path)


def _concat(phases, k: int, sample: int = 0) -> torch.Tensor:
    """Layer k's spikes of one sample over all phases: (steps, neurons)."""
    return torch.cat([ph.raster[k][:, sample].float() for _, ph in phases]).cpu()


def _check(phases) -> None:
    if not phases or any(ph.raster is None for _, ph in phases):
        raise ValueError("the phases carry no spike records: run them with record >= 1 (see probe_phases)")


def plot_raster(phases, names: list[str], path: str | Path, max_neurons: int = 100) -> Path:
    """Spike raster of sample 0: one panel per layer (at most max_neurons of the neurons that spiked,
    spread evenly over their range of rates, sorted by rate)."""
    plt = _plt()
    _check(phases)
    n = len(names)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.8 + 1.6 * n), sharex=True, squeeze=False)
    bounds, t = [], 0
    for _, ph in phases:
        t += ph.steps
        bounds.append(t)
    for k, ax in enumerate(axes[:, 0]):
        z = _concat(phases, k)
        counts = z.sum(0)
        active = counts.nonzero().flatten()
        by_rate = active[counts[active].argsort()]
        pick = torch.linspace(0, len(by_rate) - 1, min(max_neurons, len(by_rate))).round().long().unique()
        top = by_rate[pick] if len(by_rate) else by_rate
        steps, neurons = z[:, top].nonzero(as_tuple=True)
        ax.scatter(steps.numpy(), neurons.numpy(), s=1.5, marker="|", color="k", linewidths=0.6)
        for b in bounds[:-1]:
            ax.axvline(b - 0.5, color="tab:red", lw=0.8)
        ax.set_ylabel(f"{names[k]}\n({len(top)} of {int((counts > 0).sum())} active,\n{z.shape[1]} neurons)")
        ax.set_ylim(-1, max(len(top), 1))
    start = 0
    for (name, ph), b in zip(phases, bounds):
        axes[0, 0].text((start + b) / 2, 1.02, name, transform=axes[0, 0].get_xaxis_transform(), ha="center")
        start = b
    axes[-1, 0].set_xlabel("simulation step")
    fig.suptitle("spike raster, probe sample 0 (phases separated by red lines)", y=0.995)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def plot_rate_convergence(phases, names: list[str], path: str | Path, tau: float = 20.0, neurons: int = 5) -> Path:
    """Left: exponential-trace rate of a few neurons per layer over all phases (sample 0).
    Right: mean |rate over the last `tau` steps - rate of the phase's final window| per layer."""
    plt = _plt()
    _check(phases)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(names):
        z = _concat(phases, k)
        trace = torch.zeros(z.shape[1])
        hist = []
        for t in range(z.shape[0]):
            trace += (z[t] - trace) / tau
            hist.append(trace.clone())
        h = torch.stack(hist)
        counts = z.sum(0)
        active = counts.nonzero().flatten()
        by_rate = active[counts[active].argsort()]  # a few neurons spread over the range of rates
        pick = by_rate[torch.linspace(0, len(by_rate) - 1, min(neurons, len(by_rate))).round().long().unique()] \
            if len(by_rate) else by_rate
        for j, i in enumerate(pick):
            a1.plot(h[:, i].numpy(), color=colors[k % len(colors)], lw=0.8, label=name if j == 0 else None)
        # distance of the running window rate to the phase's final rates, all recorded samples
        start = 0
        for pname, ph in phases:
            zz = ph.raster[k].float().cpu()  # (steps, samples, neurons)
            final = torch.stack([r.flatten(1) for r in ph.rates[k:k + 1]])[0][: zz.shape[1]].cpu()
            w = int(tau)
            run = torch.stack([zz[max(0, t - w + 1):t + 1].mean(0) for t in range(zz.shape[0])])
            err = (run - final).abs().mean((1, 2))
            a2.plot(range(start, start + zz.shape[0]), err.numpy(), color=colors[k % len(colors)],
                    label=name if start == 0 else None)
            start += zz.shape[0]
    t = 0
    for _, ph in phases[:-1]:
        t += ph.steps
        a1.axvline(t, color="tab:red", lw=0.8)
        a2.axvline(t, color="tab:red", lw=0.8)
    a1.set(xlabel="simulation step", ylabel=f"rate (spike trace, tau = {tau:g} steps)",
           title="running rates of sample 0 (neurons spread over the rates)")
    a2.set(xlabel="simulation step", ylabel="mean |running rate - final window rate|", yscale="log",
           title="rate convergence within each phase")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def spike_pictures(phases, names: list[str], run_dir: Path) -> None:
    """raster.png and rate_convergence.png of the three phases of a probe batch (probe_phases)."""
    plot_raster(phases, names, run_dir / "raster.png")
    plot_rate_convergence(phases, names, run_dir / "rate_convergence.png")


def plot_gdu(result: dict[str, Any], path: Path) -> Path:
    """EP (symmetric, one-sided) against truncated BPTT per layer: a few weights' updates over t, colour
    = weight, line style = method; below, the relative error of each estimator (like Fig. 2)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    layers, t = result["layers"], result["t"]
    fig, axes = plt.subplots(2, len(layers), figsize=(3.2 * len(layers), 5.2), squeeze=False, layout="constrained")
    styles = (("symmetric", "-", 1.5, "EP symmetric"), ("one_sided", ":", 1.0, "EP one-sided"),
              ("bptt", "--", 1.5, "BPTT"))
    for c, name in enumerate(layers):
        ax = axes[0][c]
        smp = result["samples"][name]
        for j in range(len(smp["index"])):
            for key, ls, lw, _ in styles:
                ax.plot(t, smp[key][j], color=f"C{j}", lw=lw, ls=ls)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("t")
        # colour = which weight (per panel); line style = method (one legend for the figure, below)
        weights = [Line2D([], [], color=f"C{j}", lw=2, label=f"w[{smp['index'][j]}]") for j in range(len(smp["index"]))]
        ax.legend(handles=weights, fontsize=6, loc="best", title="weight (flat index)", title_fontsize=6)
        if c == 0:
            ax.set_ylabel(f"update (dL/dw) of {len(smp['index'])} weights")
        ax.tick_params(labelsize=7)
        ax = axes[1][c]
        for est, ls in (("symmetric", "-"), ("one_sided", ":")):
            ax.plot(t, result["estimators"][est][name]["rel_error"], ls=ls, color="k", label=f"EP {est.replace('_', '-')}")
        if any(v > 0 for est in result["estimators"].values() for v in est[name]["rel_error"]):
            ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.tick_params(labelsize=7)
        if c == 0:
            ax.set_ylabel("||EP - BPTT|| / ||BPTT||")
            ax.legend(fontsize=7)
    methods = [Line2D([], [], color="k", ls=ls, lw=lw, label=label) for _, ls, lw, label in styles]
    fig.legend(handles=methods, loc="outside lower center", ncols=3, fontsize=7, title="line style (top row)",
               title_fontsize=7)
    fig.suptitle(f"EP vs truncated BPTT (beta={result['beta']}, T1={result['T1']}, K={result['K']})", fontsize=9)
    save_figure_atomic(fig, path, dpi=200)
    return path
