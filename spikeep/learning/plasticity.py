"""Plasticity: what a synapse on a chip can hold and how it can change.

Applied after the optimizer has turned the EP estimate into a proposed weight change dw (so plain
SGD, momentum and weight decay all work), each synapse moves on its own grid using only its own dw
and, where the rule keeps one, its own residual: nothing here mixes synapses (the per-layer scale is
fixed, like a chip's shared exponent). What is local: dw of a synapse depends on the states of its
two neurons (EP) and, with momentum, on that synapse's own momentum buffer (a per-synapse float
state, more than most chips hold); the residual and the device state are per synapse too.

Weight grid of a layer with n bits and scale s:
    n >= 2:  w = s * c,  c integer in [-(2^(n-1) - 1), 2^(n-1) - 1]   (signed, symmetric)
    n == 1:  w = s * c,  c in {-1, +1}                                  (binary, Laydevant et al. 2021)
Scale: "init", s = headroom * max|w_0| / c_max (for 1 bit, headroom * mean|w_0|); "pow2", the smallest power
of two at least that large (one shared exponent per layer, as on Loihi); or a fixed number s > 0.

Rounding of the proposed weight w + dw onto the grid (c' from c and delta = dw / s):
    nearest     c' = the grid point nearest c + delta
    stochastic  one of the two grid points around c + delta, the upper with probability equal to
                the fraction of the way to it: unbiased, E[s c'] = w + dw (inside the range)
    residual    r += delta; c' = nearest(c + r); r -= c' - c: the part below one step is kept by
                the synapse until it adds up, so no update mass is lost (inside the range)
An optional threshold drops proposed moves smaller than `threshold` grid spacings (the residual
rule keeps accumulating them).

Device models (how a grid move is realised):
    linear     the move happens exactly (ideal digital synapse), clipped to the range
    memristor  a conductance G in [0, 1] with `levels` levels; each unit move is one programming
               pulse; a potentiating pulse moves G along G_P(p) = (1 - e^(-nu_p p/(L-1))) / (1 - e^(-nu_p)),
               a depressing one along G_D(p) = 1 - G_P'(L-1-p) with nu_d (so steps depend on G and
               differ between the two directions); cycle-to-cycle noise multiplies each step by
               (1 + noise * N(0, 1)); the weight read is w = s * c_max * (2G - 1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

Tensor = torch.Tensor
ROUNDINGS = ("nearest", "stochastic", "residual")
SCALE_RULES = ("init", "pow2")
DEVICES = ("linear", "memristor")


@dataclass(frozen=True)
class SynapseSpec:
    """How a layer's synapses store and change their weights (0 bits: float, no quantization)."""
    bits: int = 0
    scale: Union[str, float] = "init"  # "init", "pow2" or a fixed grid spacing > 0
    rounding: str = "nearest"
    threshold: float = 0.0  # in grid spacings
    device: str = "linear"
    levels: int = 32  # memristor conductance levels
    nu_p: float = 0.0  # memristor potentiation nonlinearity (0: linear)
    nu_d: float = 0.0  # memristor depression nonlinearity
    noise: float = 0.0  # memristor cycle-to-cycle relative std of a step
    headroom: float = 1.0  # range = headroom x the initial max |w| (weights grow while learning)

    def __post_init__(self):
        if not (self.bits == 0 or 1 <= self.bits <= 16):
            raise ValueError(f"weight bits must be 0 (float) or 1..16, got {self.bits}")
        if isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool):
            if not (math.isfinite(self.scale) and self.scale > 0):
                raise ValueError(f"a fixed weight scale must be a finite number > 0, got {self.scale!r}")
        elif self.scale not in SCALE_RULES:
            raise ValueError(f"unknown scale rule {self.scale!r}; use one of {', '.join(SCALE_RULES)} or a number > 0")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {self.rounding!r}; use one of {', '.join(ROUNDINGS)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device model {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.threshold < 0 or self.noise < 0 or self.nu_p < 0 or self.nu_d < 0:
            raise ValueError("threshold, noise and the nonlinearities nu_p, nu_d must be >= 0")
        if not self.headroom > 0:
            raise ValueError(f"headroom must be > 0, got {self.headroom}")
        if self.device == "memristor" and self.levels < 2:
            raise ValueError(f"a memristor needs at least 2 conductance levels, got {self.levels}")
        if self.device == "memristor" and self.bits < 2:
            raise ValueError("the memristor model needs bits >= 2 (they set its weight range)")

    @property
    def c_max(self) -> int:
        return 1 if self.bits == 1 else 2 ** (self.bits - 1) - 1


def layer_scale(w0: Tensor, spec: SynapseSpec) -> float:
    """The per-layer scale s from the initial weights (fixed for the whole run)."""
    if not isinstance(spec.scale, str):
        return float(spec.scale)
    ref = spec.headroom * (float(w0.abs().mean()) if spec.bits == 1 else float(w0.abs().max()) / spec.c_max)
    if not ref > 0 or not math.isfinite(ref):
        raise ValueError(f"cannot derive a weight scale from initial weights with max |w| = {float(w0.abs().max())}")
    return 2.0 ** math.ceil(math.log2(ref)) if spec.scale == "pow2" else ref


# -- memristor curves -------------------------------------------------------------------------------

def potentiation_curve(p: Tensor, levels: int, nu: float) -> Tensor:
    """G_P(p) for pulse number p in [0, L-1]: 0 -> 0, L-1 -> 1, concave for nu > 0."""
    x = p / (levels - 1)
    return x if nu == 0 else (1 - torch.exp(-nu * x)) / (1 - math.exp(-nu))


def _potentiation_inverse(g: Tensor, levels: int, nu: float) -> Tensor:
    x = g if nu == 0 else -torch.log1p(-g * (1 - math.exp(-nu))) / nu
    return x * (levels - 1)


def depression_curve(p: Tensor, levels: int, nu: float) -> Tensor:
    """G_D(p): the depression branch, 1 - G_P(L-1-p) with its own nonlinearity."""
    return 1 - potentiation_curve((levels - 1) - p, levels, nu)


def _depression_inverse(g: Tensor, levels: int, nu: float) -> Tensor:
    return (levels - 1) - _potentiation_inverse(1 - g, levels, nu)


# -- the per-layer rule -----------------------------------------------------------------------------

class QuantizedSynapses:
    """One layer's weight storage and local update rule (see the module docstring)."""

    def __init__(self, weight: Tensor, spec: SynapseSpec, generator: Optional[torch.Generator] = None):
        self.spec = spec
        self.scale = layer_scale(weight.detach(), spec)
        self.gen = generator
        w = weight.detach()
        self.residual = torch.zeros_like(w) if spec.rounding == "residual" else None
        if spec.device == "memristor":
            # the conductance that reads as the nearest representable weight
            g0 = (w / (self.scale * spec.c_max)).clamp(-1, 1).add(1).mul(0.5)
            p = _potentiation_inverse(g0, spec.levels, spec.nu_p).round().clamp(0, spec.levels - 1)
            self.g = potentiation_curve(p, spec.levels, spec.nu_p)
        else:
            self.g = None
        self.codes = self.initial_codes(w)

    def initial_codes(self, w: Tensor) -> Tensor:
        if self.spec.device == "memristor":
            return None
        c = (w / self.scale).round().clamp(-self.spec.c_max, self.spec.c_max)
        if self.spec.bits == 1:
            c = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
        return c

    def weight(self) -> Tensor:
        """The weight the synapses hold now."""
        if self.g is not None:
            return self.scale * self.spec.c_max * (2 * self.g - 1)
        return self.scale * self.codes

    def _uniform(self, like: Tensor) -> Tensor:
        """Uniform numbers drawn on the generator's device (the weights' device: no host copy)."""
        u = torch.rand(like.shape, generator=self.gen, dtype=like.dtype, device=self.gen.device)
        return u.to(like.device)

    def grid_move(self, delta: Tensor) -> Tensor:
        """How many grid spacings each synapse tries to move, from its proposed move `delta` (in
        grid spacings): rounding and threshold, and the residual it keeps, all per synapse."""
        spec = self.spec
        d = delta + self.residual if self.residual is not None else delta
        if spec.rounding == "stochastic":
            lo = torch.floor(d)
            move = lo + (self._uniform(d) < (d - lo)).to(d.dtype)
        else:
            move = torch.round(d)
        if spec.threshold > 0:
            move = torch.where(d.abs() < spec.threshold, torch.zeros_like(move), move)
        if self.residual is not None:
            self.residual = d - move
        return move

    def _settle_residual(self, wanted: Tensor, done: Tensor, lo: Tensor, hi: Tensor) -> None:
        """Give back to the residual what the range did not let happen, then bound it: past the
        device's range the update is lost (the one place the residual rule drops mass)."""
        if self.residual is not None:
            self.residual = torch.minimum(torch.maximum(self.residual + (wanted - done), lo), hi)

    @torch.no_grad()
    def apply(self, weight: Tensor, proposed: Tensor) -> None:
        """Replace the optimizer's float weight `proposed` by what the synapses can do, in place."""
        spec = self.spec
        delta = (proposed - self.weight()) / self.scale  # in units of s
        if self.g is None:
            spacing = 2.0 if spec.bits == 1 else 1.0
            move = self.grid_move(delta / spacing)
            new = (self.codes + spacing * move).clamp(-spec.c_max, spec.c_max)
            done = (new - self.codes) / spacing
            self.codes = new
            self._settle_residual(move, done, (-spec.c_max - new) / spacing - 0.5,
                                  (spec.c_max - new) / spacing + 0.5)
        else:
            # one pulse per unit move; a unit move is one linear level: 2 c_max / (L - 1) in code units
            unit = 2 * spec.c_max / (spec.levels - 1)
            move = self.grid_move(delta / unit)  # signed pulse counts
            self._pulse(move)
            bound = torch.full_like(move, float(spec.levels - 1))
            self._settle_residual(move, move, -bound, bound)
        weight.copy_(self.weight())

    def _pulse(self, pulses: Tensor) -> None:
        spec, L = self.spec, self.spec.levels
        remaining = pulses.clone()
        while bool((remaining != 0).any()):
            up, down = remaining > 0, remaining < 0
            g = self.g
            p_up = (_potentiation_inverse(g, L, spec.nu_p) + 1).clamp(max=L - 1)
            g_up = potentiation_curve(p_up, L, spec.nu_p)
            p_dn = (_depression_inverse(g, L, spec.nu_d) - 1).clamp(min=0)
            g_dn = depression_curve(p_dn, L, spec.nu_d)
            step = torch.where(up, g_up - g, torch.where(down, g_dn - g, torch.zeros_like(g)))
            if spec.noise > 0:
                n = torch.randn(g.shape, generator=self.gen, dtype=g.dtype, device=self.gen.device).to(g.device)
                step = step * (1 + spec.noise * n)
            self.g = (g + step).clamp(0, 1)
            remaining = remaining - up.to(remaining.dtype) + down.to(remaining.dtype)


class Plasticity:
    """Chip-like synapses for every layer of a network: call `apply()` right after optimizer.step().

    Only weights are quantized: biases are neuron parameters on most chips and stay in float.
    """

    def __init__(self, net, spec: SynapseSpec, seed: int = 0):
        self.spec = spec
        # random numbers (stochastic rounding, device noise) are drawn where the weights live
        self.gen = torch.Generator(device=net.layers[0].weight.device).manual_seed(seed)
        self.layers = {name: QuantizedSynapses(layer.weight, spec, self.gen)
                       for name, layer in zip(net.layer_names(), net.layers)} if spec.bits else {}
        self._weights = {name: layer.weight for name, layer in zip(net.layer_names(), net.layers)}
        self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """Write the synapses' stored values into the network's weights."""
        for name, q in self.layers.items():
            self._weights[name].copy_(q.weight())

    @torch.no_grad()
    def apply(self) -> torch.Tensor:
        """Realise every layer's proposed update; returns how many synapses changed (their count is
        what a chip pays update energy for), as a tensor on the weights' device (no host sync)."""
        changed = torch.zeros((), dtype=torch.int64, device=self.gen.device)
        for name, q in self.layers.items():
            w = self._weights[name]
            old = w.detach().clone()
            q.apply(w, old)
            changed = changed + (w != old).sum()
        return changed

    def state_dict(self) -> dict:
        """What a checkpoint needs: each layer's scale, codes or conductances, residual; the generator."""
        return {"generator": self.gen.get_state(),
                "layers": {n: {"scale": q.scale, "codes": q.codes, "g": q.g, "residual": q.residual}
                           for n, q in self.layers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["generator"])
        for n, q in self.layers.items():
            s = state["layers"][n]
            q.scale, q.codes, q.g, q.residual = float(s["scale"]), s["codes"], s["g"], s["residual"]
            for t in ("codes", "g", "residual"):
                if getattr(q, t) is not None:
                    setattr(q, t, getattr(q, t).to(self._weights[n].device))
        self.sync()
