"""Relaxation speed of the paper's CIFAR-10 ConvNet per engine, schedule, precision and batch size,
against the paper code's method (autograd of Phi at every step) in the same process on the same device.

    python analysis/bench_gpu.py [--device cuda] [--batches 128,512,2048] [--steps 30] [--repeats 3]
                                 [--iterations 3] [--profile] [--json FILE]

Per variant: ms per step and microseconds per image-step (best of the repeats, variants interleaved),
achieved TFLOP/s (counted FLOPs of the step) and the ratio to today's eager tf32 step and to the paper
method. The paper method runs twice: TF32 off, and with PyTorch's default (cuDNN convolutions in TF32,
what users of that code get on this GPU). `--iterations N`: a whole training iteration at batch 128 on the
paper's schedule (synchronous, T1 250, T2 25, symmetric estimate, SGD step) per method. `--profile`:
torch.profiler of one block of steps per chosen variant (without CUDA graphs), with the share of
convolution / matrix-product kernels in GPU time. Runs on the CPU too (a smoke test there: figures on a
CPU say nothing about a GPU).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time

from pathlib import Path

import torch

from spikeep.training.torch_settings import set_precision
from spikeep.training.validation import load_config
from spikeep.core.dynamics import free_phase
from spikeep.core.relaxer import EAGER, Relaxer, RelaxSettings
from spikeep.core.interactions import Conv
from spikeep.core.network import EqNetwork
from spikeep.learning.ep import ep_gradients

PAPER = load_config(Path(__file__).resolve().parents[1] / "spikeep" / "config" / "shipped" / "cifar10_paper.toml").model  # Table 2's ConvNet
CONV_KERNELS = ("conv", "xmma", "implicit", "gemm", "cudnn", "fprop", "dgrad", "wgrad", "cutlass", "sm90",
                "sm80", "winograd", "fft")


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
        total += macs * ((k >= 1) + (k >= 1))
    if net.readout is not None:
        total += net.readout.weight.numel()
    return 2.0 * total * batch


def paper_relax(net, x, y, state, T, beta=0.0):
    """The paper code's method: dPhi/ds by autograd at every step, NCHW."""
    state = [s.detach().requires_grad_(True) for s in state]
    for _ in range(T):
        grads = torch.autograd.grad(net.phi(x, state, beta, y).sum(), state)
        state = [net.activation.fn(g).detach().requires_grad_(True) for g in grads]
    return [s.detach() for s in state]


def paper_iteration(net, opt, x, y, T1, T2, beta):
    """One training iteration of the paper's code: free and +-beta phases by autograd of Phi, the
    estimate as autograd of the difference of the nudged phases' Phi, SGD step."""
    s0 = [torch.zeros(x.shape[0], *s, device=x.device) for s in net.layer_shapes]
    s = paper_relax(net, x, y, s0, T1)
    sp = paper_relax(net, x, y, s, T2, beta)
    sm = paper_relax(net, x, y, s, T2, -beta)
    opt.zero_grad()
    loss = (net.phi(x, sm, -beta, y).mean() - net.phi(x, sp, beta, y).mean()) / (2 * beta)
    loss.backward()
    opt.step()


def spikeep_iteration(net, opt, x, y, T1, T2, beta, relaxer=EAGER):
    opt.zero_grad(set_to_none=False)
    ep_gradients(net, x, y, "symmetric", beta, T1, T2, relaxer=relaxer)
    opt.step()


def make_variant(base: EqNetwork, engine: str, precision: str, schedule: str = "sync", cl: bool = True,
                 graphs: bool = True) -> tuple[EqNetwork, Relaxer]:
    """A copy of the network and the relaxer of one variant (engine 'paper' relaxes by autograd instead)."""
    net = copy.deepcopy(base).use_channels_last(cl)
    fused = engine not in ("eager", "paper")
    prec = precision if precision in ("strict", "bf16", "bf16_incremental") else "strict"  # tf32: a torch flag
    return net, Relaxer(RelaxSettings(schedule=schedule, precision=prec, kernels="triton" if engine == "triton" else "torch",
                                      graphs=fused and graphs, batch_phases=fused))


