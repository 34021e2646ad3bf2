"""Figures a paper can use (issue 29, item 5), checked without eyes on the figures as saved: every
series visible where series coincide, legends off the curves, whole-number ticks on epoch / step /
iteration axes, markers on short series, unique legend labels, labelled phase boundaries and a raster
that says (truly) how its rows are ordered. The checks themselves are in figcheck.py."""
import csv
import json
import os
import sys

import numpy as np
import pytest

from conftest import REPO, batch_for, small_mlp
from figcheck import (data_lines, hidden_lines, integer_ticks, legend_overlap, legend_texts, legends,
                      unmarked_short_lines)


@pytest.fixture
def saved(monkeypatch):
    """{file name: figure} of every figure saved (spikeep.training.plots through save_figure_atomic, the analysis
    scripts through Figure.savefig), kept for inspection after they are written and closed."""
    from matplotlib.figure import Figure

    import spikeep.training.plots

    figs, original, atomic = {}, Figure.savefig, spikeep.training.plots.save_figure_atomic

    def keep(self, fname, *args, **kwargs):
        original(self, fname, *args, **kwargs)
        if isinstance(fname, (str, os.PathLike)):
            figs[os.path.basename(fname)] = self

    def keep_atomic(fig, path, dpi=100):
        figs[os.path.basename(path)] = fig
        return atomic(fig, path, dpi)

    monkeypatch.setattr(Figure, "savefig", keep)
    monkeypatch.setattr(spikeep.training.plots, "save_figure_atomic", keep_atomic)
    return figs


def gdu_result(K: int = 20) -> dict:
    """A GDU result as spikeep.learning.gdu makes it, where the three methods coincide as on the gdu
    configs: symmetric EP = BPTT to 1e-6, one-sided to 1e-3."""
    t = list(range(1, K + 1))
    layers = ["conv0", "conv1", "dense2"]
    samples, rel = {}, {"symmetric": {}, "one_sided": {}}
    for c, name in enumerate(layers):
        bptt = [[a * (1 - np.exp(-s / 3.0)) for s in t] for a in (0.02, -0.01, 0.005 * (c + 1))]
        samples[name] = {"index": [3, 17, 40], "bptt": bptt,
                         "symmetric": [[v * (1 + 1e-6) for v in w] for w in bptt],
                         "one_sided": [[v * (1 + 1e-3) for v in w] for w in bptt]}
        rel["symmetric"][name] = {"rel_error": [1e-6 * (1 - np.exp(-s)) for s in t]}
        rel["one_sided"][name] = {"rel_error": [1e-3 * (1 - np.exp(-s)) for s in t]}
    return {"layers": layers, "t": t, "samples": samples, "estimators": rel, "beta": 1e-3, "T1": 300, "K": K}


@pytest.mark.parametrize("K", [20, 3])
def test_gdu_every_method_shows_where_they_coincide(tmp_path, saved, K):
    """The old gdu.png drew BPTT (dashed) over EP symmetric (solid) in the same colour and width: BPTT
    and one-sided could not be seen. Each line must change pixels when taken away."""
    from spikeep.training.plots import plot_gdu

    result = gdu_result(K)
    result["estimators"]["symmetric"]["conv0"]["rel_error"][0] = 0.0  # as at t = 1 on gdu_conv
    plot_gdu(result, tmp_path / "gdu.png")
    fig = saved["gdu.png"]
    # a log axis drops an exact 0: the figure says so under the panel
    assert [t.get_text() for t in fig.axes[3].texts] == ["exactly 0 (not drawn): symmetric at t = 1"]
    assert not fig.axes[4].texts
    assert [legend_texts(lg) for lg in fig.legends] == [["BPTT (wide pale band)", "EP symmetric", "EP one-sided"]]
    top = fig.axes[:3]
    for ax in top:
        assert len(data_lines(ax)) == 9  # 3 weights x 3 methods
        assert len(legend_texts(ax.get_legend())) == 3
    assert hidden_lines(fig) == []
    assert legend_overlap(fig) <= 0.02  # the weight legends beside their panels, the method legend below
    assert all(integer_ticks(ax, "x") for ax in fig.axes)


def test_curves_and_angles_one_and_three_epochs(tmp_path, saved):
    """Epoch axes in whole numbers (not 1.5, nor 0.96 ... 1.04 for a single epoch), a one-epoch run
    drawn (markers), one legend beside the panels."""
    from spikeep.training.plots import plot_angles, plot_curves

    hist = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.1 / e, "train_acc": 50 + 10 * e, "test_acc": 48 + 10 * e,
             "angle_dense0": 80 - 5 * e, "angle_readout": 60 - 3 * e} for e in (1, 2, 3)]
    for n in (1, 3):
        plot_curves(tmp_path / f"curves{n}.png", hist[:n], "t")
        plot_angles(tmp_path / f"angles{n}.png", hist[:n], "t")
        for name in (f"curves{n}.png", f"angles{n}.png"):
            fig = saved[name]
            assert all(integer_ticks(ax, "x") for ax in fig.axes), name
            assert unmarked_short_lines(fig, short=3) == [], name
            assert legend_overlap(fig) == 0.0, name
            assert hidden_lines(fig) == [], name
    assert [legend_texts(lg) for lg in legends(saved["curves3.png"])] == [["train", "test"]]


