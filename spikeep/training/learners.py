"""Learners: one per method, each behind the same call, `estimate(x, y) -> StepResult`, which writes
the gradient estimate of the batch into .grad (an optimizer step follows in the trainer).

    RateEP      free and nudged phases of the rate dynamics, an EP estimator (Laborieux et al. 2021)
    SpikingEP   the same three phases as spiking neurons (it owns its simulator), local rule on rates
    BPTT        backpropagation through the free phase (the baseline)

Each also gives the free equilibrium of a batch (`free_equilibrium`, for evaluation and probes) and
keeps the random generators in step when a process has no sample of a batch (`skip`). Nothing needs
to be called after an optimizer step: what a learner derives from the weights (the spiking
simulator's fan-out tables) notices a change by itself; `weights_changed()` is for changes PyTorch
does not count (writes through `.data`).

A training loop of one's own (see examples/train_from_python.py):

    learner = make_learner(cfg, net)
    for x, y in loader:
        opt.zero_grad()
        learner.estimate(x, y)      # the gradient estimate of the batch, in .grad
        opt.step()
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..core.dynamics import Settling, free_phase
from ..core.relaxer import EAGER, Relaxer
from ..core.network import EqNetwork, State
from ..learning.bptt import bptt_gradients
from ..learning.ep import ep_gradients
from ..learning.estimators import nudge_beta
from ..spiking.rule import spiking_ep_gradients
from ..spiking.metrics import ChipEvents
from ..spiking.simulator import SpikingParams, SpikingSimulator

Tensor = torch.Tensor


class StepResult(NamedTuple):
    loss: Tensor  # per-sample loss at the free equilibrium
    logits: Tensor
    state: State  # free equilibrium (spike rates for spiking networks)
    spikes: float = 0.0  # spiking networks: spikes of all phases of the batch
    synops: float = 0.0  # and their synaptic events (input spikes' included)
    steps: int = 0  # relaxation (simulation) steps of all phases of the batch
    free_steps: int = 0  # of which the free phase ran these
    nudged_phases: int = 0  # how many nudged phases shared the rest (0: none, BPTT)
    events: Optional[ChipEvents] = None  # spiking networks: the events a chip pays for, all phases of the batch


class FreeEquilibrium(NamedTuple):
    state: State  # free equilibrium (spike rates for spiking networks)
    spikes: float = float("nan")  # spiking networks: spikes and synaptic events of the free phase
    synops: float = float("nan")
    steps: int = 0  # steps the free phase ran
    events: Optional[ChipEvents] = None  # spiking networks: the events a chip pays for in the free phase


class WarmStarts:
    """Where the free phase of a training batch starts (dynamics.warm_start):

    "none"            zeros (the paper);
    "previous_batch"  the free equilibrium of the batch before (its first rows if this one is larger: zeros);
    "per_sample"      each training sample's own last free equilibrium (zeros until it has one), kept on
                      the device in bfloat16, n_train x (neurons per sample) x 2 bytes (the paper ConvNet
                      on CIFAR-10: 5.8 GB), and saved in checkpoints so a resumed run starts where it was.
    """

    def __init__(self, mode: str, net: EqNetwork, n_train: int):
        self.mode, self.net, self.n_train = mode, net, n_train
        self.last: Optional[State] = None
        self.store: Optional[list[Tensor]] = None

    def start(self, index: Optional[Tensor], batch: int) -> Optional[State]:
        if self.mode == "previous_batch" and self.last is not None and self.last[0].shape[0] >= batch:
            return tuple(s[:batch].clone() for s in self.last)
        if self.mode == "per_sample" and self.store is not None and index is not None:
            dtype = self.net.synapses[0].weight.dtype
            return tuple(self.net._layout(t[index].to(dtype)) for t in self.store)
        return None

    def keep(self, index: Optional[Tensor], state: State) -> None:
        if self.mode == "previous_batch":
            self.last = tuple(s.detach() for s in state)
        elif self.mode == "per_sample" and index is not None:
            if self.store is None:
                self.store = [torch.zeros(self.n_train, *s.shape[1:], dtype=torch.bfloat16, device=s.device)
                              for s in state]
            for t, s in zip(self.store, state):
                t[index] = s.detach().to(torch.bfloat16)

    def state_dict(self) -> dict:
        if self.mode == "per_sample":
            return {"mode": self.mode, "store": [t.cpu() for t in self.store] if self.store is not None else None}
        return {"mode": self.mode, "last": [t.cpu() for t in self.last] if self.last is not None else None}

    def load_state_dict(self, d: dict) -> None:
        if d.get("mode") != self.mode:
            raise ValueError(f"the checkpoint's warm starts are {d.get('mode')!r}, the config's {self.mode!r}")
        dev = self.net.synapses[0].weight.device
        if self.mode == "per_sample":
            st = d.get("store")
            if st is not None and (len(st) != len(self.net.layer_shapes) or st[0].shape[0] != self.n_train):
                raise ValueError("the checkpoint's per-sample states do not fit this network and data set")
            self.store = [t.to(dev) for t in st] if st is not None else None
        else:
            last = d.get("last")
            self.last = tuple(self.net._layout(t.to(dev)) for t in last) if last is not None else None


class Learner:
    """The interface the trainer talks to."""
    net: EqNetwork

    def estimate(self, x: Tensor, y: Tensor, generator: Optional[torch.Generator] = None,
                 device_generator: Optional[torch.Generator] = None, mask: Optional[Tensor] = None,
                 index: Optional[Tensor] = None) -> StepResult:
        """Write the batch's gradient estimate into .grad. `generator` (CPU) draws per-batch numbers
        such as random signs; `device_generator` (the run's device) draws per-step ones such as
        Poisson input spikes (default: `generator`); `mask` is the batch's dropout mask
        (EqNetwork.draw_mask; the trainer draws it for the global batch); `index`: the samples'
        positions in the training set (per-sample warm starts)."""
        raise NotImplementedError

    def free_equilibrium(self, x: Tensor, generator: Optional[torch.Generator] = None) -> FreeEquilibrium:
        raise NotImplementedError

    def skip(self, generator: Optional[torch.Generator] = None) -> None:
        """This process has no sample of the batch: draw what estimate would have drawn."""

    def weights_changed(self) -> None:
        """Not needed after optimizer steps, load_state_dict or other in-place changes (they are noticed);
        only after writes through `.data`, which PyTorch does not count: drop what was derived from
        the weights."""

    def state_dict(self) -> dict:
        """What the learner carries from batch to batch beyond the weights (checkpointed)."""
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


class _RateNetwork(Learner):
    """Learners of the rate dynamics: predictions come from T1 free steps (early stop at `tol`), run by
    the learner's relaxer (core.relaxer)."""
    T1: int
    tol: float
    tol_every: int = 1
    settling: Optional[Settling] = None
    relaxer: Relaxer = EAGER

    @torch.no_grad()
    def free_equilibrium(self, x, generator=None) -> FreeEquilibrium:
        r = free_phase(self.net, self.net.prepare(x), self.T1, tol=self.tol, every=self.tol_every,
                       settling=self.settling, relaxer=self.relaxer)
        return FreeEquilibrium(r.state, steps=r.steps)


class RateEP(_RateNetwork):
    """Rate EP. With `settling` (dynamics.stop = "relative") phases end by core.dynamics.Settling; the
    free phases (training and evaluation) measure themselves against the last batch's nudged phases'
    gaps, which the learner keeps (and checkpoints: state_dict)."""

    def __init__(self, net: EqNetwork, estimator: str, beta: float, T1: int, T2: int, tol: float = 0.0,
                 tol_every: int = 1, kp_leak: float = 0.0, warm: Optional[WarmStarts] = None,
                 settling: Optional[Settling] = None, relaxer: Relaxer = EAGER):
        self.net, self.estimator, self.beta, self.T1, self.T2 = net, estimator, beta, T1, T2
        self.tol, self.tol_every, self.kp_leak, self.warm, self.settling = tol, tol_every, kp_leak, warm, settling
        self.relaxer = relaxer

    def estimate(self, x, y, generator=None, device_generator=None, mask=None, index=None) -> StepResult:
        start = self.warm.start(index, x.shape[0]) if self.warm is not None else None
        r = ep_gradients(self.net, x, y, self.estimator, self.beta, self.T1, self.T2, self.tol, generator,
                         state=start, tol_every=self.tol_every, kp_leak=self.kp_leak, mask=mask,
                         settling=self.settling, relaxer=self.relaxer)
        if self.settling is not None and r.gaps is not None:
            self.settling = self.settling.with_gaps(r.gaps)
        if self.warm is not None:
            self.warm.keep(index, r.s_free)
        return StepResult(r.loss, r.logits, r.s_free, steps=r.steps, free_steps=r.free_steps,
                          nudged_phases=r.nudged_phases)

    def skip(self, generator=None) -> None:
        nudge_beta(self.estimator, self.beta, generator)

    def state_dict(self) -> dict:
        gaps = self.settling.gaps if self.settling is not None else None
        return {"phase_gaps": gaps.cpu() if gaps is not None else None}

    def load_state_dict(self, d: dict) -> None:
        gaps = d.get("phase_gaps")
        if self.settling is not None:
            dev = self.net.synapses[0].weight.device
            self.settling = self.settling.with_gaps(gaps.to(dev) if gaps is not None else None)


class BPTT(_RateNetwork):
    """Backpropagation through the last `truncate` of the T1 free steps (0: all of them)."""

    def __init__(self, net: EqNetwork, T1: int, truncate: int = 0, tol: float = 0.0, tol_every: int = 1,
                 relaxer: Relaxer = EAGER):
        self.net, self.T1, self.truncate, self.tol, self.tol_every = net, T1, truncate, tol, tol_every
        self.relaxer = relaxer  # evaluation's free phases (the gradient unrolls the eager step)

    def estimate(self, x, y, generator=None, device_generator=None, mask=None, index=None) -> StepResult:
        r, _ = bptt_gradients(self.net, x, y, self.T1, self.truncate, mask=mask)
        return StepResult(r.loss, r.logits, r.s_last, steps=self.T1, free_steps=self.T1)


class SpikingEP(Learner):
    """Spiking EP; owns one SpikingSimulator for the network, reused across batches and evaluations."""

    def __init__(self, net: EqNetwork, params: SpikingParams, estimator: str, beta: float, T1: int, T2: int,
                 kp_leak: float = 0.0):
        self.net, self.estimator, self.beta, self.T1, self.T2, self.kp_leak = net, estimator, beta, T1, T2, kp_leak
        self.sim = SpikingSimulator(net, params)

    def estimate(self, x, y, generator=None, device_generator=None, mask=None, index=None) -> StepResult:
        r = spiking_ep_gradients(self.sim, x, y, self.estimator, self.beta, self.T1, self.T2, generator,
                                 device_generator, self.kp_leak)
        spikes, synops = r.counts.totals()
        return StepResult(r.ep.loss, r.ep.logits, r.ep.s_free, spikes, synops, r.ep.steps, r.ep.free_steps,
                          r.ep.nudged_phases, r.counts.events())

    @torch.no_grad()
    def free_equilibrium(self, x, generator=None) -> FreeEquilibrium:
        ph = self.sim.run_phase(self.net.prepare(x), None, self.T1, 0.0, generator)
        return FreeEquilibrium(ph.rates, *ph.counts.totals(), ph.steps, ph.counts.events())

    def skip(self, generator=None) -> None:
        nudge_beta(self.estimator, self.beta, generator)

    def weights_changed(self) -> None:
        self.sim.invalidate()
