"""Figures from a run's weight traces (RUN_DIR/traces.h5):

    weight_trajectories.png   a few sampled synapses per layer over iterations (as in Fig. 2 of
                              Laborieux et al. 2021, "a single weight chosen at random")
    weight_change_hist.png    per layer, histograms of the sampled synapses' changes (delta-W) in
                              successive windows of training, coloured by time
    weight_summary.png        per layer, norm and std of the whole weight tensor over iterations

    python analysis/plot_traces.py RUN_DIR [--synapses 5] [--windows 6]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from spikeep import traces  # noqa: E402
from spikeep.training.plots import legend_outside  # noqa: E402


def _readable_ticks(ax, integer_x: bool = False) -> None:
    """At most 4 ticks per axis, small numbers in scientific notation with one shared exponent; with
    integer_x whole numbers only on the x axis (iterations)."""
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "linear":
            axis.set_major_locator(MaxNLocator(4, integer=integer_x and axis is ax.xaxis, min_n_ticks=1))
        else:  # log (counts): plain numbers at the decades only
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    if ax.get_xscale() == "linear":
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 4), useMathText=True)
    if ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 4), useMathText=True)
    ax.tick_params(labelsize=7)


def plot(run_dir: Path, n_syn: int = 5, windows: int = 6) -> list[Path]:
    path = run_dir / "traces.h5" if run_dir.is_dir() else run_dir
    out_dir = path.parent
    with traces.open(path) as t:
        n = t.n_rows()
        if n == 0:
            raise SystemExit(f"{path}: no iterations recorded yet")
        it = t.iteration[:n]
        layers = list(t)
        cols = len(layers)
        # a panel per layer, 3.2 x 2.8 in (two fit a paper's column pair; 4.2 in with the legend beside it), 200 dpi
        fig1, ax1 = plt.subplots(1, cols, figsize=(4.2 * cols, 2.8), squeeze=False, layout="constrained")
        fig2, ax2 = plt.subplots(1, cols, figsize=(3.2 * cols + 0.9, 2.8), squeeze=False, layout="constrained")
        fig3, ax3 = plt.subplots(2, cols, figsize=(3.2 * cols, 4.4), squeeze=False, sharex=True,
                                 layout="constrained")
        cmap = plt.get_cmap("viridis")
        for c, lt in enumerate(layers):
            w = lt.sample_weight[:n]
            for j in range(min(n_syn, w.shape[1])):
                idx = np.unravel_index(int(lt.sample_index[j]), lt.weight_shape)
                ax1[0][c].plot(it, w[:, j], lw=1, label="w" + str(list(map(int, idx))), marker="o" if n <= 20 else None,
                               ms=3)
            ax1[0][c].set_title(f"{lt.name} {lt.weight_shape}", fontsize=8)
            ax1[0][c].set_xlabel("iteration")
            legend_outside(ax1[0][c], fontsize=6, title="sampled\nsynapse", title_fontsize=6)
            _readable_ticks(ax1[0][c], integer_x=True)
            dw = lt.sample_delta[:n]
            edges = np.linspace(*np.percentile(dw, [0.5, 99.5]), 60) if dw.size else None
            for k, rows in enumerate(np.array_split(np.arange(n), min(windows, n))):
                ax2[0][c].hist(dw[rows].ravel(), bins=edges, histtype="step", color=cmap(k / max(1, windows - 1)),
                               label=f"it {it[rows[0]]}-{it[rows[-1]]}" if len(rows) > 1 else f"it {it[rows[0]]}")
            ax2[0][c].set_yscale("log")
            ax2[0][c].set_title(f"{lt.name}: {dw.shape[1]} sampled synapses", fontsize=8)
            ax2[0][c].set_xlabel("delta-W per iteration")
            _readable_ticks(ax2[0][c])
            s = lt.summary_columns()
            short = dict(marker="o" if n <= 20 else None, ms=3)
            ax3[0][c].plot(it, s["norm"][:n], **short)
            ax3[1][c].plot(it, s["std"][:n], **short)
            ax3[0][c].set_title(f"{lt.name} (whole tensor)", fontsize=8)
            ax3[1][c].set_xlabel("iteration")
            _readable_ticks(ax3[0][c], integer_x=True)
            _readable_ticks(ax3[1][c], integer_x=True)
        ax1[0][0].set_ylabel("weight")
        ax2[0][0].set_ylabel("count")
        legend_outside(ax2[0][-1], fontsize=6, title="training\nwindow\n(iterations)", title_fontsize=6)
        ax3[0][0].set_ylabel("||W||")
        ax3[1][0].set_ylabel("std(W)")
        fig1.suptitle(f"{min(n_syn, layers[0].sample_index.size)} of the synapses sampled at random per layer "
                      f"(fixed for the run)", fontsize=8)
        outs = []
        for fig, name in ((fig1, "weight_trajectories.png"), (fig2, "weight_change_hist.png"),
                          (fig3, "weight_summary.png")):
            fig.savefig(out_dir / name, dpi=200)
            plt.close(fig)
            outs.append(out_dir / name)
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run folder with traces.h5 (or the file itself)")
    ap.add_argument("--synapses", type=int, default=5, help="sampled synapses drawn per layer")
    ap.add_argument("--windows", type=int, default=6, help="time windows in the histograms")
    a = ap.parse_args()
    for p in plot(a.run_dir, a.synapses, a.windows):
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
