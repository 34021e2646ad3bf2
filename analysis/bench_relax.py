"""Benchmark: relaxation by explicit drives (spikeep) vs autograd of Phi (the method of the paper's
public code: each step differentiates Phi with autograd and applies sigma to the result).

Same process, same network, same inputs, identical math: both methods are checked to reach the
same states. Prints time per step, the ratio, peak memory of each, and how many free steps the
network needs at initialisation to converge (max |s_{t+1} - s_t| < 1e-4).

    python analysis/bench_relax.py                   # CPU: paper ConvNet (batch 16) and MNIST MLP (batch 128)
    python analysis/bench_relax.py --device cuda --conv-batch 128
    python analysis/bench_relax.py --steps 30 --repeats 3 --json analysis/results/bench_relax_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import weakref
import time

from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spikeep.config import ModelConfig
from spikeep.training.validation import load_config
from spikeep.core.dynamics import free_phase
from spikeep.core.network import EqNetwork

NETS = {
    # Laborieux et al. 2021: CIFAR-10 ConvNet, 128-256-512-512, kernels 3, paddings 1-1-1-0, max-pools,
    # softmax readout
    "conv": load_config(Path(__file__).resolve().parents[1] / "spikeep" / "config" / "shipped" / "cifar10_paper.toml").model,
    "mlp": ModelConfig(input_shape=[1, 28, 28], hidden=[512], n_classes=10, activation="my_hard_sig",
                       loss="mse"),
}


def autograd_relax(net: EqNetwork, x, y, state, T: int, beta: float):
    """The baseline: s_{t+1} = sigma(d Phi / d s) with dPhi/ds from autograd at every step."""
    state = [s.detach().requires_grad_(True) for s in state]
    for _ in range(T):
        phi = net.phi(x, state, beta, y).sum()
        grads = torch.autograd.grad(phi, state)
        state = [net.activation.fn(g).detach().requires_grad_(True) for g in grads]
    return tuple(s.detach() for s in state)


def explicit_relax(net: EqNetwork, x, y, state, T: int, beta: float):
    with torch.no_grad():
        inp = net.prepare(x, y)  # constant input drive: once per batch
        for _ in range(T):
            state = net.step(inp, state, beta)
    return state


METHODS = {"explicit": explicit_relax, "autograd": autograd_relax}
# variants timed: (method, channels_last). spikeep relaxes conv nets in NHWC by default; the paper's
# code runs autograd in PyTorch's default NCHW layout. Both layouts are timed for both methods.
VARIANTS = [("explicit", True), ("explicit", False), ("autograd", False), ("autograd", True)]


def _label(method: str, cl: bool, name: str) -> str:
    return method if name != "conv" else f"{method} {'NHWC' if cl else 'NCHW'}"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _setup(name: str, batch: int, device: str, seed: int = 0):
    torch.manual_seed(seed)
    dev = torch.device(device)
    net = EqNetwork(NETS[name]).to(dev)
    x = torch.rand(batch, *NETS[name].input_shape, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    return net, x, y, dev


def time_methods(name: str, batch: int, device: str, steps: int, repeats: int):
    """Seconds per step of each variant (best of `repeats`, variants interleaved), same process,
    same weights and inputs; and the largest state difference between variants (same math)."""
    net, x, y, dev = _setup(name, batch, device)
    variants = [v for v in VARIANTS if name == "conv" or not v[1]]
    nets = {v: copy.deepcopy(net).use_channels_last(v[1]) for v in variants}
    with torch.no_grad():
        s0 = free_phase(net, net.prepare(x, y), 5).state  # start from a non-trivial state
    best = {v: float("inf") for v in variants}
    final = {}
    for v in variants:
        METHODS[v[0]](nets[v], x, y, s0, 2, 0.0)  # warm-up
    for _ in range(repeats):
        for v in variants:
            _sync(dev)
            t0 = time.perf_counter()
            final[v] = METHODS[v[0]](nets[v], x, y, s0, steps, 0.0)
            _sync(dev)
            best[v] = min(best[v], (time.perf_counter() - t0) / steps)
    ref = final[variants[0]]
    diff = max(float((u - w).abs().max()) for v in variants for u, w in zip(final[v], ref))
    return best, diff


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the block and still alive (CPU or CUDA alike):
    every op's outputs are counted once per storage until the last tensor viewing it is freed."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.refs: dict[int, list] = {}

    def _release(self, key):
        entry = self.refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key not in self.refs:
                    self.refs[key] = [0, st.nbytes()]
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                self.refs[key][0] += 1
                weakref.finalize(t, self._release, key)
        return out


def peak_memory(name: str, method: str, cl: bool, batch: int, device: str, steps: int) -> float:
    """Peak MiB of tensors allocated by `steps` relaxation steps (states, drives, graph, indices)."""
    net, x, y, dev = _setup(name, batch, device)
    net.use_channels_last(cl)
    s0 = net.init_state(batch)
    with LiveTensorBytes() as m:
        out = METHODS[method](net, x, y, s0, steps, 0.0)
    del out
    return m.peak / 2**20


def steps_to_converge(name: str, batch: int, device: str, tol: float = 1e-4, T: int = 2000) -> int:
    net, x, y, _ = _setup(name, batch, device)
    r = free_phase(net, net.prepare(x, y), T, tol=tol)
    return r.steps if r.delta < tol else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--conv-batch", type=int, default=16)
    ap.add_argument("--mlp-batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--nets", default="conv,mlp")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args()
    env = {"torch": torch.__version__, "device": a.device, "threads": a.threads, "machine": platform.machine(),
           "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None}
    print(f"torch {env['torch']} | device {a.device} | {a.threads} threads | {a.steps} steps, best of {a.repeats}")
    results = {"env": env, "nets": {}}
    torch.set_num_threads(a.threads)
    for name in a.nets.split(","):
        batch = a.conv_batch if name == "conv" else a.mlp_batch
        t, diff = time_methods(name, batch, a.device, a.steps, a.repeats)
        mem = {v: peak_memory(name, v[0], v[1], batch, a.device, 3) for v in t}
        conv_steps = steps_to_converge(name, batch, a.device)
        main_ratio = t[("autograd", False)] / t[("explicit", name == "conv")]
        print(f"\n{name} (batch {batch}):")
        for v in t:
            print(f"  {_label(*v, name):>14}: {1e3 * t[v]:8.2f} ms/step   peak memory {mem[v]:8.1f} MiB")
        print(f"  speed-up, spikeep (explicit{' NHWC' if name == 'conv' else ''}) vs autograd of Phi as in the "
              f"paper's code{' (NCHW)' if name == 'conv' else ''}: {main_ratio:.2f}x")
        same = {}
        if name == "conv":
            for cl in (False, True):
                same["NHWC" if cl else "NCHW"] = t[("autograd", cl)] / t[("explicit", cl)]
            print("  speed-up in the same layout: " + ", ".join(f"{k} {r:.2f}x" for k, r in same.items()))
        print(f"  max state difference between variants after {a.steps} steps: {diff:.1e}")
        print(f"  free phase at initialisation converges (max |ds| < 1e-4) after "
              f"{conv_steps if conv_steps > 0 else '> 2000'} steps")
        results["nets"][name] = {"batch": batch, "ratio": main_ratio, "ratio_same_layout": same,
                                 "max_state_diff": diff, "steps_to_converge": conv_steps,
                                 "variants": {_label(*v, name): {"s_per_step": t[v], "peak_mib": mem[v]} for v in t}}
    print("\npeak memory: largest total of live tensor storage created during a 3-step relaxation "
          "(states, drives, pooling indices, autograd graph), counted by a dispatch mode")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
