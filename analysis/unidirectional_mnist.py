"""Unidirectional networks on MNIST (real data, CPU): an MLP 784-256-256-10 and the MNIST ConvNet, each
trained 3 epochs as a bidirectional network (symmetric EP), and unidirectional with symKP-VF and symVF;
test accuracy and the angle between forward and feedback weights per epoch.

    python analysis/unidirectional_mnist.py [--out analysis/results/unidirectional] [--runs runs/unidirectional]
        [--only mlp conv] [--kp-leak 1e-3] [--epochs 3]

Runs go through `spikeep train` (a finished run folder is reused); the table (markdown, json) and the
figures (analysis/table2.py's Figure 4 and 5 per network) go to --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "analysis"))
import table2  # noqa: E402

NETS = {
    "mlp": ("spikeep/config/shipped/mnist_mlp.toml", ["model.hidden=[256,256]", "train.lrs=[0.1,0.05,0.05]", "dynamics.T1=30",
                                      "dynamics.T2=8"]),
    "conv": ("spikeep/config/shipped/mnist_conv.toml", ["train.checkpoint_every=0"]),
}
VARIANTS = {
    "bidirectional": ["estimator.name=symmetric"],
    "sym_kp_vf": ["model.unidirectional=true", "estimator.name=sym_kp_vf"],
    "sym_vf": ["model.unidirectional=true", "estimator.name=sym_vf"],
}


def run(config: str, overrides: list[str], run_dir: Path) -> None:
    if (run_dir / "summary.json").is_file() and json.loads((run_dir / "summary.json").read_text())["finished"]:
        return
    cmd = [sys.executable, "-m", "spikeep.cli", "train", "--no-progress"]
    if (run_dir / "checkpoint.pt").is_file():  # a resumed run keeps its config: no CONFIG or --set with --resume
        cmd += ["--resume", str(run_dir)]
    else:
        cmd += [config, "--run-dir", str(run_dir)]
        for o in overrides:
            cmd += ["--set", o]
    subprocess.run(cmd, cwd=REPO, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "analysis" / "results" / "unidirectional")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "unidirectional")
    ap.add_argument("--only", nargs="+", default=list(NETS))
    ap.add_argument("--kp-leak", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for net in a.only:
        config, base = NETS[net]
        dirs = []
        for variant, extra in VARIANTS.items():
            over = base + extra + [f"train.epochs={a.epochs}"]
            if variant == "sym_kp_vf":
                over.append(f"estimator.kp_leak={a.kp_leak}")
            d = a.runs / f"{net}_{variant}"
            run(config, over, d)
            dirs.append(d)
            h = table2.read_run(d)["history"]
            summary[f"{net} {variant}"] = {
                "run": str(d.relative_to(REPO)) if d.is_relative_to(REPO) else str(d), "overrides": over,
                "test_acc": [e["test_acc"] for e in h],
                "angles": {k: [e[k] for e in h] for k in h[-1] if k.startswith("angle_")}}
        runs = [table2.read_run(d) for d in dirs]
        table2.figure4(runs, a.out / f"{net}_errors.png")
        table2.figure5(runs, a.out / f"{net}_angles.png")
    lines = ["| network | variant | test accuracy per epoch (%) | angle(w_f, w_b) per epoch (degrees) |",
             "| --- | --- | --- | --- |"]
    for name, s in summary.items():
        ang = "; ".join(f"{k[len('angle_'):]}: " + " / ".join(f"{v:.1f}" for v in vals) for k, vals in s["angles"].items())
        lines.append(f"| {name.split()[0]} | {name.split()[1]} | {' / '.join(f'{v:.2f}' for v in s['test_acc'])} | "
                     f"{ang or '-'} |")
    text = "\n".join(lines)
    (a.out / "unidirectional_mnist.md").write_text(text + "\n")
    (a.out / "unidirectional_mnist.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
