"""Precision of the EP estimate (GPU issue, acceptance a): the symmetric estimate computed in float32
stays within 1 % of float64 in every layer of the paper's ConvNet on real CIFAR-10 images, because the
phases' states are differenced before they are correlated (the naive difference of correlations is
several % off in the first layer). float64 is taken at the float32 run's own equilibrium: the network
has several fixed points, and which one a float32 free phase from zeros lands on depends on the last
bits of the convolution library (with torch 2.15 the same as float64's, with 2.14.1 another one)."""
import os
from pathlib import Path

import pytest
import torch

from conftest import REPO
from spikeep.training.validation import load_config
from spikeep.core.dynamics import free_phase, nudged_phase
from spikeep.core.network import EqNetwork
from spikeep.data import load_cifar10, normalize
from spikeep.learning.estimators import symmetric_estimate

CIFAR = Path(os.environ["SPIKEEP_DATA"]) / "cifar10" / "cifar10.npz"


def _estimates(net, x, y, T1=60, T2=15, beta=0.5, start=None, tol=0.0):
    with torch.no_grad():
        inp = net.prepare(x, y)
        s0 = free_phase(net, inp, T1, start, tol=tol).state
        sp, sm = nudged_phase(net, inp, s0, T2, beta).state, nudged_phase(net, inp, s0, T2, -beta).state
        gp, gm = net.dphi_dtheta(inp, sp, beta), net.dphi_dtheta(inp, sm, -beta)
        naive = {k: (gm[k] - gp[k]) / (2 * beta) for k in gp}
        delta = symmetric_estimate(lambda a, ba, b, bb: net.dphi_dtheta_delta(inp, a, ba, inp, b, bb), sp, sm, beta)
    return naive, delta, s0


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_file(), reason="CIFAR-10 npz not found under $SPIKEEP_DATA")
def test_float32_symmetric_estimate_within_one_percent_of_float64_paper_convnet():
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "cifar10_ep_symmetric_ce.toml")
    test = normalize(load_cifar10(npz=str(CIFAR)).test, cfg.data.mean, cfg.data.std)
    x, y = test.x[:8], test.y[:8]
    torch.manual_seed(0)
    net32 = EqNetwork(cfg.model)
    net64 = EqNetwork(cfg.model).double()
    net64.load_state_dict({k: v.double() for k, v in net32.state_dict().items()})
    naive, delta, s32 = _estimates(net32, x, y)
    # float64 at the same equilibrium: its free phase polishes the float32 free state to 1e-13
    _, ref, s64 = _estimates(net64, x.double(), y, T1=2000, start=tuple(t.double() for t in s32), tol=1e-13)
    assert max(float((a.double() - b).abs().max()) for a, b in zip(s32, s64)) < 1e-5  # the same fixed point
    errors, naive_errors = {}, {}
    for layer, names in net32.layer_parameters().items():
        for n in names:
            r = ref[n].flatten()
            errors[n] = float((delta[n].double().flatten() - r).norm() / r.norm())
            naive_errors[n] = float((naive[n].double().flatten() - r).norm() / r.norm())
    assert max(errors.values()) < 0.01, errors
    # the check can fail: the naive difference misses the first layer's estimate by several %
    assert naive_errors["synapses.0.weight"] > 2 * errors["synapses.0.weight"], (naive_errors, errors)
