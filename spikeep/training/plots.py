"""Every picture spikeep draws, in one place (matplotlib, Agg, imported on first use; each figure
written atomically): training curves, feedback alignment angles, spike rasters and rate convergence,
and the EP-vs-BPTT comparison of the GDU check.

    plot_curves(path, history, title)           train/test loss and error per epoch (curves.png)
    plot_angles(path, history, title)           angle between forward and feedback weights (angles.png)
    plot_raster(phases, names, path)            spikes of sample 0, one panel per layer, phases side by side
    plot_rate_convergence(phases, names, path)  running rate estimates and window-to-window changes
    spike_pictures(phases, names, run_dir)      both spiking pictures (raster.png, rate_convergence.png)
    plot_gdu(result, path)                      EP updates vs truncated BPTT per layer (gdu.png)

Conventions (issue 29; checked by tests/test_figures.py): legends beside the axes, never on a curve;
whole-number ticks on epoch / step / iteration axes (integer_axis); markers on short series; series
that coincide drawn so that each shows (gdu: BPTT a pale band under the EP lines and their markers).

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


def integer_axis(axis, nbins: int | str = "auto") -> None:
    """Ticks at whole numbers only, on an axis that counts (epochs, steps, iterations): never 2.5, and
    a single whole number (not 0.995, 1.0, 1.005) when the data is one epoch."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=nbins, integer=True, min_n_ticks=1))


def legend_outside(ax, *, fontsize: float = 8, **kwargs):
    """The axes' legend beside it, to the right (upper left corner at the axes' upper right), so that it
    never covers a curve; the figure's layout (constrained) makes room for it."""
    kwargs.setdefault("loc", "upper left")
    kwargs.setdefault("bbox_to_anchor", (1.02, 1.0))
    kwargs.setdefault("borderaxespad", 0.0)
    return ax.legend(fontsize=fontsize, **kwargs)


def unique_labels(labels: list[str], extra: list[str]) -> list[str]:
    """labels made unique: a label given more than once gets its extra text (e.g. the run folder's name)
    in parentheses, and one that is still repeated its position (#1, #2, ...)."""
    from collections import Counter

    count = Counter(labels)
    out = [f"{lab} ({ex})" if count[lab] > 1 else lab for lab, ex in zip(labels, extra)]
    count, seen = Counter(out), Counter()
    for i, lab in enumerate(out):
        if count[lab] > 1:
            seen[lab] += 1
            out[i] = f"{lab} #{seen[lab]}"
    return out


