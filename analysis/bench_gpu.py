"""Relaxation speed of the paper's CIFAR-10 ConvNet on a GPU, per precision and option, against the
way the paper's code relaxes (autograd of Phi, float32) in the same process on the same device.

    python analysis/bench_gpu.py [--device cuda] [--batch 128] [--steps 50] [--repeats 3] [--json FILE]

For each variant: ms per relaxation step (best of the repeats, variants interleaved), achieved TFLOP/s
(counted FLOPs of the step: forward and feedback drives of conv layers 2-4 and the readout; layer 1's
forward drive is constant), peak memory (CUDA), and the ratio to the paper-code method. Variants:
precision strict / tf32 / bf16 drives, NCHW / NHWC, and torch.compile of the step. Runs on the CPU too
(a smoke test; figures there say nothing about a GPU).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from spikeep.build import set_precision
from spikeep.config import ModelConfig
from spikeep.core.interactions import Conv
from spikeep.core.network import EqNetwork

PAPER = ModelConfig(input_shape=[3, 32, 32], channels=[128, 256, 512, 512], kernels=[3, 3, 3, 3],
                    strides=[1, 1, 1, 1], paddings=[1, 1, 1, 0], pools="mmmm", hidden=[], n_classes=10,
                    activation="my_hard_sig", loss="cross_entropy")


def step_flops(net: EqNetwork, batch: int) -> float:
    """Multiply-adds x 2 of one step: forward drives of synapses 2..N, feedback drives of all synapses
    whose presynaptic layer is a neuron layer (the input takes no feedback)."""
    total = 0
    for k, s in enumerate(net.synapses):
        if isinstance(s, Conv):
            c_out, c_in, kk, _ = s.weight.shape
            macs = c_out * c_in * kk * kk * s.conv_hw[0] * s.conv_hw[1]
        else:
            macs = s.weight.numel()
        total += macs * ((k >= 1) + (k >= 1))  # forward drive (not for the clamped input) + feedback
    if net.readout is not None:
        total += net.readout.weight.numel()  # logits for the nudge (nudged phases only; counted once)
    return 2.0 * total * batch


def paper_relax(net, x, y, state, T):
    """The paper code's method: dPhi/ds by autograd at every step, float32, NCHW."""
    state = [s.detach().requires_grad_(True) for s in state]
    for _ in range(T):
        grads = torch.autograd.grad(net.phi(x, state, 0.0, y).sum(), state)
        state = [net.activation.fn(g).detach().requires_grad_(True) for g in grads]
    return [s.detach() for s in state]


def spikeep_relax(net, x, y, state, T, step=None):
    with torch.no_grad():
        inp = net.prepare(x, y)
        step = step or net.step
        for _ in range(T):
            state = step(inp, state, 0.0)
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the step")
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    base = EqNetwork(PAPER).to(dev)
    x = torch.rand(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    with torch.no_grad():
        s0 = spikeep_relax(base, x, y, base.init_state(a.batch), 5)
    variants = {"paper code (autograd of Phi, float32, NCHW)": ("paper", "strict", False, None)}
    for prec in ("strict", "tf32", "bf16") if dev.type == "cuda" else ("strict", "bf16"):
        for cl in (False, True):
            variants[f"spikeep {prec}, {'NHWC' if cl else 'NCHW'}"] = ("spikeep", prec, cl, None)
    if a.compile:
        variants["spikeep strict, NHWC, torch.compile"] = ("spikeep", "strict", True, "compile")
    nets, steps = {}, {}
    for name, (method, prec, cl, opt) in variants.items():
        net = copy.deepcopy(base).use_channels_last(cl)
        net.use_drive_dtype(torch.bfloat16 if prec == "bf16" else None)
        nets[name] = net
        steps[name] = torch.compile(net.step) if opt == "compile" else None
    flops = step_flops(base, a.batch)
    best = {n: float("inf") for n in variants}
    peak = {}
    for r in range(a.repeats + 1):  # the first round warms up (and compiles)
        for name, (method, prec, cl, _) in variants.items():
            set_precision(prec)
            net = nets[name]
            s = [t.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else t for t in s0]
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            if method == "paper":
                paper_relax(net, x, y, s, a.steps)
            else:
                spikeep_relax(net, x, y, s, a.steps, steps[name])
            if dev.type == "cuda":
                torch.cuda.synchronize()
                peak[name] = torch.cuda.max_memory_allocated() / 2**20
            if r:
                best[name] = min(best[name], (time.perf_counter() - t0) / a.steps)
    set_precision("strict")
    ref = best[next(iter(variants))]
    rows = []
    print(f"paper ConvNet, batch {a.batch}, {a.steps} steps, best of {a.repeats}; device {dev} "
          f"({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), torch {torch.__version__}; "
          f"{flops / a.batch / 1e9:.3f} GFLOP per image per step")
    for name in variants:
        ms = best[name] * 1e3
        row = {"variant": name, "ms_per_step": ms, "tflops": flops / best[name] / 1e12,
               "speedup_vs_paper_code": ref / best[name], "peak_mib": peak.get(name)}
        rows.append(row)
        mem = f"{row['peak_mib']:8.0f} MiB" if row["peak_mib"] is not None else ""
        print(f"  {name:48s} {ms:9.2f} ms/step {row['tflops']:8.2f} TFLOP/s {row['speedup_vs_paper_code']:6.2f}x {mem}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "torch": torch.__version__, "flops_per_step": flops, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
