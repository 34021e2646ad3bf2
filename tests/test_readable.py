"""What a reader sees (issue 22, item 4): figures with labelled legends, readable ticks and sizes fit
for a paper; no warning spam when spikeep starts."""
import os
import re
import subprocess
import sys

import matplotlib
import pytest

from conftest import REPO

matplotlib.use("Agg")


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure saved (by spikeep.training.plots through save_figure_atomic, or by an analysis script with
    savefig to a file), kept for inspection as (file name, figure, dpi)."""
    from matplotlib.figure import Figure

    import spikeep.training.plots

    saved, original, atomic = [], Figure.savefig, spikeep.training.plots.save_figure_atomic

    def keep(self, fname, *args, **kwargs):
        original(self, fname, *args, **kwargs)
        if isinstance(fname, (str, os.PathLike)):
            saved.append((str(fname), self, kwargs.get("dpi")))

    def keep_atomic(fig, path, dpi=100):
        saved.append((str(path), fig, dpi))
        return atomic(fig, path, dpi)

    monkeypatch.setattr(Figure, "savefig", keep)
    monkeypatch.setattr(spikeep.training.plots, "save_figure_atomic", keep_atomic)
    return saved


def _legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def test_gdu_figure_says_what_colours_and_line_styles_mean(tmp_path, saved_figures):
    from spikeep.cli import main

    assert main(["gdu", str(REPO / "spikeep" / "config" / "shipped" / "gdu_conv.toml"), "--out", str(tmp_path), "--set", "gdu.K=6"]) == 0
    (name, fig, dpi), = [f for f in saved_figures if f[0].endswith("gdu.png")]
    assert [_legend_texts(lg) for lg in fig.legends] == [["BPTT (wide pale band)", "EP symmetric", "EP one-sided"]]
    top = fig.axes[:3]
    for ax in top:  # a colour legend per panel: which weight each colour is
        texts = _legend_texts(ax.get_legend())
        assert len(texts) == 3 and all(t.startswith("w[") for t in texts)
    w, h = fig.get_size_inches() * dpi
    assert w >= 1200 and h >= 600
    # issue 29: on the real check, where EP and BPTT agree to 1e-6, every method's line shows, and no
    # legend lies on a panel
    from figcheck import hidden_lines, legend_overlap

    assert hidden_lines(fig) == [] and legend_overlap(fig) <= 0.02


def test_trace_figures_have_legends_and_readable_ticks(tmp_path, saved_figures):
    from spikeep.training.validation import load_config
    from spikeep.training.trainer import train

    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml",
                      ["data.subset=200", "model.hidden=[8]", "train.batch_size=20", "dynamics.T1=10", "dynamics.T2=4",
                       "train.epochs=1", "traces.enabled=true", "traces.sample=6"])
    train(cfg, tmp_path / "run", progress=False, echo=False)
    sys.path.insert(0, str(REPO / "analysis"))
    try:
        import plot_traces
    finally:
        sys.path.pop(0)
    plot_traces.plot(tmp_path / "run")
    figs = {n.rsplit("/", 1)[-1]: (f, dpi) for n, f, dpi in saved_figures}
    traj, dpi = figs["weight_trajectories.png"]
    assert "sampled at random" in traj._suptitle.get_text()
    for ax in traj.axes:
        texts = _legend_texts(ax.get_legend())
        assert len(texts) == 5 and all(t.startswith("w[") for t in texts)  # e.g. w[3, 403]: the synapse
    hist, dpi = figs["weight_change_hist.png"]
    hist.canvas.draw()
    for ax in hist.axes:
        lo, hi = sorted(ax.get_xlim())
        labels = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
        plain = [re.sub(r"\$\\mathdefault\{(.*)\}\$", r"\1", t.get_text()) for t in labels]
        assert 2 <= len(labels) <= 5 and all(len(t) <= 6 for t in plain), plain  # short: the exponent apart
        boxes = [t.get_window_extent() for t in labels]  # no two tick labels overlap
        assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        fig_box = hist.bbox
        assert all(b.x0 >= fig_box.x0 and b.x1 <= fig_box.x1 for b in boxes)  # none cut off
    assert _legend_texts(hist.axes[-1].get_legend())[0].startswith("it ")
    # issue 29: the legends beside the panels (they covered curves), whole iterations on the x axes
    from figcheck import integer_ticks, legend_overlap

    assert legend_overlap(traj) == 0.0 and legend_overlap(hist) == 0.0
    summary, _ = figs["weight_summary.png"]
    assert all(integer_ticks(ax, "x") for ax in traj.axes + summary.axes[len(summary.axes) // 2:])
    w, h = hist.get_size_inches() * dpi
    assert w >= 1200 and h >= 500


def test_no_warning_when_spikeep_starts():
    """Norse 1.1.0's torch.jit.script FutureWarning is filtered at import; nothing else is printed."""
    code = "import spikeep.cli, spikeep.training.trainer, spikeep.spiking.simulator, spikeep.training.nir_export"
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run([sys.executable, "-m", "spikeep.cli", "train", "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "Warning" not in r.stderr