def marker_every(n: int, markers: int = 20, offset: int = 0):
    """markevery for a series of n points: every point when it is short, about `markers` markers
    otherwise (starting at `offset`, so that two series that lie on each other mark different points)."""
    step = max(1, -(-n // markers))
    return (offset % step, step) if step > 1 else None


def plot_angles(path: Path, history: list[dict], title: str) -> None:
    """Angle between forward and feedback weights per layer and epoch (Laborieux et al. 2021, Fig. 5)."""
    plt = _plt()

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    for key in sorted(k for k in history[-1] if k.startswith("angle_")):
        ax.plot(ep, [h.get(key, float("nan")) for h in history], "o-", label=key[len("angle_"):],
                markevery=marker_every(len(ep)))
    ax.set_xlabel("epoch")
    integer_axis(ax.xaxis)
    ax.set_ylabel("angle(w_f, w_b) (degrees)")
    ax.set_ylim(bottom=0)
    legend_outside(ax, title="layer", title_fontsize=8)
    fig.suptitle(title)
    save_figure_atomic(fig, path)


def plot_curves(path: Path, history: list[dict], title: str) -> None:
    """Train and test loss (left) and error (right) per epoch, one legend for both panels at the right."""
    plt = _plt()

    ep = [h["epoch"] for h in history]
    every = marker_every(len(ep))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train", markevery=every)
    a.plot(ep, [h["test_loss"] for h in history], "s--", label="test", markevery=every)
    a.set_ylabel("loss")
    b.plot(ep, [100 - h["train_acc"] for h in history], "o-", label="train", markevery=every)
    b.plot(ep, [100 - h["test_acc"] for h in history], "s--", label="test", markevery=every)
    b.set_ylabel("error (%)")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        integer_axis(ax.xaxis)
    fig.legend(handles=a.get_lines(), loc="outside right upper", fontsize=9)
    fig.suptitle(title)
    save_figure_atomic(fig, path)


def _concat(phases, k: int, sample: int = 0) -> torch.Tensor:
    """Layer k's spikes of one sample over all phases: (steps, neurons)."""
    return torch.cat([ph.raster[k][:, sample].float() for _, ph in phases]).cpu()


def _check(phases) -> None:
    if not phases or any(ph.raster is None for _, ph in phases):
        raise ValueError("the phases carry no spike records: run them with record >= 1 (see probe_phases)")


RASTER_ORDER = "neurons that spiked, by spike count over all phases (fewest at the bottom)"


def _phase_spans(phases) -> list[tuple[str, int, int]]:
    """(name, first step, end step) of each phase on the concatenated time axis."""
    spans, t = [], 0
    for name, ph in phases:
        spans.append((name, t, t + ph.steps))
        t += ph.steps
    return spans


def _mark_phases(ax, spans, header: bool = True) -> None:
    """A red line at each phase boundary; with header, above the axes: each phase's name centred over its
    span and, higher, each boundary's label ("free | +beta", in red, joined to its line), where no curve
    runs."""
    trans = ax.get_xaxis_transform()
    for (left, _, end), (right, _, _) in zip(spans, spans[1:]):
        ax.axvline(end - 0.5, color="tab:red", lw=0.8, label="phase boundary")
        if header:
            ax.annotate(f"{left} | {right}", xy=(end - 0.5, 1.0), xycoords=trans, xytext=(0, 15),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7, color="tab:red",
                        arrowprops=dict(arrowstyle="-", color="tab:red", lw=0.6, shrinkA=0, shrinkB=0))
    if header:
        for name, start, end in spans:
            ax.annotate(name if name == "free" else f"{name} (nudged)", xy=((start + end) / 2, 1.0), xycoords=trans, xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)


def plot_raster(phases, names: list[str], path: str | Path, max_neurons: int = 100) -> Path:
    """Spike raster of sample 0: one panel per layer (at most max_neurons of the neurons that spiked,
    spread evenly over their range of spike counts, sorted by spike count: fewest at the bottom)."""
    plt = _plt()
    _check(phases)
    n = len(names)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.8 + 1.6 * n), sharex=True, squeeze=False, layout="constrained")
    spans = _phase_spans(phases)
    for k, ax in enumerate(axes[:, 0]):
        z = _concat(phases, k)
        counts = z.sum(0)
        active = counts.nonzero().flatten()
        by_rate = active[counts[active].argsort(stable=True)]  # ascending: row 0 spikes least
        pick = torch.linspace(0, len(by_rate) - 1, min(max_neurons, len(by_rate))).round().long().unique()
        top = by_rate[pick] if len(by_rate) else by_rate
        steps, neurons = z[:, top].nonzero(as_tuple=True)
        ax.scatter(steps.numpy(), neurons.numpy(), s=1.5, marker="|", color="k", linewidths=0.6)
        _mark_phases(ax, spans, header=k == 0)
        ax.set_ylabel(f"{names[k]}: neuron rank\nby spike count\n({len(top)} of {int((counts > 0).sum())} active,"
                      f"\n{z.shape[1]} neurons)", fontsize=8)
        ax.set_ylim(-1, max(len(top), 1))
        integer_axis(ax.yaxis)
        integer_axis(ax.xaxis)
    axes[-1, 0].set_xlabel("simulation step")
    fig.suptitle(f"spike raster of probe sample 0; rows: {RASTER_ORDER}", fontsize=10)
    return save_figure_atomic(fig, path)


