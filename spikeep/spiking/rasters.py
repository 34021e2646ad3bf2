"""Pictures of a spiking network at work: spike rasters and rate convergence of a probe batch.

    plot_raster(phases, names, path)            spikes of sample 0, one panel per layer, phases side by side
    plot_rate_convergence(phases, names, path)  running rate estimates and window-to-window changes

`phases` is what spikeep.spiking.simulator.probe_phases returns: [(phase name, Phase with a raster)].
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..files import save_figure_atomic  # noqa: E402


def _concat(phases, k: int, sample: int = 0) -> torch.Tensor:
    """Layer k's spikes of one sample over all phases: (steps, neurons)."""
    return torch.cat([ph.raster[k][:, sample].float() for _, ph in phases]).cpu()


def _check(phases) -> None:
    if not phases or any(ph.raster is None for _, ph in phases):
        raise ValueError("the phases carry no spike records: run them with record >= 1 (see probe_phases)")


def plot_raster(phases, names: list[str], path: str | Path, max_neurons: int = 100) -> Path:
    """Spike raster of sample 0: one panel per layer (at most max_neurons of the neurons that spiked,
    spread evenly over their range of rates, sorted by rate)."""
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