def _write_run(folder, epochs: int, estimator="symmetric", angles=False):
    folder.mkdir(parents=True)
    cfg = {"name": "quickstart", "estimator": {"name": estimator}, "data": {"name": "mnist-quickstart"},
           "model": {"loss": "cross_entropy", "dropout": 0.0, "unidirectional": angles}}
    (folder / "config.json").write_text(json.dumps(cfg))
    cols = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc"] + (["angle_dense0", "angle_readout"] if angles else [])
    with (folder / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for e in range(1, epochs + 1):
            w.writerow([e, 1.0 / e, 60 + 10 * e, 1.1 / e, 58 + 10 * e] + ([80 - 5 * e, 70 - 4 * e] if angles else []))


def _table2():
    sys.path.insert(0, str(REPO / "analysis"))
    try:
        import table2
    finally:
        sys.path.pop(0)
    return table2


def test_figure4_and_5_unique_labels_and_a_one_epoch_run(tmp_path, saved):
    """The old figure4.png labelled two runs of one config alike and drew a one-epoch run not at all
    (a line of one point, no marker). Two identical runs must both show (different markers)."""
    table2 = _table2()
    for name, epochs in (("seed0", 3), ("seed1", 3), ("short", 1)):
        _write_run(tmp_path / "sweep" / name, epochs)
    _write_run(tmp_path / "other" / "seed0", 2)  # the same folder name elsewhere
    for name, est in (("kp", "sym_kp_vf"), ("kp2", "sym_kp_vf")):
        _write_run(tmp_path / name, 2, est, angles=True)
    runs = [table2.read_run(p) for p in (tmp_path / "sweep" / "seed0", tmp_path / "sweep" / "seed1",
                                         tmp_path / "sweep" / "short", tmp_path / "other" / "seed0")]
    table2.figure4(runs, tmp_path / "figure4.png")
    fig = saved["figure4.png"]
    texts = legend_texts(fig.axes[0].get_legend())
    runs_texts = texts[:-2]
    assert len(runs_texts) == 4 and len(set(runs_texts)) == 4, texts
    assert any("sweep/seed0" in t for t in runs_texts) and any("other/seed0" in t for t in runs_texts)
    assert any(t.endswith("(short)") for t in runs_texts)
    assert texts[-2:] == ["test error", "train error"]
    assert unmarked_short_lines(fig, short=3) == []
    assert integer_ticks(fig.axes[0], "x")
    assert legend_overlap(fig) == 0.0
    assert hidden_lines(fig) == []  # seed0 and seed1 are the same curves: their markers differ
    uni = [table2.read_run(tmp_path / n) for n in ("kp", "kp2")]
    assert table2.figure5(uni, tmp_path / "figure5.png")
    fig = saved["figure5.png"]
    texts = legend_texts(fig.axes[0].get_legend())
    assert len(texts) == 4 and len(set(texts)) == 4 and all("(kp" in t for t in texts), texts
    assert integer_ticks(fig.axes[0], "x") and legend_overlap(fig) == 0.0 and hidden_lines(fig) == []


@pytest.fixture(scope="module")
def probe():
    from spikeep.spiking.simulator import SpikingParams, SpikingSimulator, probe_phases

    net = small_mlp(hidden=(16,), scale=2.0)
    x, y = batch_for(net, 3)
    return probe_phases(SpikingSimulator(net, SpikingParams(window=20)), x, y, 40, 20, 0.5, record=2)


def test_raster_says_and_keeps_its_neuron_order(tmp_path, saved, probe):
    """raster.png says how its rows are ordered (by spike count, fewest at the bottom) and they are so
    ordered: the number of spikes drawn per row never falls as the row rises."""
    from spikeep.training.plots import plot_raster

    plot_raster(probe, ["dense0", "dense1"], tmp_path / "raster.png")
    fig = saved["raster.png"]
    assert "by spike count" in fig._suptitle.get_text() and "fewest at the bottom" in fig._suptitle.get_text()
    for ax in fig.axes:
        assert "by spike count" in ax.get_ylabel()
        rows = ax.collections[0].get_offsets()[:, 1].astype(int)
        counts = np.bincount(rows)
        assert len(counts) > 1 and (np.diff(counts) >= 0).all(), counts
        assert integer_ticks(ax, "y")
    assert integer_ticks(fig.axes[-1], "x")  # the panels share the step axis, labelled at the bottom
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "free | +beta" in texts and "+beta | -beta" in texts


def test_rate_convergence_labels_its_phase_boundaries(tmp_path, saved, probe):
    """The old rate_convergence.png drew red phase lines that nothing explained."""
    from spikeep.training.plots import plot_rate_convergence

    plot_rate_convergence(probe, ["dense0", "dense1"], tmp_path / "rate_convergence.png")
    fig = saved["rate_convergence.png"]
    for ax in fig.axes:
        boundaries = sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_label() == "phase boundary")
        assert boundaries == [39.5, 59.5]  # free 40 steps, +beta 20, -beta 20
        labels = {t.get_text(): t.xy[0] for t in ax.texts if "|" in t.get_text()}
        assert labels == {"free | +beta": 39.5, "+beta | -beta": 59.5}
        assert {"free", "+beta (nudged)", "-beta (nudged)"} <= {t.get_text() for t in ax.texts}
        assert integer_ticks(ax, "x")
    assert legend_texts(fig.legends[0]) == ["dense0", "dense1", "phase boundary"]
    assert legend_overlap(fig) == 0.0
