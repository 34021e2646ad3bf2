"""Max-pool routing in the spiking twin (spiking.pool_alpha; issue 30, item 2).

A max-pool of a spiking layer's synaptic current u = W z takes the largest of four noisy currents each
step, and the mean of a maximum exceeds the maximum of the means: the layers behind a max-pool fire above
the rate network's fixed point (measured on the CPU CIFAR-10 ConvNet: +0.008 and +0.005 in the mean
rates of its second and third layers, analysis/results/cifar10_twin/). With pool_alpha < 1 the winners
of each 2x2 pooling window are the maxima of a trace q <- q + pool_alpha (u - q) and the pool passes this step's u
at those winners, whose mean is W r there: the bias goes.
"""
import pytest
import torch
from conftest import batch_for, small_conv

from spikeep.config import ConfigError
from spikeep.core.dynamics import free_phase
from spikeep.core.pooling import max_pool_2x2, max_pool_2x2_explicit, take_2x2
from spikeep.spiking.simulator import SpikingParams, SpikingSimulator
from spikeep.training.validation import config_from_dict, spiking_params


def test_take_2x2_reads_another_maps_winners_in_both_index_formats():
    g = torch.Generator().manual_seed(0)
    z, r = torch.randn(2, 3, 7, 6, generator=g), torch.randn(2, 3, 7, 6, generator=g)
    for pool in (max_pool_2x2, max_pool_2x2_explicit):
        m, own = pool(z)
        assert torch.equal(take_2x2(z, own), m)  # routed by its own winners: the max-pool itself
    cpu, explicit = take_2x2(z, max_pool_2x2(r)[1]), take_2x2(z, max_pool_2x2_explicit(r)[1])
    assert torch.equal(cpu, explicit)
    # by definition: z at the position of r's maximum in each 2x2 window (odd row dropped)
    win = r[:, :, :6].unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 3, 3, 3, 4).argmax(-1, keepdim=True)
    want = z[:, :, :6].unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 3, 3, 3, 4).gather(-1, win)[..., 0]
    assert torch.equal(cpu, want)
    last = z.contiguous(memory_format=torch.channels_last), r.contiguous(memory_format=torch.channels_last)
    assert torch.equal(take_2x2(last[0], max_pool_2x2(last[1])[1]), cpu)


def test_a_conv_drive_routed_by_its_own_current_is_the_plain_drive():
    net = small_conv(pools="ma")
    u = torch.randn(3, *net.synapses[1].current_shape, dtype=torch.float64)
    for syn in net.synapses:
        u = torch.randn(3, *syn.current_shape, dtype=torch.float64)
        d, i = syn.drive_from_current(u)
        d2, i2 = syn.drive_from_current(u, route=u.clone())
        assert torch.allclose(d, d2, rtol=0, atol=1e-15) and (i is None) == (i2 is None)
        if i is not None:
            assert torch.equal(i, i2)


def rate_gaps(pool_alpha: float):
    net = small_conv(pools="mm", hidden=(16,), scale=2.0)
    x = 2 * batch_for(net, 8)[0]
    inp = net.prepare(x)
    ref = free_phase(net, inp, 600).state
    ph = SpikingSimulator(net, SpikingParams(window=400, pool_alpha=pool_alpha)).run_phase(inp, None, 800)
    return [float((a - b).mean()) for a, b in zip(ph.rates, ref)], [float((a - b).abs().mean()) for a, b in
                                                                      zip(ph.rates, ref)], ph


def test_max_pool_routed_by_a_trace_removes_the_rate_bias():
    """syn_alpha = 1 (no synaptic filter): routed by each step's own current, the second conv layer (the
    first behind a max-pool of spike-driven currents) fires 0.022 above the fixed point on average
    (measured); routed by a trace with pool_alpha 0.1, every layer is within 0.002 on average
    (measured 0.0016 at most) and 0.004 in mean absolute difference (measured 0.0038 at most)."""
    biased, _, ph = rate_gaps(1.0)
    assert ph.state.q == ()  # the default keeps no trace
    assert biased[1] > 0.015, biased
    mean, mean_abs, ph = rate_gaps(0.1)
    assert len(ph.state.q) == 4 and all(float(r.mean()) > 0.02 for r in ph.rates)
    assert max(abs(m) for m in mean) <= 0.003 and max(mean_abs) <= 0.005, (mean, mean_abs)


def test_dense_and_event_back_ends_agree_with_trace_routing():
    net = small_conv(pools="mm", hidden=(12,), scale=3.0, in_shape=(1, 10, 10), channels=(4, 5))
    x, y = batch_for(net, 4)
    inp = net.prepare(x, y)
    out = {}
    for backend in ("dense", "event"):
        sim = SpikingSimulator(net, SpikingParams(window=20, backend=backend, pool_alpha=0.2))
        free = sim.run_phase(inp, None, 60, record=4)
        out[backend] = (free, sim.run_phase(inp, free.state, 40, 0.7, record=4))
    assert float(out["dense"][0].counts.spikes.min()) > 0
    for a, b in zip(out["dense"], out["event"]):
        assert all(torch.equal(r, q) for r, q in zip(a.raster, b.raster))
        for u, v in zip(a.state.q + a.state.u, b.state.q + b.state.u):
            assert torch.allclose(u, v, rtol=0, atol=1e-12)


def test_pool_alpha_is_a_spiking_key_and_bad_values_are_refused():
    cfg = config_from_dict({"model": {"neurons": "spiking"}, "spiking": {"pool_alpha": 0.1}})
    assert spiking_params(cfg.spiking).pool_alpha == 0.1
    assert spiking_params(config_from_dict({}).spiking).pool_alpha == 1.0  # the default: unchanged behaviour
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="pool_alpha"):
            SpikingParams(pool_alpha=bad)
        with pytest.raises(ConfigError, match="pool_alpha"):
            config_from_dict({"model": {"neurons": "spiking"}, "spiking": {"pool_alpha": bad}})