def variants_for(batch: int, dev: torch.device, full: bool) -> dict:
    """name -> (engine, precision, schedule)."""
    cuda = dev.type == "cuda"
    v = {"paper code, TF32 off": ("paper", "strict", "sync")}
    if cuda:
        v["paper code, PyTorch default (TF32 convolutions)"] = ("paper", "default", "sync")
        v["eager tf32 (today)"] = ("eager", "tf32", "sync")
    v["eager strict"] = ("eager", "strict", "sync")
    if full:
        v["eager bf16"] = ("eager", "bf16", "sync")
        v["fused (PyTorch kernels) strict"] = ("fused", "strict", "sync")
    impl = "triton" if cuda else "fused"
    precs = ("strict", "tf32", "bf16", "bf16_incremental") if cuda else ("strict", "bf16", "bf16_incremental")
    for p in precs:
        v[f"{impl} {p}"] = (impl, p, "sync")
    if full:
        for p in ("strict", "bf16") if cuda else ("strict",):
            v[f"{impl} {p}, async sweep"] = (impl, p, "async")
    return v


def set_mode(precision: str) -> None:
    if precision == "default":  # what PyTorch gives a user: cuDNN convolutions in TF32, matmuls not
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        set_precision("tf32" if precision == "tf32" else "strict")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_batch(base, batch, dev, steps, repeats, full) -> list[dict]:
    torch.manual_seed(batch)
    x = torch.rand(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    variants = variants_for(batch, dev, full)
    nets = {n: make_variant(base, e, p, sch, cl=e != "paper") for n, (e, p, sch) in variants.items()}  # (net, relaxer)
    with torch.no_grad():
        s0 = free_phase(base, base.prepare(x, y), 5).state
    best = {n: float("inf") for n in variants}
    for r in range(repeats + 1):  # round 0 warms up (cuDNN plans, Triton compilation, graph capture)
        for name, (engine, prec, _) in variants.items():
            set_mode(prec)
            net, rx = nets[name]
            s = tuple(net._layout(t.clone()) for t in s0) if engine != "paper" else [t.contiguous() for t in s0]
            sync(dev)
            t0 = time.perf_counter()
            if engine == "paper":
                paper_relax(net, x, y, s, steps)
            else:
                with torch.no_grad():
                    free_phase(net, net.prepare(x, y), steps, s, relaxer=rx)
            sync(dev)
            if r:
                best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    set_precision("strict")
    flops = step_flops(base, batch)
    ref_today = best.get("eager tf32 (today)", best["eager strict"])
    ref_paper = best.get("paper code, PyTorch default (TF32 convolutions)", best["paper code, TF32 off"])
    rows = []
    for name, (engine, prec, sch) in variants.items():
        t = best[name]
        rows.append({"batch": batch, "variant": name, "engine": engine, "precision": prec, "schedule": sch,
                     "ms_per_step": t * 1e3, "us_per_image_step": t * 1e6 / batch, "tflops": flops / t / 1e12,
                     "x_vs_eager_tf32_today": ref_today / t, "x_vs_paper_default": ref_paper / t})
    return rows


def bench_iterations(base, dev, n, T1=250, T2=25, beta=1.0, batch=128) -> list[dict]:
    """Whole training iterations at batch 128 on the paper's schedule, per method (best of n)."""
    torch.manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    methods = {"paper code, PyTorch default (TF32 convolutions)": ("paper", "default"),
               "paper code, TF32 off": ("paper", "strict"), "eager tf32 (today)": ("eager", "tf32"),
               "eager strict": ("eager", "strict")}
    impl = "triton" if dev.type == "cuda" else "fused"
    for p in ("strict", "tf32", "bf16", "bf16_incremental"):
        methods[f"{impl} {p}"] = (impl, p)
    if dev.type != "cuda":
        methods = {k: v for k, v in methods.items() if "tf32" not in v[1] and v[1] != "default"}
    rows = []
    for name, (engine, prec) in methods.items():
        set_mode(prec)
        net, rx = make_variant(base, engine, prec, cl=engine != "paper")
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        times = []
        for i in range(n + 1):
            sync(dev)
            t0 = time.perf_counter()
            if engine == "paper":
                paper_iteration(net, opt, x, y, T1, T2, beta)
            else:
                spikeep_iteration(net, opt, x, y, T1, T2, beta, rx)
            sync(dev)
            if i:
                times.append(time.perf_counter() - t0)
        rows.append({"method": name, "s_per_iteration": min(times), "T1": T1, "T2": T2, "batch": batch})
        print(f"  iteration {name:52s} {min(times):8.3f} s", flush=True)
    set_precision("strict")
    ref = rows[0]["s_per_iteration"]
    for r in rows:
        r["x_vs_paper_default"] = ref / r["s_per_iteration"]
    return rows


def profile_variant(base, dev, engine, prec, batch, steps=10) -> dict:
    """GPU time by kernel for `steps` steps (no CUDA graphs, so every kernel is seen)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(2)
    x = torch.rand(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    set_mode(prec)
    net, rx = make_variant(base, engine, prec, graphs=False)
    with torch.no_grad():
        inp = net.prepare(x, y)
        s = free_phase(net, inp, 3, relaxer=rx).state
        free_phase(net, inp, steps, s, relaxer=rx)
        sync(dev)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            free_phase(net, inp, steps, s, relaxer=rx)
            sync(dev)
    set_precision("strict")
    kern = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = getattr(e, "cuda_time_total", 0.0)
        if t and e.key and not e.key.startswith(("cudaLaunch", "cudaStream", "Memcpy", "cudaGraph")):
            kern[e.key] = kern.get(e.key, 0.0) + t
    total = sum(kern.values()) or float("nan")
    conv = sum(t for k, t in kern.items() if any(c in k.lower() for c in CONV_KERNELS))
    top = sorted(kern.items(), key=lambda kv: -kv[1])[:12]
    return {"engine": engine, "precision": prec, "batch": batch, "steps": steps, "gpu_us_per_step": total / steps,
            "conv_share": conv / total, "kernels_per_step": sum(e.count for e in prof.key_averages()
                                                                if e.device_type.name == "CUDA") / steps
            if hasattr(prof.key_averages()[0], "device_type") else None,
            "top": [(k[:90], t / steps) for k, t in top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="128,512,2048")
    ap.add_argument("--full-at", default="512", help="batch sizes with every variant (others: the main ones)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=0, help="time N training iterations per method (0: skip)")
    ap.add_argument("--it-T", default="250,25", help="T1,T2 of the timed training iterations (the paper's: 250,25)")
    ap.add_argument("--it-batch", type=int, default=128)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    base = EqNetwork(PAPER).to(dev)
    full_at = {int(b) for b in a.full_at.split(",") if b}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    print(f"paper ConvNet, {a.steps} steps, best of {a.repeats}; device {dev} ({name}), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)
    out = {"args": vars(a), "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None, "rows": [], "iterations": [],
           "profiles": []}
    for b in (int(v) for v in a.batches.split(",")):
        rows = bench_batch(base, b, dev, a.steps, a.repeats, b in full_at)
        out["rows"] += rows
        print(f"batch {b}:")
        for r in rows:
            print(f"  {r['variant']:52s} {r['ms_per_step']:8.3f} ms/step {r['us_per_image_step']:8.3f} us/image-step "
                  f"{r['tflops']:7.2f} TFLOP/s  x{r['x_vs_eager_tf32_today']:.2f} vs eager tf32, "
                  f"x{r['x_vs_paper_default']:.2f} vs paper code", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
    if a.iterations:
        T1, T2 = (int(v) for v in a.it_T.split(","))
        out["iterations"] = bench_iterations(base, dev, a.iterations, T1, T2, batch=a.it_batch)
    if a.profile and dev.type == "cuda":
        impl = "triton"
        for eng, prec in (("eager", "tf32"), (impl, "strict"), (impl, "bf16"), (impl, "bf16_incremental")):
            try:
                p = profile_variant(base, dev, eng, prec, 512)
            except Exception as e:  # noqa: BLE001 (a profiler failure must not lose the timings)
                p = {"engine": eng, "precision": prec, "error": repr(e)}
            out["profiles"].append(p)
            print(f"profile {eng} {prec} batch 512: " + (f"{p['gpu_us_per_step']:.0f} us GPU time per step, "
                  f"convolution/matmul kernels {100 * p['conv_share']:.1f} %" if "error" not in p else p["error"]),
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
