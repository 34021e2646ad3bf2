"""Spiking EP: the event-level twin of the rate network, on Norse's neuron functions.

The spiking network uses the very same EqNetwork (weights, wiring, Phi); only the neurons change.
Every neuron of layer k is an integrate-and-fire / LIF-box unit (Norse's `lif_box_feed_forward_step`
with reset by subtraction; its threshold and reset functions for the non-leaky IF) driven by a
current built from spike events only:

    I_k(t) = P(u_k(t) + b_k) + f_k(t) (+ beta * nudge)       currents into layer k
    u_k   <- (1 - alpha) u_k   + alpha * W_k z_{k-1}(t-1)     forward synaptic current (pre-pool)
    f_k   <- (1 - alpha) f_k   + alpha * W_{k+1}^T unpool(z_{k+1}(t-1))   feedback current
    v_k   <- v_k + I_k;  z_k = [v_k > theta];  v_k <- v_k - theta z_k     (IF, reset by subtraction)

An IF neuron fed a current of mean I fires at the rate clip(I / theta, 0, 1) (at most one spike per
step; the membrane is kept in [v_min, theta] so no charge piles up), and the mean of
W z is W r. The rates r of a spiking equilibrium therefore solve r_k = clip(dPhi/ds_k(r) / theta, 0, 1):
with theta = 2 this is the rate network's fixed point with `my_hard_sig` (Laborieux et al. 2021,
Eq. 8). Spikes reach the currents through one of two interchangeable back ends: `dense` (matrix
products over the spike tensor) or `event` (each neuron owns one row holding every synapse it drives,
[W_{k+1}^T | W_k], as a chip stores fan-out lists; the rows of the neurons that spiked are summed with
embedding_bag), chosen per source layer and step by activity with `auto`.

Phases (free, +beta, -beta) run in windows of `window` steps; a window's spike counts give the
rates, and a phase stops early once two successive windows' rates differ by at most `rate_tol`.
The nudge is a current into the last layer computed from an exponential trace of its spikes:
beta (y - rho_N) for squared error (Eq. 16), beta w_out^T (y - softmax(w_out rho_N)) through the
softmax readout (Eq. 19). The learning rule is local: each synapse differences the products of its
two neurons' spike rates between the nudged phases (symmetric, Eq. 12; one-sided, Eq. 4;
random-sign), written into .grad like the rate core's estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from norse.torch.functional.encode import poisson_encode_step
from norse.torch.functional.heaviside import heaviside
from norse.torch.functional.lif_box import LIFBoxFeedForwardState, LIFBoxParameters, lif_box_feed_forward_step
from norse.torch.functional.reset import reset_subtract

from .estimators import EP_ESTIMATORS, EPResult, write_grads
from .network import EqNetwork, Inputs
from .synapses import Conv, Dense

Tensor = torch.Tensor
BACKENDS = ("auto", "dense", "event")
ENCODINGS = ("current", "poisson")
# Activity (fraction of a layer's neurons spiking in a step) below which `auto` propagates events.
# analysis/bench_spiking.py, 784-1024-1024-10 on 2 CPU cores: event and dense cost the same at 28 %
# activity with batch 32; with batch 1 and 8 events stay faster up to 50 %. 0.25 sits just below.
DEFAULT_CROSSOVER = 0.25


# -- neurons ----------------------------------------------------------------------------------------

class NeuronParams(NamedTuple):
    """Constants of a spiking layer (units: one simulation step, potentials in drive units)."""
    theta: float = 2.0  # firing threshold; theta = 2 makes the rate my_hard_sig of the current
    leak: float = 0.0  # dt / tau_mem; 0 = non-leaky integrate-and-fire
    refractory: int = 0  # steps a neuron stays silent (and does not integrate) after a spike
    v_min: float = -2.0  # lower bound of the membrane potential (a finite memory of inhibition)


class NeuronState(NamedTuple):
    v: Tensor  # membrane potential
    refractory: Tensor  # steps left in the refractory period (0 when active)


def check_neuron_params(p: NeuronParams) -> NeuronParams:
    if not (isinstance(p.theta, (int, float)) and math.isfinite(p.theta) and p.theta > 0):
        raise ValueError(f"spiking threshold theta must be a finite number > 0, got {p.theta!r}")
    if not 0.0 <= p.leak < 1.0:
        raise ValueError(f"spiking leak (dt / tau_mem) must lie in [0, 1), got {p.leak!r}")
    if int(p.refractory) != p.refractory or p.refractory < 0:
        raise ValueError(f"spiking refractory period must be an integer >= 0 steps, got {p.refractory!r}")
    if not (math.isfinite(p.v_min) and p.v_min <= 0):
        raise ValueError(f"spiking v_min must be a finite number <= 0, got {p.v_min!r}")
    return p


def lif_box_step(current: Tensor, state: NeuronState, p: NeuronParams) -> tuple[Tensor, NeuronState]:
    """One step of an IF (leak = 0) or LIF-box neuron with reset by subtraction; returns (z, state).

    With leak > 0 this is Norse's `lif_box_feed_forward_step` with Norse's `reset_subtract`
    (v <- v + leak (I' - v) with I' = I / leak, so that a held input I adds I per step as in the IF
    neuron). Norse's LIF box always leaks, so the non-leaky IF integrates v <- v + I itself, with the
    same spike condition (Norse's heaviside: z = [v > theta]) and the same subtractive reset, in place
    on the fresh potential (a few tensor operations per step, which matters for the event back end).
    The membrane is then kept in [v_min, theta]: at most one spike per step and no charge piling up.
    """
    if p.leak > 0:
        c = dict(dtype=current.dtype, device=current.device)  # Norse's defaults are float32 scalars
        norse_p = LIFBoxParameters(tau_mem_inv=torch.as_tensor(p.leak, **c), v_leak=torch.zeros((), **c),
                                   v_th=torch.as_tensor(p.theta, **c), v_reset=torch.zeros((), **c),
                                   reset_method=reset_subtract)
        z, s = lif_box_feed_forward_step(current / p.leak, LIFBoxFeedForwardState(state.v), norse_p, dt=1.0)
        v, z = s.v, z.to(current.dtype)
    else:
        v = state.v + current
        z = heaviside(v - p.theta)
        v.sub_(z, alpha=p.theta)  # reset by subtraction: v - theta z
    refr = state.refractory
    if p.refractory > 0:
        active = refr == 0
        z = z * active
        v = torch.where(active, v, state.v)
        refr = torch.where(z > 0, torch.full_like(refr, p.refractory), (refr - 1).clamp_(min=0))
    return z, NeuronState(v.clamp_(p.v_min, p.theta), refr)


# -- spike propagation: dense and event back ends ----------------------------------------------------

def check_spikes(z: Tensor, what: str = "spike tensor") -> Tensor:
    """Refuse a tensor that is not made of 0s and 1s (a spike tensor)."""
    if not torch.is_tensor(z):
        raise TypeError(f"{what} must be a tensor of 0/1 spikes, got {type(z).__name__}")
    bad = (z != 0) & (z != 1)
    if bool(bad.any()):
        v = z[bad].flatten()[0].item()
        raise ValueError(f"{what} must hold only 0 and 1 (spikes), found {v!r} "
                         f"({int(bad.sum())} of {z.numel()} entries)")
    return z


def _bags(z: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the neurons that spiked in each sample, as embedding_bag (input, offsets)."""
    flat = z.flatten(1)
    j = flat.nonzero()[:, 1]  # row-major: grouped by sample
    if flat.shape[0] == 1:
        return j, torch.zeros(1, dtype=j.dtype, device=j.device)
    counts = flat.sum(1, dtype=j.dtype) if flat.is_floating_point() else flat.count_nonzero(1)
    return j, counts.cumsum(0).sub_(counts)


def fan_out_tables(net: EqNetwork, include_input: bool = True) -> list[Optional[Tensor]]:
    """Per source layer (input first), one row per neuron holding every synapse it drives, as a chip
    stores them: [W_{k+1}^T | W_k] (forward targets, then feedback targets). None where a conv synapse
    is involved (those propagate densely), and for the input without `include_input` (constant-current
    input sends no spikes). Made once per batch: weights only change between batches."""
    syn, n = net.synapses, len(net.synapses)
    tables: list[Optional[Tensor]] = []
    for k in range(-1, n):  # k = -1: the input layer (Poisson or given spikes)
        parts = []
        if k == -1 and not include_input:
            tables.append(None)
            continue
        if k + 1 < n:
            parts.append(syn[k + 1].weight.t() if isinstance(syn[k + 1], Dense) else None)
        if k >= 1:
            parts.append(syn[k].weight if isinstance(syn[k], Dense) else None)
        tables.append(torch.cat(parts, 1).contiguous() if parts and all(t is not None for t in parts) else None)
    return tables


def event_currents(z: Tensor, table: Tensor) -> Tensor:
    """Sum, per sample, the table rows of the neurons that spiked: (B, targets)."""
    j, off = _bags(z)
    return F.embedding_bag(j, table, off, mode="sum")


def dense_forward(syn, z: Tensor) -> Tensor:
    """W z_pre over the whole spike tensor (pre-pool, no bias)."""
    if isinstance(syn, Dense):
        return F.linear(z.flatten(1), syn.weight)
    return F.conv2d(z, syn.weight, None, syn.stride, syn.padding)


def pooled_drive(syn, u: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """P(u + b): add the bias to a forward current and pool it (conv), with the max-pool indices."""
    if isinstance(syn, Dense):
        return u + syn.bias, None
    return syn._pool(u + syn.bias.view(1, -1, 1, 1))


def _forward_fan_out(s, dtype, device) -> Tensor:
    """Synapses each presynaptic neuron of synapse s drives, in its pre shape."""
    if isinstance(s, Dense):
        return torch.full(s.pre_shape, float(s.post_shape[0]), dtype=dtype, device=device)
    ones = torch.ones(1, s.weight.shape[0], *s.conv_hw, dtype=dtype, device=device)
    return F.conv_transpose2d(ones, torch.ones_like(s.weight), None, s.stride, s.padding, s.output_padding)[0]


def _feedback_fan_out(s, dtype, device) -> Tensor:
    """Synapses each postsynaptic neuron of synapse s drives back, in its post shape."""
    if isinstance(s, Dense):
        return torch.full(s.post_shape, float(math.prod(s.pre_shape)), dtype=dtype, device=device)
    ones = torch.ones(1, *s.pre_shape, dtype=dtype, device=device)
    cnt = F.conv2d(ones, torch.ones_like(s.weight), None, s.stride, s.padding)
    return (F.max_pool2d(cnt, 2, 2) if s.pool != "i" else cnt)[0]


def fan_out(net: EqNetwork) -> tuple[Tensor, list[Tensor]]:
    """(input fan-out, fan-out of every layer): the synapses a neuron's spike reaches (forward,
    feedback and, for the last layer, the softmax readout). SynOps = spikes x fan-out."""
    p = net.synapses[0].weight
    syn, n = net.synapses, len(net.synapses)
    out = []
    for k in range(n):
        f = torch.zeros(net.layer_shapes[k], dtype=p.dtype, device=p.device)
        if k + 1 < n:
            f += _forward_fan_out(syn[k + 1], p.dtype, p.device)
        if k > 0:  # the input layer takes no feedback
            f += _feedback_fan_out(syn[k], p.dtype, p.device)
        if k == n - 1 and net.readout is not None:
            f += net.n_classes
        out.append(f)
    return _forward_fan_out(syn[0], p.dtype, p.device), out


# -- the simulation -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpikingParams:
    """Everything the spiking simulation needs besides the network (see SpikingConfig)."""
    neuron: NeuronParams = NeuronParams()
    syn_alpha: float = 1.0  # synaptic current filter: u <- u + alpha (W z - u); 1 = no filter
    trace_tau: float = 10.0  # steps: exponential trace of output spikes that feeds the nudge
    window: int = 50  # steps per rate window
    rate_tol: float = 0.0  # stop a phase once two successive windows differ by <= this (0: use budget)
    encoding: str = "current"  # "current" (x as a constant current) or "poisson" (Bernoulli spikes, p = x)
    backend: str = "auto"
    crossover: float = DEFAULT_CROSSOVER

    def __post_init__(self):
        check_neuron_params(self.neuron)
        if not 0 < self.syn_alpha <= 1:
            raise ValueError(f"spiking syn_alpha must lie in (0, 1], got {self.syn_alpha!r}")
        if not self.trace_tau >= 1:
            raise ValueError(f"spiking trace_tau must be >= 1 step, got {self.trace_tau!r}")
        if int(self.window) != self.window or self.window < 1:
            raise ValueError(f"spiking window must be a positive number of steps, got {self.window!r}")
        if not self.rate_tol >= 0:
            raise ValueError(f"spiking rate_tol must be >= 0, got {self.rate_tol!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"spiking encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"spiking backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0 <= self.crossover <= 1:
            raise ValueError(f"spiking crossover must be an activity in [0, 1], got {self.crossover!r}")


class SimState(NamedTuple):
    """Everything that evolves while a spiking network runs (passed explicitly, like Norse's states)."""
    neurons: tuple[NeuronState, ...]
    z: tuple[Tensor, ...]  # spikes of the last step, per layer
    u: tuple[Tensor, ...]  # filtered forward currents W_k z_{k-1}, per synapse (pre-pool)
    f: tuple[Tensor, ...]  # filtered feedback currents into layers 0..N-2
    rho: Tensor  # exponential trace of the last layer's spikes (the rate the nudge sees)


class Counts(NamedTuple):
    spikes: Tensor  # per layer: spikes summed over batch and steps
    synops: Tensor  # per layer: synaptic events its spikes caused (spikes x fan-out)
    input_spikes: float  # Poisson input spikes (0 for constant-current input)
    input_synops: float  # synaptic events the input spikes caused

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.spikes + other.spikes, self.synops + other.synops,
                      self.input_spikes + other.input_spikes, self.input_synops + other.input_synops)


class Phase(NamedTuple):
    """What a phase leaves: final network state, window rates, counts and (if asked) spike records."""
    state: SimState
    rates: tuple[Tensor, ...]  # per layer, from the spike counts of the last window
    input_rate: Tensor  # x itself for constant current, the Poisson spike rate otherwise
    steps: int
    delta: float  # max |rate change| between the last two windows (nan after one window)
    counts: Counts
    raster: Optional[tuple[Tensor, ...]] = None  # per layer: (steps, record, neurons) spikes, time first


class SpikingSimulator:
    """Runs an EqNetwork's weights as a network of spiking neurons (see the module docstring)."""

    def __init__(self, net: EqNetwork, params: SpikingParams = SpikingParams()):
        if not isinstance(params, SpikingParams):
            raise TypeError(f"params must be SpikingParams, got {type(params).__name__}")
        self.net, self.p = net, params
        self._fan_out = None

    @property
    def fan_out(self) -> tuple[Tensor, list[Tensor]]:
        if self._fan_out is None:
            self._fan_out = fan_out(self.net)
        return self._fan_out

    def init_state(self, inp: Inputs) -> SimState:
        net = self.net
        b = inp.x.shape[0]
        zeros = [torch.zeros(b, *s, dtype=inp.x.dtype, device=inp.x.device) for s in net.layer_shapes]
        neurons = tuple(NeuronState(z.clone(), torch.zeros_like(z, dtype=torch.int32)) for z in zeros)
        u = []
        for k, syn in enumerate(net.synapses):
            shape = syn.post_shape if isinstance(syn, Dense) else (syn.weight.shape[0], *syn.conv_hw)
            u.append(torch.zeros(b, *shape, dtype=inp.x.dtype, device=inp.x.device))
        f = tuple(z.clone() for z in zeros[:-1])
        return SimState(neurons, tuple(zeros), tuple(u), f, zeros[-1].clone())

    def _use_events(self, z: Tensor) -> bool:
        if self.p.backend != "auto":
            return self.p.backend == "event"
        return float(z.count_nonzero()) < self.p.crossover * z.numel()

    def tables(self) -> Optional[list[Optional[Tensor]]]:
        """The fan-out tables of the current weights (None for the dense back end), rebuilt only when
        a weight has changed since (an optimizer step bumps the tensors' version counters)."""
        if self.p.backend == "dense":
            return None
        key = tuple((w.data_ptr(), w._version) for w in (s.weight for s in self.net.synapses))
        if getattr(self, "_tables_key", None) != key:  # input table only for spiking input encodings
            self._tables, self._tables_key = fan_out_tables(self.net, self.p.encoding != "current"), key
        return self._tables

    def _window_events(self, activity: list[float]) -> list[bool]:
        """Back end per source layer (input first) for the next window, from measured activities."""
        if self.p.backend != "auto":
            return [self.p.backend == "event"] * len(activity)
        return [a < self.p.crossover for a in activity]

    def _propagate(self, z: Tensor, k: int, tables, event: Optional[bool] = None) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """The currents layer k's spikes (k = -1: input spikes) send this step: (W_{k+1} z to the
        layer above, W_k^T z to the layer below) by events or densely; None where the target is
        absent or a conv synapse must wait for its pooling indices (see step)."""
        syn, n = self.net.synapses, len(self.net.synapses)
        table = tables[k + 1] if tables is not None else None
        if table is not None and (self._use_events(z) if event is None else event):
            out = event_currents(z, table)
            n_up = syn[k + 1].post_shape[0] if k + 1 < n else 0
            up = out[:, :n_up] if k + 1 < n else None
            down = out[:, n_up:].view(z.shape[0], *syn[k].pre_shape) if k >= 1 else None
            return up, down
        up = dense_forward(syn[k + 1], z) if k + 1 < n else None
        down = syn[k].feedback_drive(z, None) if k >= 1 and isinstance(syn[k], Dense) else None
        return up, down

    def step(self, inp: Inputs, st: SimState, beta: float = 0.0, x_spikes: Optional[Tensor] = None,
             tables: Optional[list] = None, events: Optional[list[bool]] = None) -> SimState:
        """One synchronous step: currents from the last step's spikes, then every layer's neurons.

        `tables` (from fan_out_tables) enables the event back end; without them it runs dense.
        `events` fixes the back end per source layer (input first); None decides from this step's
        spikes (one device sync per layer for backend = "auto"; run_phase decides once per window).
        """
        ev = events if events is not None else [None] * (len(self.net.synapses) + 1)
        net, p = self.net, self.p
        syn, n, a = net.synapses, len(net.synapses), p.syn_alpha

        def filt(old: Tensor, new: Tensor) -> Tensor:
            return new if a == 1.0 else old + a * (new - old)

        sent_up: list[Optional[Tensor]] = [None] * n  # new forward current of synapse k
        sent_down: list[Optional[Tensor]] = [None] * n  # new feedback current into layer k-1 via synapse k
        if x_spikes is not None:
            sent_up[0], _ = self._propagate(x_spikes, -1, tables, ev[0])
        for k in range(n):
            up, down = self._propagate(st.z[k], k, tables, ev[k + 1])
            if k + 1 < n:
                sent_up[k + 1] = up
            sent_down[k] = down
        u, drive, idx = [], [], []
        for k in range(n):
            if k == 0 and x_spikes is None:  # constant current: the rate network's own first drive
                u.append(st.u[0])
                drive.append(inp.drive)
                idx.append(None)
                continue
            u.append(filt(st.u[k], sent_up[k]))
            d, i = pooled_drive(syn[k], u[k])
            drive.append(d)
            idx.append(i)
        f = []
        for k in range(n - 1):
            fb = sent_down[k + 1]
            if fb is None:  # conv synapse: unpool with this step's max-pool indices, then transposed conv
                fb = syn[k + 1].feedback_drive(st.z[k + 1], idx[k + 1])
            f.append(filt(st.f[k], fb))
        current = [drive[k] + f[k] if k < n - 1 else drive[k].clone() for k in range(n)]
        if beta != 0.0:
            current[-1].add_(net.nudge(_as_state(st.rho, n), inp.target), alpha=beta)
        zs, neurons = [], []
        for k in range(n):
            z, ns = lif_box_step(current[k], st.neurons[k], p.neuron)
            zs.append(z)
            neurons.append(ns)
        rho = st.rho + (zs[-1] - st.rho) / p.trace_tau
        return SimState(tuple(neurons), tuple(zs), tuple(u), tuple(f), rho)

    @torch.no_grad()
    def run_phase(self, inp: Inputs, state: Optional[SimState], T: int, beta: float = 0.0,
                  generator: Optional[torch.Generator] = None, input_spikes: Optional[Tensor] = None,
                  record: int = 0) -> Phase:
        """Run at most T steps (whole windows) from `state` (rest by default) with nudge beta.

        input_spikes: a time-first input spike train (steps, B, *input shape) of 0/1, e.g. from a
        Norse encoder, used instead of the configured encoding (it must cover the phase).
        record: keep the spikes of the first `record` samples of every step (for rasters).
        """
        p, net = self.p, self.net
        if not isinstance(T, int) or T <= 0:
            raise ValueError(f"a spiking phase needs a positive step budget, got {T!r}")
        if beta != 0.0 and inp.target is None:
            raise ValueError("a nudged phase (beta != 0) needs labels y")
        poisson = p.encoding == "poisson" and input_spikes is None
        if input_spikes is not None:
            check_spikes(input_spikes, "input spike train")
            want = (math.ceil(T / p.window) * p.window, *inp.x.shape)
            if input_spikes.dim() != len(want) or tuple(input_spikes.shape[1:]) != want[1:] or input_spikes.shape[0] < want[0]:
                raise ValueError(f"input spike train must be time-first with shape (>= {want[0]}, "
                                 f"{', '.join(map(str, want[1:]))}), got {tuple(input_spikes.shape)}")
            input_spikes = input_spikes.to(device=inp.x.device, dtype=inp.x.dtype)
        spiking_input = poisson or input_spikes is not None
        if record < 0 or int(record) != record:
            raise ValueError(f"record must be a number of samples >= 0, got {record!r}")
        if poisson and (float(inp.x.min()) < 0 or float(inp.x.max()) > 1):
            raise ValueError("Poisson encoding needs inputs in [0, 1] (spike probabilities per step); "
                             "drop data.mean/data.std normalisation or use encoding = 'current'")
        st = self.init_state(inp) if state is None else state
        n = len(net.synapses)
        tables = self.tables()
        # activity per source layer (input first) decides the back end of each window: the last
        # window's spike counts after the first (no per-step device sync)
        activity = [float(input_spikes[0].mean()) if input_spikes is not None else float(inp.x.mean())]
        activity += [float(z.count_nonzero()) / max(z.numel(), 1) for z in st.z]
        fo_in, fo = self.fan_out
        spikes = torch.zeros(n, dtype=torch.float64)
        synops = torch.zeros(n, dtype=torch.float64)
        in_spikes = in_synops = 0.0
        blocks = max(1, math.ceil(T / p.window))
        prev, delta, steps = None, float("nan"), 0
        raster: list[list[Tensor]] = [[] for _ in range(n)]
        for _ in range(blocks):
            events = self._window_events(activity)
            counts = [torch.zeros_like(z) for z in st.z]
            x_count = torch.zeros_like(inp.x) if spiking_input else None
            for t in range(p.window):
                xs = None
                if poisson:
                    xs = _poisson(inp.x, generator)
                elif input_spikes is not None:
                    xs = input_spikes[steps + t]
                if xs is not None:
                    x_count += xs
                st = self.step(inp, st, beta, xs, tables, events)
                for k, (c, z) in enumerate(zip(counts, st.z)):
                    c += z
                    if record:
                        raster[k].append(z[:record].flatten(1).to(torch.bool))
            steps += p.window
            rates = tuple(c / p.window for c in counts)
            for k in range(n):
                window_spikes = float(counts[k].sum())
                spikes[k] += window_spikes
                synops[k] += float((counts[k] * fo[k]).sum())
                activity[k + 1] = window_spikes / (p.window * counts[k].numel())
            if spiking_input:
                window_in = float(x_count.sum())
                in_spikes += window_in
                in_synops += float((x_count * fo_in).sum())
                activity[0] = window_in / (p.window * x_count.numel())
            if prev is not None:
                delta = max(float((r - q).abs().max()) for r, q in zip(rates, prev))
                if p.rate_tol > 0 and delta <= p.rate_tol:
                    break
            prev = rates
        input_rate = x_count / p.window if spiking_input else inp.x
        rec = tuple(torch.stack(r) for r in raster) if record else None
        return Phase(st, rates, input_rate, steps, delta, Counts(spikes, synops, in_spikes, in_synops), rec)


def _poisson(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """One step of Bernoulli input spikes with p = x (Norse's poisson_encode_step, f_max dt = 1),
    drawn on the generator's device (a run's CPU generator also drives CUDA runs, reproducibly)."""
    if generator is None or generator.device == x.device:
        return poisson_encode_step(x, f_max=1.0, dt=1.0, generator=generator).to(x.dtype)
    return poisson_encode_step(x.to(generator.device), f_max=1.0, dt=1.0, generator=generator).to(x.device, x.dtype)


def _as_state(rho: Tensor, n: int) -> tuple:
    """net.nudge reads only the last layer of a state: hand it rho there."""
    return (None,) * (n - 1) + (rho,)


# -- learning --------------------------------------------------------------------------------------

def _local_updates(net: EqNetwork, inp: Inputs, phase: Phase, beta: float) -> list[Tensor]:
    """dPhi^beta/dtheta from the spike rates of each synapse's two layers (the input's for the first)."""
    return net.dphi_dtheta(inp._replace(x=phase.input_rate), phase.rates, beta)


class SpikingEPResult(NamedTuple):
    ep: EPResult  # s_free holds the free-phase rates
    counts: Counts  # all phases of the batch
    free_counts: Counts  # the free phase alone (= one inference)


def spiking_ep_gradients(sim: SpikingSimulator, x: Tensor, y: Tensor, estimator: str = "symmetric",
                         beta: float = 0.5, T1: int = 200, T2: int = 100,
                         generator: Optional[torch.Generator] = None) -> SpikingEPResult:
    """Free phase, nudged phase(s) from the free network state, and the local spike-rate estimate
    written into .grad (same sign convention as the rate core's estimators)."""
    if estimator not in EP_ESTIMATORS:
        raise ValueError(f"unknown EP estimator {estimator!r}; use one of {', '.join(EP_ESTIMATORS)}")
    if beta == 0.0:
        raise ValueError("EP needs a nonzero beta for its nudged phase")
    net = sim.net
    with torch.no_grad():
        inp = net.prepare(x, y)
        free = sim.run_phase(inp, None, T1, 0.0, generator)
        if estimator == "random_sign":
            sign = 1.0 if int(torch.randint(0, 2, (1,), generator=generator)) == 1 else -1.0
            beta = sign * abs(beta)
        plus = sim.run_phase(inp, free.state, T2, beta, generator)
        a = _local_updates(net, inp, plus, beta)
        counts = free.counts + plus.counts
        steps = free.steps + plus.steps
        if estimator == "symmetric":  # Eq. 12 on spike rates
            minus = sim.run_phase(inp, free.state, T2, -beta, generator)
            b = _local_updates(net, inp, minus, -beta)
            grads = [(gb - ga) / (2 * beta) for ga, gb in zip(a, b)]
            counts = counts + minus.counts
            steps += minus.steps
        else:  # Eq. 4 on spike rates
            b = _local_updates(net, inp, free, 0.0)
            grads = [(gb - ga) / beta for ga, gb in zip(a, b)]
        write_grads(net, grads)
        ep = EPResult(free.rates, net.loss(free.rates, inp.y), net.logits(free.rates), steps, beta)
        return SpikingEPResult(ep, counts, free.counts)


@torch.no_grad()
def spiking_inference(sim: SpikingSimulator, x: Tensor, T1: int, generator: Optional[torch.Generator] = None) -> Phase:
    """The free phase alone: predictions are net.logits(phase.rates)."""
    return sim.run_phase(sim.net.prepare(x), None, T1, 0.0, generator)


@torch.no_grad()
def probe_phases(sim: SpikingSimulator, x: Tensor, y: Tensor, T1: int, T2: int, beta: float,
                 record: int = 1, generator: Optional[torch.Generator] = None) -> list[tuple[str, Phase]]:
    """Free, +beta and -beta phases of a probe batch with spike records (for rasters and plots)."""
    inp = sim.net.prepare(x, y)
    free = sim.run_phase(inp, None, T1, 0.0, generator, record=record)
    plus = sim.run_phase(inp, free.state, T2, beta, generator, record=record)
    minus = sim.run_phase(inp, free.state, T2, -beta, generator, record=record)
    return [("free", free), ("+beta", plus), ("-beta", minus)]
