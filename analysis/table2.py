"""Table 2 of Laborieux et al. 2021 from finished run folders, beside the paper's numbers, with
Figure 4 (train / test error per epoch) and Figure 5 (angle between forward and feedback weights).

    python analysis/table2.py RUN_DIR [RUN_DIR ...] [--out DIR]

Each run folder is placed in its row by its config.json (estimator, loss, dropout, unidirectional).
Writes table2.md, table2.json, figure4.png and, when a run has separate feedback weights, figure5.png.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

# the paper's test errors (%) where its text gives them (section 4; Table 2 itself is an image there):
# one-sided 86.64, random-sign 21.55 (mean of five runs), symmetric CE 11.68, symmetric squared error
# 11.68 + 0.77 ("outperforming the Squared Error setting by 0.77 %"), BPTT CE 11.12 (gap 0.56),
# unidirectional symVF 75.47, symKP-VF 13.18 (11.68 + 1.5), BPTT 9.46
ROWS = [
    # (row, estimator, loss, dropout, unidirectional, paper test error %)
    ("EP one-sided, squared error", "one_sided", "mse", False, False, 86.64),
    ("EP random-sign, squared error", "random_sign", "mse", False, False, 21.55),
    ("EP symmetric, squared error", "symmetric", "mse", False, False, 12.45),
    ("EP symmetric, cross-entropy", "symmetric", "cross_entropy", False, False, 11.68),
    ("EP symmetric, cross-entropy, dropout", "symmetric", "cross_entropy", True, False, None),
    ("BPTT, squared error", "bptt", "mse", False, False, None),
    ("BPTT, cross-entropy", "bptt", "cross_entropy", False, False, 11.12),
    ("BPTT, cross-entropy, dropout", "bptt", "cross_entropy", True, False, None),
    ("unidirectional, EP symVF", "sym_vf", "cross_entropy", False, True, 75.47),
    ("unidirectional, EP symKP-VF", "sym_kp_vf", "cross_entropy", False, True, 13.18),
    ("unidirectional, BPTT", "bptt", "cross_entropy", False, True, 9.46),
]


def read_run(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    with (run / "metrics.csv").open() as f:
        rows = [{k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{run}: metrics.csv has no epoch yet")
    m = cfg["model"]
    key = (cfg["estimator"]["name"], m["loss"], m.get("dropout", 0.0) > 0, bool(m.get("unidirectional", False)))
    return {"run": str(run), "key": key, "name": cfg.get("name", run.name), "history": rows,
            "data": cfg["data"]["name"]}


def row_of(key) -> str:
    for name, *k, _ in ROWS:
        if tuple(k) == key:
            return name
    est, loss, drop, uni = key
    return f"{'unidirectional, ' if uni else ''}{est}, {loss}{', dropout' if drop else ''}"


def table(runs: list[dict]) -> str:
    lines = ["| row | run | data | epochs | test error (final / best) | train error (final) | paper test error |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    paper = {name: err for name, *_, err in ROWS}
    for r in sorted(runs, key=lambda r: [n for n, *_ in ROWS].index(row_of(r["key"])) if row_of(r["key"]) in paper else 99):
        h = r["history"]
        final, best = 100 - h[-1]["test_acc"], 100 - max(e["test_acc"] for e in h)
        p = paper.get(row_of(r["key"]))
        lines.append(f"| {row_of(r['key'])} | {r['name']} | {r['data']} | {int(h[-1]['epoch'])} | {final:.2f} % / "
                     f"{best:.2f} % | {100 - h[-1]['train_acc']:.2f} % | {f'{p:.2f} %' if p is not None else '-'} |")
    return "\n".join(lines)


def short_names(paths: list[str]) -> list[str]:
    """Per run folder, the shortest tail of its path that no other folder's path shares: the folder's
    name ("seed1") where that is unique, else with its parents ("sweep_a/seed0")."""
    parts = [Path(p).resolve().parts for p in paths]
    names = []
    for i, p in enumerate(parts):
        for k in range(1, len(p) + 1):
            if all(q[-k:] != p[-k:] for j, q in enumerate(parts) if j != i):
                break
        names.append(Path(*p[-k:]).as_posix())
    return names


def run_labels(runs: list[dict]) -> list[str]:
    """One legend label per run, all different: the Table 2 row, and the run folder's name beside it
    when several runs share a row (two runs of one config, or seeds)."""
    from spikeep.training.plots import unique_labels

    return unique_labels([row_of(r["key"]) for r in runs], short_names([r["run"] for r in runs]))


MARKERS = "osD^vP*Xph"


def figure4(runs: list[dict], path: Path) -> None:
    """Train (dashed) and test (solid) error per epoch of each run: a colour and a marker per run
    (markers on every epoch of a short run, so a one-epoch run shows as points), legend beside the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from spikeep.training.plots import integer_axis, marker_every

    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    for i, (r, label) in enumerate(zip(runs, run_labels(runs))):
        ep = [e["epoch"] for e in r["history"]]
        style = dict(color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)], mfc="none", ms=6,
                     markevery=marker_every(len(ep), offset=i))
        ax.plot(ep, [100 - e["test_acc"] for e in r["history"]], "-", label=label, **style)
        ax.plot(ep, [100 - e["train_acc"] for e in r["history"]], "--", **style)
    ax.set(xlabel="epoch", ylabel="error (%)", title="train (dashed) and test (solid) error (Fig. 4)")
    integer_axis(ax.xaxis)
    handles = ax.get_legend_handles_labels()[0] + [Line2D([], [], color="grey", ls="-", label="test error"),
                                                   Line2D([], [], color="grey", ls="--", label="train error")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              title="run (colour, marker)", title_fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure5(runs: list[dict], path: Path) -> bool:
    """Angle between forward and feedback weights per epoch: colour = layer, line style = run (the
    paper: symKP-VF solid, symVF dashed), legend beside the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spikeep.training.plots import integer_axis, marker_every

    uni = [r for r in runs if any(k.startswith("angle_") for k in r["history"][-1])]
    if not uni:
        return False
    styles = ["-", "--", "-.", ":"]
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    for i, (r, label) in enumerate(zip(uni, run_labels(uni))):
        ls = styles[i % len(styles)] if len(uni) > 1 else ("-" if r["key"][0] != "sym_vf" else "--")
        ep = [e["epoch"] for e in r["history"]]
        for j, k in enumerate(sorted(k for k in r["history"][-1] if k.startswith("angle_"))):
            ax.plot(ep, [e[k] for e in r["history"]], ls, color=f"C{j}", marker=MARKERS[i % len(MARKERS)],
                    mfc="none", markevery=marker_every(len(ep), offset=i), label=f"{label}: {k[len('angle_'):]}")
    ax.set(xlabel="epoch", ylabel="angle(w_f, w_b) (degrees)", title="forward / feedback alignment (Fig. 5)")
    integer_axis(ax.xaxis)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              title="run: layer (colour = layer)", title_fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/table2"))
    a = ap.parse_args()
    runs = [read_run(r) for r in a.runs]
    a.out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    (a.out / "table2.md").write_text(text + "\n")
    (a.out / "table2.json").write_text(json.dumps(runs, indent=1, default=list) + "\n")
    figure4(runs, a.out / "figure4.png")
    wrote = ["table2.md", "table2.json", "figure4.png"] + (["figure5.png"] if figure5(runs, a.out / "figure5.png") else [])
    print(text)
    print(f"wrote {', '.join(str(a.out / w) for w in wrote)}")


if __name__ == "__main__":
    main()
