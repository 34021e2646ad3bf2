"""The local learning rule of spiking EP: each synapse differences the products of its two neurons'
spike rates between phases, with the very estimators of the rate network (spikeep.learning.estimators:
symmetric Eq. 12, one-sided Eq. 4, random-sign), and the estimate goes into .grad."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..core.network import Inputs, State
from ..learning.ep import EPResult, ep_result, ep_step
from ..learning.estimators import Grads
from .metrics import Counts
from .simulator import Phase, SpikingSimulator

Tensor = torch.Tensor


class SpikingEPResult(NamedTuple):
    ep: EPResult  # s_free holds the free-phase rates
    counts: Counts  # all phases of the batch
    free_counts: Counts  # the free phase alone (= one inference)


class SpikingRelaxation:
    """The spiking network as EP's minimiser: phases of the simulator (T1 / T2 steps, whole windows),
    each nudged phase from the free phase's network state; differences on spike rates."""

    def __init__(self, sim: SpikingSimulator, T1: int, T2: int, poisson_generator: Optional[torch.Generator]):
        self.sim, self.T1, self.T2, self.pg = sim, T1, T2, poisson_generator

    def free_phase(self, inp: Inputs) -> Phase:
        return self.sim.run_phase(inp, None, self.T1, 0.0, self.pg)

    def nudged_phases(self, inp: Inputs, free: Phase, beta: float, minus: bool):
        plus = self.sim.run_phase(inp, free.state, self.T2, beta, self.pg)
        return plus, (self.sim.run_phase(inp, free.state, self.T2, -beta, self.pg) if minus else None)

    def delta(self, inp: Inputs, a: Phase, beta_a: float, b: Phase, beta_b: float) -> Grads:
        # rates of each synapse's two layers (the input's for the first: x itself for constant current)
        return self.sim.net.dphi_dtheta_delta(inp._replace(x=a.input_rate), a.rates, beta_a,
                                              inp._replace(x=b.input_rate), b.rates, beta_b)

    def equilibrium(self, phase: Phase) -> State:
        return phase.rates


def spiking_ep_gradients(sim: SpikingSimulator, x: Tensor, y: Tensor, estimator: str = "symmetric",
                         beta: float = 0.5, T1: int = 200, T2: int = 100,
                         generator: Optional[torch.Generator] = None,
                         poisson_generator: Optional[torch.Generator] = None,
                         kp_leak: float = 0.0) -> SpikingEPResult:
    """Free phase, nudged phase(s) from the free network state, and the local spike-rate estimate
    written into .grad (same sign convention as the rate network's): learning.ep.ep_step with the
    SpikingRelaxation. `generator` draws the random sign, `poisson_generator` (default: `generator`)
    the Poisson input spikes."""
    net = sim.net
    pg = poisson_generator if poisson_generator is not None else generator
    with torch.no_grad():
        inp = net.prepare(x, y)
        ph = ep_step(SpikingRelaxation(sim, T1, T2, pg), net, inp, estimator, beta, generator, kp_leak)
        counts = ph.free.counts + ph.plus.counts
        if ph.minus is not None:
            counts = counts + ph.minus.counts
        ep = ep_result(ph, net.loss(ph.free.rates, inp.y), net.logits(ph.free.rates), ph.free.rates)
        return SpikingEPResult(ep, counts, ph.free.counts)