def plot_rate_convergence(phases, names: list[str], path: str | Path, tau: float = 20.0, neurons: int = 5) -> Path:
    """Left: exponential-trace rate of a few neurons per layer over all phases (sample 0).
    Right: mean |rate over the last `tau` steps - rate of the phase's final window| per layer.
    Phase boundaries: red lines labelled with the phases on either side; one legend for both panels."""
    plt = _plt()
    from matplotlib.lines import Line2D

    _check(phases)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
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
    spans = _phase_spans(phases)
    for ax in (a1, a2):
        _mark_phases(ax, spans)
        integer_axis(ax.xaxis)
    a1.set(xlabel="simulation step", ylabel=f"rate (spike trace, tau = {tau:g} steps)")
    a1.set_title("running rates of sample 0 (neurons spread over the rates)", pad=30)
    a2.set(xlabel="simulation step", ylabel="mean |running rate - final window rate|", yscale="log")
    a2.set_title("rate convergence within each phase", pad=30)
    handles = [Line2D([], [], color=colors[k % len(colors)], label=name) for k, name in enumerate(names)]
    handles.append(Line2D([], [], color="tab:red", lw=0.8, label="phase boundary"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    return save_figure_atomic(fig, path)


def spike_pictures(phases, names: list[str], run_dir: Path) -> None:
    """raster.png and rate_convergence.png of the three phases of a probe batch (probe_phases)."""
    plot_raster(phases, names, run_dir / "raster.png")
    plot_rate_convergence(phases, names, run_dir / "rate_convergence.png")


GDU_STYLES = (  # (key, label, line style, width, marker, drawing order): BPTT a wide pale band at the bottom,
    # the EP estimates thin lines on it with their markers at alternate steps, so that all three show where
    # they coincide (symmetric EP = BPTT to 1e-6 and one-sided to 1e-3 on the gdu configs)
    ("bptt", "BPTT (wide pale band)", "-", 5.0, None, 1),
    ("symmetric", "EP symmetric", "-", 1.2, "o", 2),
    ("one_sided", "EP one-sided", "--", 1.0, "x", 3),
)


def _gdu_line(ax, t, y, key: str, color: str):
    _, label, ls, lw, marker, z = next(s for s in GDU_STYLES if s[0] == key)
    # a short series: markers on every point (the one-sided x inside the symmetric o); a longer one:
    # about 10 markers per line, the two EP lines on alternate points
    offset = [s[0] for s in GDU_STYLES if s[4]].index(key) if marker else 0
    every = marker_every(len(t), markers=10, offset=offset) if len(t) > 10 else None
    if len(t) > 10 and every is None:
        every = (offset, 2)
    ms, mfc = (6.0 if marker == "o" else 4.0), "none"
    if key == "bptt" and len(t) <= 10:  # pale discs under the EP markers (a single t draws no band)
        marker, ms, mfc = "o", 11.0, color
    return ax.plot(t, y, color=color, ls=ls, lw=lw, marker=marker, ms=ms, mfc=mfc, mew=1.0, markevery=every,
                   alpha=0.35 if key == "bptt" else 1.0, zorder=z, label=label)[0]


def plot_gdu(result: dict[str, Any], path: Path) -> Path:
    """EP (symmetric, one-sided) against truncated BPTT per layer: a few weights' updates over t, colour
    = weight (legend beside each panel), line style and marker = method (one legend for the figure, below;
    BPTT a wide pale band under the EP lines, so that every method shows where they coincide); below,
    the relative error of each estimator (like Fig. 2), in the same styles."""
    plt = _plt()
    from matplotlib.lines import Line2D

    layers, t = result["layers"], result["t"]
    fig, axes = plt.subplots(2, len(layers), figsize=(3.9 * len(layers), 5.6), squeeze=False, layout="constrained")
    for c, name in enumerate(layers):
        ax = axes[0][c]
        smp = result["samples"][name]
        for j in range(len(smp["index"])):
            for key, *_ in GDU_STYLES:
                _gdu_line(ax, t, smp[key][j], key, f"C{j}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("t")
        # colour = which weight (per panel, beside it); line style = method (one legend for the figure, below)
        weights = [Line2D([], [], color=f"C{j}", lw=2, label=f"w[{smp['index'][j]}]") for j in range(len(smp["index"]))]
        legend_outside(ax, handles=weights, fontsize=6, title="weight\n(flat index)", title_fontsize=6)
        if c == 0:
            ax.set_ylabel(f"update (dL/dw) of {len(smp['index'])} weights", fontsize=8)
        ax = axes[1][c]
        for est in ("symmetric", "one_sided"):
            _gdu_line(ax, t, result["estimators"][est][name]["rel_error"], est, "k")
        ax.set_xlabel("t")
        if any(v > 0 for est in result["estimators"].values() for v in est[name]["rel_error"]):
            ax.set_yscale("log")
            zeros = [(est.replace("_", "-"), [s for s, v in zip(t, result["estimators"][est][name]["rel_error"])
                                              if v <= 0]) for est in ("symmetric", "one_sided")]
            said = [f"{est} at t = {', '.join(map(str, ts))}" for est, ts in zeros if ts]
            if said:  # a log axis cannot show them: said under the axis label
                ax.annotate("exactly 0 (not drawn): " + "; ".join(said), xy=(0.5, 0.0), xycoords="axes fraction",
                            xytext=(0, -36), textcoords="offset points", ha="center", va="top", fontsize=7)
        if c == 0:
            ax.set_ylabel("||EP - BPTT|| / ||BPTT||", fontsize=8)
        for ax in axes[:, c]:
            ax.tick_params(labelsize=7)
            integer_axis(ax.xaxis)
    methods = [Line2D([], [], color="k", ls=ls, lw=lw, marker=m, ms=6.0 if m == "o" else 4.0, mfc="none", alpha=0.35 if k == "bptt" else 1.0,
                      label=label) for k, label, ls, lw, m, _ in GDU_STYLES]
    fig.legend(handles=methods, loc="outside lower center", ncols=3, fontsize=7,
               title="method: line style and marker, both rows (colour in the top row = weight)", title_fontsize=7)
    fig.suptitle(f"EP vs truncated BPTT (beta={result['beta']}, T1={result['T1']}, K={result['K']})", fontsize=9)
    save_figure_atomic(fig, path, dpi=200)
    return path
