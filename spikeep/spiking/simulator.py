"""The spiking twin of a rate network: its weights run as Norse IF / LIF-box neurons driven by spikes.

The spiking network uses the very same EqNetwork (weights, wiring, Phi); only the neurons change.
Every neuron of layer k integrates a current built from spike events only:

    I_k(t) = P(u_k(t) + b_k) + f_k(t) (+ beta * nudge)       currents into layer k (EqNetwork.total_drives)
    u_k   <- (1 - alpha) u_k   + alpha * W_k z_{k-1}(t-1)     forward synaptic current (pre-pool; P: see Max-pools)
    f_k   <- (1 - alpha) f_k   + alpha * W_{b,k+1}^T unpool(z_{k+1}(t-1))   feedback current
    v_k   <- v_k + I_k;  z_k = [v_k > theta];  v_k <- v_k - theta z_k     (IF, reset by subtraction)

An IF neuron fed a current of mean I fires at clip(I / theta, 0, 1) and the mean of W z is W r, so the
rates r of a spiking equilibrium solve r_k = clip(dPhi/ds_k(r) / theta, 0, 1): with theta = 2 the rate
network's fixed point with `my_hard_sig` (Laborieux et al. 2021, Eq. 8). Spikes reach the currents
through the dense or the event back end (spikeep.spiking.propagation); `auto` picks per source layer
once per window, from the activity measured in the window before (no per-step device sync).

Max-pools: a max-pool of the current u_k = W_k z_{k-1} takes, each step, the largest of four noisy
currents, and the mean of a maximum is above the maximum of the means (Jensen): behind a max-pool the
spiking rates sit above the rate network's fixed point (on the CPU CIFAR-10 ConvNet +0.008 and +0.005 in
the mean rates of its 2nd and 3rd layers; analysis/results/cifar10_twin/). With pool_alpha < 1 the
winner of each 2x2 pooling window is the maximum of a trace q_k <- q_k + pool_alpha (u_k - q_k), and
the pool passes this step's u_k at that winner (mean: W_k r there); the feedback goes back through the
same winners. pool_alpha = 1 (the default) is the winner of each step's own current. The synaptic filter
syn_alpha narrows the noise too, but slows every current (and so the settling) with it.

Phases (free, +beta, -beta) run in windows of `window` steps; a window's spike counts give the
rates. Settling: an IF neuron at equilibrium still flickers by one spike between windows (its rate
is resolved to 1 / window), so a per-neuron max never falls below 1 / window. The default statistic
is therefore the excess: per sample, the largest over layers of the mean over the layer's neurons of
(|r(w) - r(w-1)| - 1 / window)+, which is 0 at equilibrium and positive while rates still drift;
a phase ends once its `settle_quantile` quantile over the batch is <= `rate_tol` (0: never; spend
the budget) or when the step budget is spent.
The nudge is a current into the last layer computed from an exponential trace of its spikes:
beta (y - rho_N) for squared error (Eq. 16), beta w_out^T (y - softmax(w_out rho_N)) through the
softmax readout (Eq. 19).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from norse.torch.functional.encode import poisson_encode_step

from ..core.network import EqNetwork, Inputs
from .metrics import Counts, fan_out
from .neurons import NeuronParams, NeuronState, check_neuron_params, neuron_step
from .propagation import Tables, check_spikes, fan_out_tables, propagate

Tensor = torch.Tensor
BACKENDS = ("auto", "dense", "event")
ENCODINGS = ("current", "poisson")
SETTLE_STATISTICS = ("excess", "mean", "max")
# Activity (fraction of a layer's neurons spiking in a step) below which `auto` propagates events.
# analysis/bench_spiking.py, 784-1024-1024-10 on 2 CPU cores: event and dense cost the same at 28 %
# activity with batch 32; with batch 1 and 8 events stay faster up to 50 %. 0.25 sits just below.
DEFAULT_CROSSOVER = 0.25
# The same for layers that drive conv synapses (kernel-slice events against F.conv2d / conv_transpose2d):
# analysis/bench_spiking.py --conv, MNIST ConvNet 32c5-64c5 on 2 CPU cores: events cost the same as
# dense at 0.3-0.4 % activity (batch 8, 32), 0.6-0.7x at 1 %, 0.1-0.5x at 5 %, 0.02-0.2x at 20 %;
# PyTorch's CPU convolutions are hard to beat on 12x12 and 8x8 maps. 0.003 sits at the crossover.
DEFAULT_CONV_CROSSOVER = 0.003


@dataclass(frozen=True)
class SpikingParams:
    """Everything the spiking simulation needs besides the network (see SpikingConfig)."""
    neuron: NeuronParams = NeuronParams()
    syn_alpha: float = 1.0  # synaptic current filter: u <- u + alpha (W z - u); 1 = no filter
    trace_tau: float = 10.0  # steps: exponential trace of output spikes that feeds the nudge
    window: int = 50  # steps per rate window
    rate_tol: float = 0.0  # end a phase once the settle statistic is <= this (0: always spend the budget)
    settle_statistic: str = "excess"  # per sample and layer (see settle_statistic): "excess", "mean" or "max"
    settle_quantile: float = 1.0  # fraction of the batch's samples that must have settled
    encoding: str = "current"  # "current" (x as a constant current) or "poisson" (Bernoulli spikes, p = x)
    backend: str = "auto"
    crossover: float = DEFAULT_CROSSOVER
    conv_crossover: float = DEFAULT_CONV_CROSSOVER  # the same for layers that drive conv synapses
    # max-pool routing: the winners of a window are the maxima of a trace q <- q + pool_alpha (u - q) of its
    # synaptic current u; 1 = of this step's current itself (see the module docstring)
    pool_alpha: float = 1.0

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
        if self.settle_statistic not in SETTLE_STATISTICS:
            raise ValueError(f"spiking settle_statistic must be one of {', '.join(SETTLE_STATISTICS)}, "
                             f"got {self.settle_statistic!r}")
        if self.rate_tol > 0 and self.window * self.syn_alpha < 1:
            raise ValueError(f"spiking window ({self.window} steps) is shorter than the synaptic filter's time "
                             f"constant 1 / syn_alpha = {1 / self.syn_alpha:g} steps: rates drift by less than "
                             f"one spike per window and rate_tol would end phases before they settle; "
                             f"use window >= {math.ceil(1 / self.syn_alpha)}")
        if not 0 < self.settle_quantile <= 1:
            raise ValueError(f"spiking settle_quantile must lie in (0, 1], got {self.settle_quantile!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"spiking encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"spiking backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0 <= self.crossover <= 1:
            raise ValueError(f"spiking crossover must be an activity in [0, 1], got {self.crossover!r}")
        if not 0 < self.pool_alpha <= 1:
            raise ValueError(f"spiking pool_alpha must lie in (0, 1], got {self.pool_alpha!r}")
        if not 0 <= self.conv_crossover <= 1:
            raise ValueError(f"spiking conv_crossover must be an activity in [0, 1], got {self.conv_crossover!r}")


class SimState(NamedTuple):
    """Everything that evolves while a spiking network runs (passed explicitly, like Norse's states)."""
    neurons: tuple[NeuronState, ...]
    z: tuple[Tensor, ...]  # spikes of the last step, per layer
    u: tuple[Tensor, ...]  # filtered forward currents W_k z_{k-1}, per synapse (pre-pool)
    f: tuple[Tensor, ...]  # filtered feedback currents into layers 0..N-2
    rho: Tensor  # exponential trace of the last layer's spikes (the rate the nudge sees)
    q: tuple[Tensor, ...] = ()  # pool_alpha < 1: per synapse, the trace of u whose maxima route its max-pool


class Phase(NamedTuple):
    """What a phase leaves: final network state, window rates, counts and (if asked) spike records."""
    state: SimState
    rates: tuple[Tensor, ...]  # per layer, from the spike counts of the last window
    input_rate: Tensor  # x itself for constant current, the Poisson spike rate otherwise
    steps: int
    delta: float  # settle statistic of the last two windows (quantile over samples; nan after one window)
    counts: Counts
    raster: Optional[tuple[Tensor, ...]] = None  # per layer: (steps, record, neurons) spikes, time first


def settle_statistic(rates: tuple[Tensor, ...], prev: tuple[Tensor, ...], window: int, statistic: str = "excess",
                     quantile: float = 1.0) -> Tensor:
    """How far a batch is from its equilibrium after two windows of `window` steps: per sample, the
    largest over layers of a layer statistic of the rate changes dr = r(w) - r(w-1); then the
    `quantile` over samples. Layer statistics: "excess" the mean over neurons of (|dr| - 1 / window)+
    (what exceeds the one-spike flicker of a neuron at equilibrium), "mean" |dr|, "max" |dr|."""
    d = []
    for r, q in zip(rates, prev):
        dr = (r - q).abs().flatten(1)
        if statistic == "excess":
            d.append((dr - 1.0 / window).clamp_(min=0).mean(1))
        else:
            d.append(dr.mean(1) if statistic == "mean" else dr.amax(1))
    per_sample = torch.stack(d).amax(0)  # (B,)
    return per_sample.amax() if quantile >= 1 else torch.quantile(per_sample.double(), quantile)


def poisson_input(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """One step of Bernoulli input spikes with p = x (Norse's poisson_encode_step, f_max dt = 1),
    drawn on the generator's device (a run's CPU generator also drives CUDA runs, reproducibly)."""
    if generator is None or generator.device == x.device:
        return poisson_encode_step(x, f_max=1.0, dt=1.0, generator=generator).to(x.dtype)
    return poisson_encode_step(x.to(generator.device), f_max=1.0, dt=1.0, generator=generator).to(x.device, x.dtype)


class SpikingSimulator:
    """Runs an EqNetwork's weights as a network of spiking neurons (see the module docstring).

    It caches what depends on the weights (the event back end's fan-out tables, built on first use)
    and what depends on the shapes only (fan-out counts). The tables are rebuilt by themselves when a
    weight has changed since they were built (an optimizer step, load_state_dict, any in-place change:
    each parameter's storage and version counter are compared), so nothing needs to be called after a
    step. A change PyTorch does not count (writing through `.data`) needs `invalidate()`.
    """

    def __init__(self, net: EqNetwork, params: SpikingParams = SpikingParams()):
        if not isinstance(params, SpikingParams):
            raise TypeError(f"params must be SpikingParams, got {type(params).__name__}")
        if not net.is_chain:
            skips = [f"{a} -> {b}" for a, b in net.edges if b != a + 1]
            raise ValueError(f"the spiking simulator runs chains of layers only; this network has skip connections "
                             f"({', '.join(skips)}): train it with model.neurons = 'rate', or drop model.skips")
        self.net, self.p = net, params
        self._fan_out: Optional[tuple[Tensor, list[Tensor]]] = None
        self._tables: Optional[Tables] = None
        self._tables_of: Optional[tuple] = None  # the weights' (storage, version) when the tables were built
        # per source layer (input first): the activity below which `auto` sends its spikes as events,
        # conv_crossover for a layer that drives a conv synapse (forward or feedback), else crossover
        syn, n = net.synapses, len(net.synapses)
        self.crossovers = [params.conv_crossover if any(syn[j].by_kernel_slices for j in (k, k + 1) if 0 <= j < n)
                           else params.crossover for k in range(-1, n)]

    @property
    def fan_out(self) -> tuple[Tensor, list[Tensor]]:
        if self._fan_out is None:
            self._fan_out = fan_out(self.net)
        return self._fan_out

    def invalidate(self) -> None:
        """Forget the fan-out tables (needed only after a change PyTorch does not count, through `.data`)."""
        self._tables = None

    def _weights_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.net.parameters())

    def tables(self, input_spikes: bool = False) -> Optional[Tables]:
        """The fan-out tables of the current weights (None for the dense back end); an input table for
        spiking input encodings, or when `input_spikes` (a given input spike train)."""
        if self.p.backend == "dense":
            return None
        key = self._weights_key()
        want_input = input_spikes or self.p.encoding != "current"
        if self._tables is None or key != self._tables_of or (want_input and self._tables[0] is None):
            self._tables = fan_out_tables(self.net, want_input)
            self._tables_of = key
        return self._tables

    def init_state(self, inp: Inputs) -> SimState:
        net = self.net
        b = inp.x.shape[0]
        c = dict(dtype=inp.x.dtype, device=inp.x.device)
        zeros = [torch.zeros(b, *s, **c) for s in net.layer_shapes]
        neurons = tuple(NeuronState(z.clone(), torch.zeros_like(z, dtype=torch.int32)) for z in zeros)
        u = tuple(torch.zeros(b, *syn.current_shape, **c) for syn in net.synapses)
        f = tuple(z.clone() for z in zeros[:-1])
        q = tuple(torch.zeros_like(c) for c in u) if self.p.pool_alpha < 1 else ()
        return SimState(neurons, tuple(zeros), u, f, zeros[-1].clone(), q)

    def _use_events(self, z: Tensor, k: int) -> bool:
        if self.p.backend != "auto":
            return self.p.backend == "event"
        return float(z.count_nonzero()) < self.crossovers[k + 1] * z.numel()

    def _window_events(self, activity: list[float]) -> list[bool]:
        """Back end per source layer (input first) for the next window, from measured activities."""
        if self.p.backend != "auto":
            return [self.p.backend == "event"] * len(activity)
        return [a < c for a, c in zip(activity, self.crossovers)]

    def _send(self, z: Tensor, k: int, tables: Optional[Tables], event: Optional[bool]):
        use = tables is not None and (self._use_events(z, k) if event is None else event)
        return propagate(self.net, z, k, tables[k + 1] if tables is not None else None, use)

    def step(self, inp: Inputs, st: SimState, beta: float = 0.0, x_spikes: Optional[Tensor] = None,
             tables: Optional[Tables] = None, events: Optional[list[bool]] = None) -> SimState:
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
            sent_up[0], _ = self._send(x_spikes, -1, tables, ev[0])
        for k in range(n):
            up, down = self._send(st.z[k], k, tables, ev[k + 1])
            if k + 1 < n:
                sent_up[k + 1] = up
            sent_down[k] = down
        u, q, drive, idx = self._forward_drives(inp, st, sent_up, x_spikes is None)
        f = []
        for k in range(n - 1):
            fb = sent_down[k + 1]
            if fb is None:  # conv synapse: unpool with this step's max-pool indices, then transposed conv
                if tables is not None and (self._use_events(st.z[k + 1], k + 1) if ev[k + 2] is None else ev[k + 2]):
                    fb = syn[k + 1].feedback_events(st.z[k + 1], idx[k + 1])
                else:
                    fb = syn[k + 1].feedback_drive(st.z[k + 1], idx[k + 1])
            f.append(filt(st.f[k], fb))
        current = net.total_drives(drive, f, st.rho, inp.target, beta)
        zs, neurons = [], []
        for k in range(n):
            z, ns = neuron_step(current[k], st.neurons[k], p.neuron)
            zs.append(z)
            neurons.append(ns)
        rho = st.rho + (zs[-1] - st.rho) / p.trace_tau
        return SimState(tuple(neurons), tuple(zs), tuple(u), tuple(f), rho, tuple(q))

    def _forward_drives(self, inp: Inputs, st: SimState, sent_up: list[Optional[Tensor]], constant_input: bool):
        """Each layer's forward drive P(u + b) from its filtered synaptic current u (the new currents
        `sent_up`): (currents, pool traces, drives, max-pool indices). With pool_alpha < 1 a max-pool
        takes u + b at the maxima of the trace q <- q + pool_alpha (u - q) instead of its own."""
        a, pa = self.p.syn_alpha, self.p.pool_alpha
        u, q, drive, idx = [], list(st.q), [], []
        for k, syn in enumerate(self.net.synapses):
            if k == 0 and constant_input:  # constant current: the rate network's own first drive
                u.append(st.u[0])
                drive.append(inp.drive)
                idx.append(None)
                continue
            u.append(sent_up[k] if a == 1.0 else st.u[k] + a * (sent_up[k] - st.u[k]))
            if q:
                q[k] = st.q[k] + pa * (u[k] - st.q[k])
            d, i = syn.drive_from_current(u[k], q[k] if q else None)
            drive.append(d)
            idx.append(i)
        return u, q, drive, idx

    def _check_input_spikes(self, inp: Inputs, input_spikes: Tensor, T: int) -> Tensor:
        check_spikes(input_spikes, "input spike train")
        want = (math.ceil(T / self.p.window) * self.p.window, *inp.x.shape)
        if (input_spikes.dim() != len(want) or tuple(input_spikes.shape[1:]) != want[1:]
                or input_spikes.shape[0] < want[0]):
            raise ValueError(f"input spike train must be time-first with shape (>= {want[0]}, "
                             f"{', '.join(map(str, want[1:]))}), got {tuple(input_spikes.shape)}")
        return input_spikes.to(device=inp.x.device, dtype=inp.x.dtype)

    @torch.no_grad()
    def _check_phase(self, inp: Inputs, T: int, beta: float, input_spikes: Optional[Tensor],
                     record: int) -> tuple[bool, Optional[Tensor]]:
        """run_phase's arguments checked; (Poisson input drawn here?, the checked input spike train)."""
        if not isinstance(T, int) or T <= 0:
            raise ValueError(f"a spiking phase needs a positive step budget, got {T!r}")
        if beta != 0.0 and inp.target is None:
            raise ValueError("a nudged phase (beta != 0) needs labels y")
        poisson = self.p.encoding == "poisson" and input_spikes is None
        if input_spikes is not None:
            input_spikes = self._check_input_spikes(inp, input_spikes, T)
        if record < 0 or int(record) != record:
            raise ValueError(f"record must be a number of samples >= 0, got {record!r}")
        if poisson and (float(inp.x.min()) < 0 or float(inp.x.max()) > 1):
            raise ValueError("Poisson encoding needs inputs in [0, 1] (spike probabilities per step); "
                             "drop data.mean/data.std normalisation or use encoding = 'current'")
        return poisson, input_spikes

    def _window(self, inp: Inputs, st: SimState, beta: float, generator, input_spikes: Optional[Tensor],
                poisson: bool, steps: int, tables, events, raster: Optional[list], record: int):
        """One window of steps: (state after it, spike counts per layer, input spike counts or None)."""
        counts = [torch.zeros_like(z) for z in st.z]
        x_count = torch.zeros_like(inp.x) if poisson or input_spikes is not None else None
        for t in range(self.p.window):
            xs = None
            if poisson:
                xs = poisson_input(inp.x, generator)
            elif input_spikes is not None:
                xs = input_spikes[steps + t]
            if xs is not None:
                x_count += xs
            st = self.step(inp, st, beta, xs, tables, events)
            for k, (c, z) in enumerate(zip(counts, st.z)):
                c += z
                if raster is not None:
                    raster[k].append(z[:record].flatten(1).to(torch.bool))
        return st, counts, x_count

    def run_phase(self, inp: Inputs, state: Optional[SimState], T: int, beta: float = 0.0,
                  generator: Optional[torch.Generator] = None, input_spikes: Optional[Tensor] = None,
                  record: int = 0) -> Phase:
        """Run at most T steps (whole windows) from `state` (rest by default) with nudge beta.

        input_spikes: a time-first input spike train (steps, B, *input shape) of 0/1, e.g. from a
        Norse encoder, used instead of the configured encoding (it must cover the phase).
        record: keep the spikes of the first `record` samples of every step (for rasters).
        """
        p, net = self.p, self.net
        poisson, input_spikes = self._check_phase(inp, T, beta, input_spikes, record)
        spiking_input = poisson or input_spikes is not None
        st = self.init_state(inp) if state is None else state
        n = len(net.synapses)
        tables = self.tables(input_spikes is not None)
        # activity per source layer (input first) decides the back end of each window: the last
        # window's spike counts after the first (no per-step device sync). The first window of a
        # phase from rest goes dense: a silent network says nothing about the activity to come
        activity = [float(input_spikes[0].mean()) if input_spikes is not None else float(inp.x.mean())]
        activity += [float(z.count_nonzero()) / max(z.numel(), 1) if state is not None else 1.0 for z in st.z]
        fo_in, fo = self.fan_out
        spikes = torch.zeros(n, dtype=torch.float64)
        synops = torch.zeros(n, dtype=torch.float64)
        in_spikes = in_synops = 0.0
        n_neurons = sum(z.numel() for z in st.z)  # over the batch
        # a constant current, as a chip could take it: rate-coded spikes with p = x per step (expected
        # spikes and synaptic events per step), or the first layer's drive held as a bias (one write per
        # first-layer neuron for the phase)
        coded_spikes = 0.0 if spiking_input else float(inp.x.sum())
        coded_synops = 0.0 if spiking_input else float((inp.x * fo_in).sum())
        bias_writes = 0.0 if spiking_input else float(st.z[0].numel())
        blocks = max(1, math.ceil(T / p.window))
        prev, delta, steps = None, float("nan"), 0
        raster: list[list[Tensor]] = [[] for _ in range(n)]
        for _ in range(blocks):
            st, counts, x_count = self._window(inp, st, beta, generator, input_spikes, poisson, steps, tables,
                                               self._window_events(activity), raster if record else None, record)
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
                delta = float(settle_statistic(rates, prev, p.window, p.settle_statistic, p.settle_quantile))
                if p.rate_tol > 0 and delta <= p.rate_tol:
                    break
            prev = rates
        input_rate = x_count / p.window if spiking_input else inp.x
        rec = tuple(torch.stack(r) for r in raster) if record else None
        counts = Counts(spikes, synops, in_spikes, in_synops, float(n_neurons * steps), coded_spikes * steps,
                        coded_synops * steps, bias_writes)
        return Phase(st, rates, input_rate, steps, delta, counts, rec)


@torch.no_grad()
def probe_phases(sim: SpikingSimulator, x: Tensor, y: Tensor, T1: int, T2: int, beta: float,
                 record: int = 1, generator: Optional[torch.Generator] = None) -> list[tuple[str, Phase]]:
    """Free, +beta and -beta phases of a probe batch with spike records (for rasters and plots)."""
    inp = sim.net.prepare(x, y)
    free = sim.run_phase(inp, None, T1, 0.0, generator, record=record)
    plus = sim.run_phase(inp, free.state, T2, beta, generator, record=record)
    minus = sim.run_phase(inp, free.state, T2, -beta, generator, record=record)
    return [("free", free), ("+beta", plus), ("-beta", minus)]
