"""Relaxation speed of this checkout against an earlier one, in one process: the paper's CIFAR-10 ConvNet
(batch 16, NHWC as trained on the CPU) and the MNIST MLP (batch 128), the same weights, inputs and
starting state for both, free-phase steps timed alternately (old, new, old, new, ...; best of --repeats),
so both sides see the same machine load. The earlier checkout is imported as a second package
(`spikeep_ref`) from its folder; the states both reach are compared (they must agree bit for bit when
the change keeps the numbers).

    git worktree add /tmp/spikeep-ref <commit>       # the code before the change
    python analysis/bench_before_after.py --reference /tmp/spikeep-ref --json out.json
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def load_package(root: Path, name: str):
    """The `spikeep` package found in root/ imported as `name` (its relative imports stay inside it)."""
    init = root / "spikeep" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--reference {root}: no spikeep/__init__.py there")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def side(pkg: str, model_cfg: dict, state_dict: dict, channels_last: bool):
    """(network, free_phase) of one package, the same weights."""
    config = importlib.import_module(f"{pkg}.config")
    network = importlib.import_module(f"{pkg}.core.network")
    dynamics = importlib.import_module(f"{pkg}.core.dynamics")
    net = network.EqNetwork(config.ModelConfig(**model_cfg))
    net.load_state_dict(state_dict)
    net.use_channels_last(channels_last)
    return net, dynamics.free_phase


def bench(name: str, model_cfg: dict, batch: int, channels_last: bool, steps: int, repeats: int, ref: str) -> dict:
    torch.manual_seed(0)  # one set of weights, loaded into both sides
    config = importlib.import_module("spikeep.config")
    network = importlib.import_module("spikeep.core.network")
    base = network.EqNetwork(config.ModelConfig(**model_cfg))
    sd = base.state_dict()
    sides = {"before": side(ref, model_cfg, sd, channels_last), "after": side("spikeep", model_cfg, sd, channels_last)}
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *model_cfg["input_shape"], generator=g)
    y = torch.randint(0, model_cfg["n_classes"], (batch,), generator=g)
    best = {k: float("inf") for k in sides}
    out = {}
    with torch.no_grad():
        for r in range(repeats + 1):  # round 0 warms up
            for k, (net, free_phase) in sides.items():
                inp = net.prepare(x, y)
                t0 = time.perf_counter()
                out[k] = free_phase(net, inp, steps).state
                dt = (time.perf_counter() - t0) / steps
                if r:
                    best[k] = min(best[k], dt)
    same = all(torch.equal(a, b) for a, b in zip(out["before"], out["after"]))
    row = {"net": name, "batch": batch, "channels_last": channels_last, "steps": steps,
           "ms_per_step_before": best["before"] * 1e3, "ms_per_step_after": best["after"] * 1e3,
           "after_over_before": best["after"] / best["before"], "states_bitwise_equal": same}
    print(f"{name} (batch {batch}{', NHWC' if channels_last else ''}): before {row['ms_per_step_before']:.3f} ms/step, "
          f"after {row['ms_per_step_after']:.3f} ms/step, after/before {row['after_over_before']:.3f}, "
          f"states bitwise equal: {same}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="folder of the earlier checkout (holds spikeep/)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load_package(Path(a.reference).resolve(), "spikeep_ref")
    paper = dict(input_shape=[3, 32, 32], channels=[128, 256, 512, 512], kernels=[3] * 4, strides=[1] * 4,
                 paddings=[1, 1, 1, 0], pools="mmmm", hidden=[], n_classes=10, loss="cross_entropy")
    mlp = dict(input_shape=[1, 28, 28], hidden=[512], n_classes=10, loss="mse")
    print(f"torch {torch.__version__} | cpu {platform.processor() or platform.machine()} | {a.threads} threads | "
          f"{a.steps} free steps, best of {a.repeats}, old and new alternating", flush=True)
    rows = [bench("paper ConvNet", paper, 16, True, a.steps, a.repeats, "spikeep_ref"),
            bench("MNIST MLP", mlp, 128, False, a.steps, a.repeats, "spikeep_ref")]
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
