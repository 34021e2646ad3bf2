"""Checks of a drawn matplotlib figure that need no eyes (issue 29, item 5): legend texts, whether a
legend covers the plotting area, whole-number tick labels on counting axes, markers on short series,
and whether every line can be seen (some pixels change when it is taken away)."""
from __future__ import annotations

import re

import matplotlib
import numpy as np

matplotlib.use("Agg")

from matplotlib.lines import Line2D  # noqa: E402


def _agg(fig):
    """The figure's Agg canvas, drawn (a figure closed by pyplot is left with a bare canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas


def legends(fig) -> list:
    """Every legend of the figure: the figure's own, then each axes' (in axes order)."""
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def legend_overlap(fig) -> float:
    """The largest fraction of a legend's area that lies inside some axes' plotting area (0: every
    legend is outside every axes)."""
    renderer = _agg(fig).get_renderer()
    worst = 0.0
    for lg in legends(fig):
        box = lg.get_window_extent(renderer)
        area = max(box.width * box.height, 1e-9)
        for ax in fig.axes:
            a = ax.bbox
            w = min(box.x1, a.x1) - max(box.x0, a.x0)
            h = min(box.y1, a.y1) - max(box.y0, a.y0)
            if w > 0 and h > 0:
                worst = max(worst, w * h / area)
    return worst


def _plain(text: str) -> str:
    text = re.sub(r"\$\\mathdefault\{(.*)\}\$", r"\1", text)
    return text.replace("\u2212", "-").strip()


def tick_labels(ax, which: str = "x") -> list[str]:
    """The major tick labels shown on one axis (those within its view limits), as plain text."""
    _agg(ax.figure)
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    pos = 0 if which == "x" else 1
    return [_plain(t.get_text()) for t in axis.get_ticklabels()
            if t.get_text() and lo - 1e-9 <= t.get_position()[pos] <= hi + 1e-9]


def integer_ticks(ax, which: str = "x") -> bool:
    """True when every tick label on the axis is a whole number (and there is at least one)."""
    labels = tick_labels(ax, which)
    return bool(labels) and all(re.fullmatch(r"-?\d+", t) for t in labels)


def data_lines(ax) -> list[Line2D]:
    """The axes' lines that carry data (not the vertical / horizontal guide lines of axvline)."""
    return [ln for ln in ax.get_lines() if ln.get_transform() == ax.transData and ln.get_visible()
            and np.size(ln.get_xdata()) > 0]


def has_markers(line: Line2D) -> bool:
    return line.get_marker() not in (None, "", "None", " ")


def unmarked_short_lines(fig, short: int = 2) -> list[str]:
    """Lines of at most `short` points drawn without markers: a single point without a marker is
    not drawn at all, two points hardly read as a curve."""
    return [f"{ax.get_title() or i}: {ln.get_label()}" for i, ax in enumerate(fig.axes) for ln in data_lines(ax)
            if np.size(ln.get_xdata()) <= short and not has_markers(ln)]


def _pixels(fig) -> np.ndarray:
    return np.asarray(_agg(fig).buffer_rgba())[..., :3].astype(int)


def hidden_lines(fig, dpi: float = 100, min_pixels: int = 20, tol: int = 30) -> list[str]:
    """The data lines that cannot be seen: taking one away changes fewer than `min_pixels` pixels (by
    more than `tol` of 255 in some channel), because others drawn over it cover it (e.g. BPTT drawn on
    top of an EP line that equals it). The layout is frozen first, so only the line differs, and lines
    are drawn without antialiasing, so that a line drawn exactly over its twin changes nothing."""
    lines = [ln for ax in fig.axes for ln in data_lines(ax)]
    smooth = [ln.get_antialiased() for ln in lines]
    for ln in lines:
        ln.set_antialiased(False)
    try:
        return _hidden(fig, dpi, min_pixels, tol)
    finally:
        for ln, a in zip(lines, smooth):
            ln.set_antialiased(a)


def _hidden(fig, dpi: float, min_pixels: int, tol: int) -> list[str]:
    fig.set_dpi(dpi)
    _agg(fig)
    fig.set_layout_engine("none")
    shown = [ax.get_visible() for ax in fig.axes]
    hidden = []
    try:
        for i, ax in enumerate(fig.axes):  # one axes drawn at a time (faster; the others cannot cover it)
            for other in fig.axes:
                other.set_visible(other is ax)
            base = _pixels(fig)
            for ln in data_lines(ax):
                ln.set_visible(False)
                changed = int((np.abs(_pixels(fig) - base) > tol).any(-1).sum())
                ln.set_visible(True)
                if changed < min_pixels:
                    hidden.append(f"{ax.get_title() or i}: {ln.get_label()} ({changed} px)")
    finally:
        for ax, v in zip(fig.axes, shown):
            ax.set_visible(v)
    return hidden
