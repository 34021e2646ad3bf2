"""Spike raster and rate-convergence plots of a run's weights run as a spiking network.

    python analysis/plot_spikes.py RUN_DIR [--weights best|last] [--probe 4] [--out DIR] [--set spiking.T1=400]

Runs the free, +beta and -beta phases of the first PROBE test samples with the run's spiking settings
(a rate-trained run is run in its spiking twin) and writes raster.png and rate_convergence.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from spikeep.training.build import build_network
from spikeep.training.validation import config_from_dict, spiking_params
from spikeep.config import apply_overrides
from spikeep.data import prepare_data
from spikeep.training.plots import spike_pictures
from spikeep.spiking.simulator import SpikingSimulator, probe_phases
from spikeep.training.checkpoint_files import check_state_dict, load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--weights", choices=["best", "last"], default="best")
    ap.add_argument("--probe", type=int, default=4, help="test samples in the probe batch")
    ap.add_argument("--out", help="where the PNGs go (default: the run folder)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args()
    run = Path(a.run_dir)
    data = json.loads((run / "config.json").read_text())
    data.setdefault("model", {})["neurons"] = "spiking"
    cfg = config_from_dict(apply_overrides(data, a.overrides), str(run / "config.json"))
    path = run / ("best.pt" if a.weights == "best" else "checkpoint.pt")
    ckpt = load_checkpoint(path, "weights")
    net = build_network(cfg)
    check_state_dict(path, ckpt["model"], net)
    net.load_state_dict(ckpt["model"])
    test = prepare_data(cfg.data).test
    out = Path(a.out) if a.out else run
    out.mkdir(parents=True, exist_ok=True)
    dev = net.synapses[0].weight.device
    s = cfg.spiking
    x, y = test.x[:a.probe].to(dev), test.y[:a.probe].to(dev)
    phases = probe_phases(SpikingSimulator(net, spiking_params(s)), x, y, s.T1, s.T2, cfg.estimator.beta, x.shape[0],
                          torch.Generator(device=dev).manual_seed(cfg.train.seed))
    spike_pictures(phases, net.layer_names()[:len(net.synapses)], out)
    print(f"wrote {out / 'raster.png'} and {out / 'rate_convergence.png'}")


if __name__ == "__main__":
    main()
