"""Same runs, same numbers: train a fixed set of small runs through the command line and hash their
final weights, so a restructure (or any change meant to keep behaviour) can be checked bit for bit.

    python analysis/same_numbers.py --out before.json                 # on the old code
    python analysis/same_numbers.py --out after.json --compare before.json

Each run writes to a temporary folder; what is recorded per run is the SHA-256 of every tensor of
the final checkpoint's weights (by state-dict name), the largest |difference| to the reference where
weights are kept (--keep DIR), and the per-epoch test accuracy and loss. Run it on a quiet machine
with the same thread count for both sides (OMP_NUM_THREADS is fixed to 2 here).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# name -> (config, --set overrides)
RUNS = {
    "quickstart": ("spikeep/config/shipped/quickstart.toml", []),
    "spiking_30_iterations": ("spikeep/config/shipped/mnist_mlp_spiking.toml", ["data.subset=600", "train.epochs=1"]),
    "bptt": ("spikeep/config/shipped/quickstart.toml", ["estimator.name=bptt", "train.epochs=2"]),
    "quantized": ("spikeep/config/shipped/quickstart.toml", ["plasticity.bits=4", "plasticity.rounding=stochastic",
                                             "plasticity.headroom=2.0", "train.epochs=2"]),
    "random_sign_conv": ("spikeep/config/shipped/mnist_conv.toml", ["data.name=mnist-quickstart", "data.subset=256",
                                                    "train.epochs=1", "estimator.name=random_sign",
                                                    "train.checkpoint_every=0"]),
    "one_sided_mse_spiking_poisson": ("spikeep/config/shipped/quickstart.toml", [
        "model.loss=mse", "model.neurons=spiking", "estimator.name=one_sided", "data.subset=200",
        "train.epochs=1", "spiking.encoding=poisson", "spiking.T1=50", "spiking.T2=25", "spiking.window=25",
        "train.eval_batch_size=500"]),
}


def run(name: str, config: str, overrides: list[str], workdir: Path) -> dict:
    run_dir = workdir / name
    cmd = [sys.executable, "-m", "spikeep.cli", "train", config, "--no-progress", "--run-dir", str(run_dir)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    hashes = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:16] for k, v in ckpt["model"].items()}
    hist = [{k: h[k] for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")} for h in ckpt["history"]]
    return {"config": config, "overrides": overrides, "hashes": hashes, "history": hist,
            "weights": {k: v for k, v in ckpt["model"].items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file for this side's hashes and metrics")
    ap.add_argument("--compare", help="a JSON file written earlier: report per run whether the weights match")
    ap.add_argument("--keep", help="folder to keep the final weights in (name.pt), for max |difference|")
    ap.add_argument("--only", nargs="*", help="run only these names")
    args = ap.parse_args()
    ref = json.loads(Path(args.compare).read_text()) if args.compare else None
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, overrides) in RUNS.items():
            if args.only and name not in args.only:
                continue
            r = run(name, config, overrides, Path(tmp))
            weights = r.pop("weights")
            line = f"{name}: final test acc {r['history'][-1]['test_acc']:.2f}%"
            if keep:
                old = keep / f"{name}.pt"
                if old.exists():
                    prev = torch.load(old, weights_only=True)
                    diff = max(float((prev[k].double() - weights[k].double()).abs().max()) for k in weights)
                    r["max_abs_diff_to_kept"] = diff
                    line += f" | max |dw| to kept weights {diff:.3g}"
                else:
                    torch.save(weights, old)
            if ref is not None and name in ref:
                same = ref[name]["hashes"] == r["hashes"]
                r["bitwise_same"] = same
                line += " | weights " + ("bitwise identical to the reference" if same else "DIFFER from the reference")
            print(line, flush=True)
            out[name] = r
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if ref is not None and not all(r.get("bitwise_same", True) for r in out.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
