"""Candidate relaxation schedules trained side by side with the paper's (same network, seeds, data).

Each candidate is one run of `spikeep.train` (its own run folder under OUT/runs/NAME) with the config and
the candidate's overrides; runs go `--workers` at a time, each on one CPU thread. Afterwards the table
compares, per epoch, each candidate's test accuracy with the paper schedule's, and its cost: relaxation
steps per training image (free + nudged phases, all of them) and seconds per epoch, as ratios to the
paper schedule's. A candidate qualifies when its test accuracy stays within --within pp of the paper's at
every epoch; the cheapest that qualifies is named.

    python analysis/schedule_training.py cifar10_cpu_sym_ce --subset 3000 --test 1000 --epochs 3 --only ... \\
        --out analysis/results/schedules/training
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PAPER = "T1 250 / T2 25 (paper)"
CANDIDATES: dict[str, list[str]] = {
    PAPER: ["dynamics.T1=250", "dynamics.T2=25"],
    "T1 30 / T2 10": ["dynamics.T1=30", "dynamics.T2=10"],
    "T1 60 / T2 15": ["dynamics.T1=60", "dynamics.T2=15"],
    "T1 60 / T2 60": ["dynamics.T1=60", "dynamics.T2=60"],
    "relative 0.05, free 1 (T1 250 / T2 200)": ["dynamics.T1=250", "dynamics.T2=200", "dynamics.stop=relative",
                                                "dynamics.rtol=0.05", "dynamics.free_rtol=1", "dynamics.tol_every=5"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("config")
    ap.add_argument("--subset", type=int, default=6000, help="training images (data.subset)")
    ap.add_argument("--test", type=int, default=1000, help="test images (data.test_subset)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--within", type=float, default=0.5, help="pp of the paper schedule's test accuracy")
    ap.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the table from OUT/runs")
    ap.add_argument("--out", required=True, help="folder for schedule_training.json / .md")
    ap.add_argument("--runs", help="where the run folders go (default OUT/runs)")
    args = ap.parse_args()
    out = Path(args.out)
    runs = Path(args.runs) if args.runs else out / "runs"
    names = args.only or list(CANDIDATES)
    common = [f"data.subset={args.subset}", f"data.test_subset={args.test}", f"train.epochs={args.epochs}",
              f"train.batch_size={args.batch}", "train.threads=1", "train.checkpoint_minutes=0"]
    if not args.report_only:
        pending = [n for n in names if not (runs / slug(n) / "summary.json").is_file()]
        running: list[tuple[str, subprocess.Popen]] = []
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        while pending or running:
            while pending and len(running) < args.workers:
                n = pending.pop(0)
                run = runs / slug(n)
                cmd = [sys.executable, "-m", "spikeep", "train", args.config, "--run-dir", str(run), "--overwrite",
                       "--no-progress"] + [a for s in common + CANDIDATES[n] for a in ("--set", s)]
                print(f"start {n}: {' '.join(cmd[2:])}", flush=True)
                runs.mkdir(parents=True, exist_ok=True)
                log = open(runs / f"{slug(n)}.console.log", "w")
                running.append((n, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
            time.sleep(5)
            for n, p in list(running):
                if p.poll() is not None:
                    print(f"done {n}: exit {p.returncode}", flush=True)
                    running.remove((n, p))
    rows = {}
    for n in names:
        run = runs / slug(n)
        if (run / "metrics.csv").is_file():
            rows[n] = read_metrics(run)
    if PAPER not in rows:
        raise SystemExit(f"no metrics for the paper schedule in {out / 'runs' / slug(PAPER)}")
    paper = rows[PAPER]

    def cost(m):  # relaxation steps per training image, all phases
        return sum(r["steps_per_batch"] for r in m) / len(m)

    def secs(m):
        return sum(r["seconds"] for r in m) / len(m)

    table = []
    for n, m in rows.items():
        k = min(len(m), len(paper))
        diffs = [m[i]["test_acc"] - paper[i]["test_acc"] for i in range(k)]
        table.append({"candidate": n, "test_acc": [r["test_acc"] for r in m], "diff_pp": diffs,
                      "qualifies": k == len(paper) and all(d >= -args.within for d in diffs),
                      "steps_per_image": cost(m), "step_ratio": cost(m) / cost(paper),
                      "seconds_per_epoch": secs(m), "time_ratio": secs(m) / secs(paper),
                      "steps_inference": m[-1].get("steps_inference")})
    ok = sorted((t for t in table if t["qualifies"]), key=lambda t: t["steps_per_image"])
    pick = ok[0]["candidate"] if ok else None
    meta = {"config": args.config, "common": common, "within_pp": args.within, "pick": pick,
            "python": platform.python_version(), "machine": platform.machine(), "note":
            "runs went --workers at a time on a 2-core machine: seconds are comparable only roughly; steps are exact"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "schedule_training.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=1) + "\n")
    lines = [f"Training side by side ({', '.join(common)}); within {args.within} pp of the paper schedule at "
             f"every epoch: {', '.join(t['candidate'] for t in ok) or 'none'}; cheapest: **{pick}**", "",
             "| candidate | test acc per epoch (%) | vs paper (pp) | steps per training image | x paper | s per epoch | x paper |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for t in sorted(table, key=lambda t: t["steps_per_image"]):
        lines.append(f"| {t['candidate']} | {' / '.join(f'{a:.2f}' for a in t['test_acc'])} | "
                     f"{' / '.join(f'{d:+.2f}' for d in t['diff_pp'])} | {t['steps_per_image']:.0f} | "
                     f"{t['step_ratio']:.2f} | {t['seconds_per_epoch']:.0f} | {t['time_ratio']:.2f} |")
    (out / "schedule_training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
