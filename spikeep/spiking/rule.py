"""The local learning rule of spiking EP: each synapse differences the products of its two neurons'
spike rates between phases, with the very estimators of the rate network (spikeep.learning.estimators:
symmetric Eq. 12, one-sided Eq. 4, random-sign), and the estimate goes into .grad."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..learning.ep import EPResult
from ..learning.estimators import (Equilibria, Grads, check_estimator, estimate, finish, needs_minus, nudge_beta,
                                  write_grads)
from .metrics import Counts
from .simulator import Phase, SpikingSimulator

Tensor = torch.Tensor


class SpikingEPResult(NamedTuple):
    ep: EPResult  # s_free holds the free-phase rates
    counts: Counts  # all phases of the batch
    free_counts: Counts  # the free phase alone (= one inference)


def spiking_ep_gradients(sim: SpikingSimulator, x: Tensor, y: Tensor, estimator: str = "symmetric",
                         beta: float = 0.5, T1: int = 200, T2: int = 100,
                         generator: Optional[torch.Generator] = None,
                         poisson_generator: Optional[torch.Generator] = None,
                         kp_leak: float = 0.0) -> SpikingEPResult:
    """Free phase, nudged phase(s) from the free network state, and the local spike-rate estimate
    written into .grad (same sign convention as the rate network's). `generator` draws the random
    sign, `poisson_generator` (default: `generator`) the Poisson input spikes."""
    check_estimator(estimator, beta)
    net = sim.net
    pg = poisson_generator if poisson_generator is not None else generator
    with torch.no_grad():
        inp = net.prepare(x, y)
        free = sim.run_phase(inp, None, T1, 0.0, pg)
        beta = nudge_beta(estimator, beta, generator)
        plus = sim.run_phase(inp, free.state, T2, beta, pg)
        minus = sim.run_phase(inp, free.state, T2, -beta, pg) if needs_minus(estimator) else None

        def delta(a: Phase, beta_a: float, b: Phase, beta_b: float) -> Grads:
            # rates of each synapse's two layers (the input's for the first: x itself for constant current)
            return net.dphi_dtheta_delta(inp._replace(x=a.input_rate), a.rates, beta_a,
                                         inp._replace(x=b.input_rate), b.rates, beta_b)

        g = estimate(estimator, delta, Equilibria(free, plus, minus, beta))
        write_grads(net, finish(estimator, g, net, kp_leak))
        counts, steps = free.counts + plus.counts, free.steps + plus.steps
        if minus is not None:
            counts, steps = counts + minus.counts, steps + minus.steps
        ep = EPResult(free.rates, net.loss(free.rates, inp.y), net.logits(free.rates), steps, beta, free.steps,
                      1 if minus is None else 2)
        return SpikingEPResult(ep, counts, free.counts)
