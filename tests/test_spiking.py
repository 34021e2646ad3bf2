"""Spiking EP: neurons, the rate twin, dense vs event back ends, local EP updates, inputs, errors."""

import pytest
import torch
import torch.nn.functional as F
from conftest import batch_for, small_conv, small_mlp
from norse.torch.functional.encode import poisson_encode

from spikeep.training.validation import config_from_dict
from spikeep.config import ConfigError
from spikeep.core.dynamics import free_phase
from spikeep.learning.ep import ep_gradients
from spikeep.spiking.neurons import NeuronParams, NeuronState, neuron_step
from spikeep.spiking.propagation import check_spikes
from spikeep.spiking.rule import spiking_ep_gradients
from spikeep.spiking.simulator import SpikingParams, SpikingSimulator, probe_phases


def run_neuron(current: torch.Tensor, steps: int, p: NeuronParams) -> torch.Tensor:
    st = NeuronState(torch.zeros_like(current), torch.zeros_like(current, dtype=torch.int32))
    count = torch.zeros_like(current)
    for _ in range(steps):
        z, st = neuron_step(current, st, p)
        assert set(z.unique().tolist()) <= {0.0, 1.0}
        assert bool((st.v <= p.theta).all()) and bool((st.v >= p.v_min).all())
        count += z
    return count / steps


@pytest.mark.parametrize("theta", [2.0, 1.0, 0.7])
def test_if_rate_is_clipped_current_over_theta(theta):
    current = torch.linspace(-3, 5, 81, dtype=torch.float64)
    rate = run_neuron(current, 2000, NeuronParams(theta=theta))
    expected = (current / theta).clamp(0, 1)
    assert (rate - expected).abs().max() <= 1.5 / 2000 + 1e-12
    if theta == 2.0:  # the paper's my_hard_sig
        from spikeep.core.activations import get_activation
        assert torch.allclose(expected, get_activation("my_hard_sig").fn(current))


def test_leaky_neuron_is_norses_lif_box_with_subtractive_reset():
    g = torch.Generator().manual_seed(0)
    p = NeuronParams(theta=1.0, leak=0.1, v_min=-50.0)
    ours = NeuronState(torch.zeros(50, dtype=torch.float64), torch.zeros(50, dtype=torch.int32))
    v_ref = torch.zeros(50, dtype=torch.float64)
    for _ in range(100):
        i = torch.rand(50, generator=g, dtype=torch.float64) * 0.5
        z, ours = neuron_step(i, ours, p)
        # the same equation written out: v <- (1 - leak) v + I, spike if v > theta, subtract theta
        v_ref = (1 - 0.1) * v_ref + i
        z_ref = (v_ref > 1.0).double()
        v_ref = (v_ref - z_ref).clamp(-50.0, 1.0)
        assert torch.equal(z, z_ref) and torch.allclose(ours.v, v_ref, atol=1e-12)
    # with a leak the rate of a held current falls below the IF rate
    rate = run_neuron(torch.tensor([0.5], dtype=torch.float64), 500, NeuronParams(theta=1.0, leak=0.2))
    assert float(rate) < 0.5


def test_refractory_period_limits_the_rate():
    rate = run_neuron(torch.tensor([10.0]), 400, NeuronParams(theta=1.0, refractory=3))
    assert abs(float(rate) - 1 / 4) < 1e-2


def equilibrium_gap(net, x, params, T=1600):
    inp = net.prepare(x)
    rates_ref = free_phase(net, inp, 600).state
    ph = SpikingSimulator(net, params).run_phase(inp, None, T)
    return [float((a - b).abs().mean()) for a, b in zip(ph.rates, rates_ref)], ph


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_spiking_rates_match_the_rate_fixed_point_mlp(loss):
    net = small_mlp(loss=loss, hidden=(32, 24), in_shape=(1, 8, 8), n_classes=5, scale=2.0)
    x = 2 * batch_for(net, 16)[0]
    gaps, ph = equilibrium_gap(net, x, SpikingParams(window=400))
    assert max(gaps) <= 0.02, gaps
    assert all(float(r.mean()) > 0.05 for r in ph.rates)  # not a silent network


@pytest.mark.slow
def test_spiking_rates_match_the_rate_fixed_point_conv():
    net = small_conv(pools="ma", hidden=(16,), scale=2.0)
    x = 2 * batch_for(net, 8)[0]
    gaps, ph = equilibrium_gap(net, x, SpikingParams(window=400, syn_alpha=0.5))
    assert max(gaps) <= 0.02, gaps
    assert all(float(r.mean()) > 0.02 for r in ph.rates)


@pytest.mark.parametrize("encoding", ["current", "poisson"])
def test_dense_and_event_back_ends_agree(encoding):
    net = small_mlp(hidden=(40, 30), in_shape=(1, 8, 8), n_classes=5, scale=2.0)
    x, y = batch_for(net, 6)
    inp = net.prepare(x, y)
    out = {}
    for backend in ("dense", "event", "auto"):
        sim = SpikingSimulator(net, SpikingParams(window=30, backend=backend, encoding=encoding, crossover=0.3))
        g = torch.Generator().manual_seed(3)
        free = sim.run_phase(inp, None, 90, 0.0, g, record=6)
        plus = sim.run_phase(inp, free.state, 60, 0.7, g, record=6)
        out[backend] = (free, plus)
    for backend in ("event", "auto"):
        for a, b in zip(out["dense"], out[backend]):
            assert all(torch.equal(r, q) for r, q in zip(a.raster, b.raster))  # identical spikes, every step
            assert torch.equal(a.counts.spikes, b.counts.spikes) and torch.equal(a.counts.synops, b.counts.synops)
            assert a.counts.input_spikes == b.counts.input_spikes
            for u, v in zip(a.state.u + a.state.f + tuple(n.v for n in a.state.neurons),
                            b.state.u + b.state.f + tuple(n.v for n in b.state.neurons)):
                assert torch.allclose(u, v, rtol=0, atol=1e-12)
    free = out["dense"][0]
    assert float(free.counts.spikes.sum()) == sum(float(r.sum()) for r in free.raster)


@pytest.mark.parametrize("pools,strides,paddings", [("mm", (1, 1), (1, 1)), ("aa", (1, 1), (0, 2)),
                                                     ("ai", (2, 1), (1, 0)), ("ia", (1, 2), (2, 1))])
def test_conv_events_are_kernel_slices(pools, strides, paddings):
    """A spike at (c, i, j) adds its kernel slice: the same currents as conv2d / the transposed
    feedback through the pooling, in float64, at 1 %, 10 % and 50 % activity."""

    net = small_conv(pools=pools, strides=strides, paddings=paddings, in_shape=(2, 11, 11), channels=(3, 4))
    g = torch.Generator().manual_seed(0)
    for syn in net.synapses[:2]:
        for p in (0.01, 0.1, 0.5):
            z = (torch.rand(5, *syn.pre_shape, generator=g) < p).double()
            assert torch.allclose(syn.forward_events(z), syn.forward_current(z), rtol=0, atol=1e-12)
            post = (torch.rand(5, *syn.post_shape, generator=g) < p).double()
            idx = syn.pool(syn.forward_current(z))[1]  # this step's max-pool winners
            dense = syn.feedback_drive(post, idx)
            assert torch.allclose(syn.feedback_events(post, idx), dense, rtol=0, atol=1e-12)
    silent = torch.zeros(3, *net.synapses[0].pre_shape, dtype=torch.float64)
    assert torch.equal(net.synapses[0].forward_events(silent), net.synapses[0].forward_current(silent))


@pytest.mark.parametrize("encoding", ["current", "poisson"])
@pytest.mark.parametrize("pools", ["mm", "aa"])
def test_dense_and_event_back_ends_agree_on_convnets(encoding, pools):
    # two conv layers, then a dense hidden layer: conv fan-out both ways and a layer with both kinds
    net = small_conv(pools=pools, hidden=(12,), scale=3.0, in_shape=(1, 10, 10), channels=(4, 5))
    x, y = batch_for(net, 4)
    inp = net.prepare(x, y)
    out = {}
    for backend in ("dense", "event", "auto"):
        sim = SpikingSimulator(net, SpikingParams(window=20, backend=backend, encoding=encoding, crossover=0.3,
                                                  conv_crossover=0.2))
        g = torch.Generator().manual_seed(3)
        free = sim.run_phase(inp, None, 60, 0.0, g, record=4)
        plus = sim.run_phase(inp, free.state, 40, 0.7, g, record=4)
        out[backend] = (free, plus)
    assert float(out["dense"][0].counts.spikes.min()) > 0  # every layer spikes
    for backend in ("event", "auto"):
        for a, b in zip(out["dense"], out[backend]):
            assert all(torch.equal(r, q) for r, q in zip(a.raster, b.raster))  # identical spikes, every step
            assert torch.equal(a.counts.spikes, b.counts.spikes) and torch.equal(a.counts.synops, b.counts.synops)
            for u, v in zip(a.state.u + a.state.f + tuple(n.v for n in a.state.neurons),
                            b.state.u + b.state.f + tuple(n.v for n in b.state.neurons)):
                assert torch.allclose(u, v, rtol=0, atol=1e-12)


def test_synops_are_spikes_times_fan_out():
    net = small_mlp(loss="cross_entropy", hidden=(12, 7), in_shape=(1, 3, 3), n_classes=4, scale=2.0)
    x, _ = batch_for(net, 3)
    ph = SpikingSimulator(net, SpikingParams(window=20)).run_phase(net.prepare(x), None, 40, record=3)
    s0, s1 = (float(r.sum()) for r in ph.raster)
    assert ph.counts.spikes.tolist() == [s0, s1]
    # layer 0 drives 7 neurons forward and 9 inputs... no: the input takes no feedback -> 7;
    # layer 1 drives 12 neurons back and the 4-class readout
    assert ph.counts.synops.tolist() == [s0 * 7, s1 * (12 + 4)]


def test_conv_synops_count_kernel_slice_additions():
    """SynOps of a conv layer's spikes = the synapses its kernel slices reach (forward) plus, through
    an average pooling, those of the 4 routed events (feedback): counted by brute force."""
    from spikeep.spiking.metrics import fan_out

    net = small_conv(pools="ia", paddings=(1, 0), in_shape=(1, 6, 6), channels=(2, 3), hidden=(5,))
    fo_in, fo = fan_out(net)
    c1, c2 = net.synapses[0], net.synapses[1]  # 1x6x6 -> 2x6x6 (no pool) -> 3x4x4 -> avg pool 3x2x2

    def reached(syn, z):  # synapses the kernel slices of the spikes in z reach
        return float(F.conv2d(z, torch.ones_like(syn.weight), None, syn.stride, syn.padding).sum())

    def impulse(shape, c, i, j):
        z = torch.zeros(1, *shape, dtype=torch.float64)
        z[0, c, i, j] = 1
        return z

    for c, i, j in [(0, 0, 0), (0, 2, 3), (0, 5, 5)]:  # the input: forward only
        assert float(fo_in[c, i, j]) == reached(c1, impulse(c1.pre_shape, c, i, j))
    for c, i, j in [(0, 0, 0), (1, 3, 5)]:  # layer 0: forward through c2 (it sends no feedback to the input)
        assert float(fo[0][c, i, j]) == reached(c2, impulse(c2.pre_shape, c, i, j))
    for c, i, j in [(0, 0, 0), (2, 1, 0)]:  # layer 1: 5 dense targets + feedback of 4 routed events through c2
        routed = c2.unpool(impulse(c2.post_shape, c, i, j), None)
        back = F.conv_transpose2d((routed != 0).double(), torch.ones_like(c2.weight), None, c2.stride,
                                  c2.padding, c2.output_padding)
        assert float(fo[1][c, i, j]) == 5 + float(back.sum()) and float(back.sum()) == 4 * 2 * 9


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("estimator", ["symmetric", "one_sided"])
def test_spiking_ep_update_matches_rate_ep_update(loss, estimator):
    net = small_mlp(loss=loss, hidden=(32, 24), in_shape=(1, 8, 8), n_classes=5, scale=2.0)
    x, y = batch_for(net, 16)
    x = 2 * x
    # the one-sided estimate differences two phases whose spikes are not in step: a longer window
    T1, T2, window = (400, 200, 100) if estimator == "symmetric" else (800, 400, 200)
    ep_gradients(net, x, y, estimator, 0.5, T1, T2)
    rate = [p.grad.clone() for p in net.parameters()]
    sim = SpikingSimulator(net, SpikingParams(window=window))
    r = spiking_ep_gradients(sim, x, y, estimator, 0.5, T1, T2)
    cos = [float(F.cosine_similarity(a.flatten(), p.grad.flatten(), 0)) for a, p in zip(rate, net.parameters())]
    assert min(cos) >= 0.9, cos
    assert r.ep.steps == T1 + T2 * (2 if estimator == "symmetric" else 1)
    assert torch.equal(r.ep.logits.argmax(1), net.logits(r.ep.s_free).argmax(1))


def test_random_sign_draws_both_signs_and_trains():
    """12 SGD steps on one batch with spiking random-sign EP: both signs drawn, and every step, whichever
    its sign, lowers the loss at the free equilibrium (measured: each step -0.021 or more, 1.599 ->
    1.133 in all; with the -beta steps' sign flipped those raise it by +0.08 on average)."""
    net = small_mlp(loss="cross_entropy", hidden=(16,), scale=2.0)
    x, y = batch_for(net, 8)
    g = torch.Generator().manual_seed(0)
    sim = SpikingSimulator(net, SpikingParams(window=20))
    opt = torch.optim.SGD(net.parameters(), lr=0.2)

    def loss():
        with torch.no_grad():
            return float(net.loss(free_phase(net, net.prepare(x), 60).state, y).mean())

    first = before = loss()
    changes = {0.5: [], -0.5: []}
    for _ in range(12):
        beta = spiking_ep_gradients(sim, x, y, "random_sign", 0.5, 40, 20, g).ep.beta  # writes .grad
        opt.step()
        after = loss()
        changes[beta].append(after - before)
        before = after
    assert all(changes.values()), changes  # both signs drawn
    assert all(c < -0.005 for cs in changes.values() for c in cs), changes
    assert before < 0.8 * first, (first, before)


@pytest.mark.slow
def test_poisson_input_rates_and_time_first_spike_trains():
    net = small_mlp(hidden=(32, 24), in_shape=(1, 8, 8), n_classes=5, scale=2.0)
    x = batch_for(net, 16)[0]
    inp = net.prepare(x)
    ref = free_phase(net, inp, 600).state
    sim = SpikingSimulator(net, SpikingParams(window=2000, encoding="poisson", syn_alpha=0.2))
    ph = sim.run_phase(inp, None, 2000, generator=torch.Generator().manual_seed(0))
    assert (ph.input_rate - x).abs().mean() < 0.01  # measured input rates are the pixel values
    gaps = [float((a - b).abs().mean()) for a, b in zip(ph.rates, ref)]
    assert max(gaps) <= 0.03, gaps
    # a spike train made by Norse's encoder, time first, gives the same run as the built-in encoder
    train = poisson_encode(x, 60, f_max=1.0, dt=1.0, generator=torch.Generator().manual_seed(5)).double()
    sim = SpikingSimulator(net, SpikingParams(window=20))
    a = sim.run_phase(inp, None, 60, input_spikes=train, record=2)
    assert torch.equal(a.input_rate, train[-20:].mean(0))
    assert a.counts.input_spikes == float(train.sum())
    with pytest.raises(ValueError, match="Poisson encoding needs inputs in \\[0, 1\\]"):
        SpikingSimulator(net, SpikingParams(window=10, encoding="poisson")).run_phase(net.prepare(x * 3), None, 10)


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="theta must be a finite number > 0"):
        SpikingParams(NeuronParams(theta=0.0))
    with pytest.raises(ValueError, match="theta must be a finite number > 0"):
        SpikingParams(NeuronParams(theta=-1.0))
    with pytest.raises(ValueError, match="window must be a positive number of steps"):
        SpikingParams(window=-5)
    with pytest.raises(ValueError, match="backend must be one of"):
        SpikingParams(backend="sparse")
    with pytest.raises(ValueError, match="must hold only 0 and 1"):
        check_spikes(torch.tensor([0.0, 1.0, 0.5]))
    net = small_mlp(hidden=(8,))
    x, y = batch_for(net, 2)
    sim = SpikingSimulator(net, SpikingParams(window=5))
    bad = torch.zeros(10, 2, 1, 6, 6, dtype=torch.float64)
    bad[3, 0, 0, 1, 1] = 2.0
    with pytest.raises(ValueError, match="input spike train must hold only 0 and 1"):
        sim.run_phase(net.prepare(x), None, 10, input_spikes=bad)
    with pytest.raises(ValueError, match="time-first with shape"):
        sim.run_phase(net.prepare(x), None, 10, input_spikes=torch.zeros(4, 2, 1, 6, 6))
    with pytest.raises(ValueError, match="needs labels"):
        sim.run_phase(net.prepare(x), None, 10, beta=0.5)
    with pytest.raises(ValueError, match="positive step budget"):
        sim.run_phase(net.prepare(x), None, 0)
    base = {"model": {"neurons": "spiking", "hidden": [8]}, "train": {"lrs": [0.1, 0.1]}}
    with pytest.raises(ConfigError, match="theta"):
        config_from_dict({**base, "spiking": {"theta": 0.0}})
    with pytest.raises(ConfigError, match="window"):
        config_from_dict({**base, "spiking": {"window": 500}})
    with pytest.raises(ConfigError, match="model.neurons must be 'rate' or 'spiking'"):
        config_from_dict({"model": {"neurons": "lif"}, "train": {"lrs": [0.1, 0.1]}})
    with pytest.raises(ConfigError, match="bptt"):
        config_from_dict({**base, "estimator": {"name": "bptt"}})


def test_settling_ends_a_converged_phase_and_its_rates_are_the_equilibrium():
    net = small_mlp(hidden=(32, 32), in_shape=(1, 8, 8), scale=2.0)  # two hidden layers with feedback
    x, _ = batch_for(net, 16)
    inp = net.prepare(x)
    full = SpikingSimulator(net, SpikingParams(window=50)).run_phase(inp, None, 2000)
    assert full.steps == 2000  # rate_tol = 0: the budget is spent
    early = SpikingSimulator(net, SpikingParams(window=50, rate_tol=0.002)).run_phase(inp, None, 2000)
    assert 100 <= early.steps <= 400 and early.delta <= 0.002
    # the rates it stopped on are the equilibrium: within the one-spike resolution of a window
    for r, q in zip(early.rates, full.rates):
        assert float((r - q).abs().mean()) <= 1 / 50, float((r - q).abs().mean())
    # a phase started from that equilibrium (a nudged phase with beta = 0) ends after two windows
    again = SpikingSimulator(net, SpikingParams(window=50, rate_tol=0.002)).run_phase(inp, early.state, 2000)
    assert again.steps == 100


def test_settling_does_not_end_an_unconverged_phase():
    net = small_mlp(hidden=(32, 32), in_shape=(1, 8, 8), scale=2.0)
    x, _ = batch_for(net, 16)
    inp = net.prepare(x)
    # 40 steps of windows of 10: the deep layers are still rising when the budget ends
    ph = SpikingSimulator(net, SpikingParams(window=10, rate_tol=0.002)).run_phase(inp, None, 40)
    assert ph.steps == 40 and ph.delta > 0.002
    # Poisson input: the rates fluctuate by more than one spike per window and never settle
    noisy = SpikingSimulator(net, SpikingParams(window=20, rate_tol=0.002, encoding="poisson"))
    ph = noisy.run_phase(inp, None, 400, generator=torch.Generator().manual_seed(0))
    assert ph.steps == 400 and ph.delta > 0.002


def test_settle_statistic_per_sample_and_quantile():
    from spikeep.spiking.simulator import settle_statistic

    w = 10
    prev = (torch.zeros(4, 6, dtype=torch.float64),)
    now = prev[0].clone()
    now[0, 0] = 1 / w  # sample 0: one neuron flickers by one spike: settled (excess 0)
    now[1, :] = 3 / w  # sample 1: every neuron moved by three spikes
    assert float(settle_statistic((now,), prev, w, "excess")) == pytest.approx(2 / w)
    assert float(settle_statistic((now,), prev, w, "mean")) == pytest.approx(3 / w)
    assert float(settle_statistic((now,), prev, w, "max")) == pytest.approx(3 / w)
    # three of four samples settled: the median is 0, the 1.0 quantile (every sample) is not
    assert float(settle_statistic((now,), prev, w, "excess", 0.5)) == 0.0
    assert float(settle_statistic((now,), prev, w, "max", 0.25)) == 0.0
    # the worst layer of a sample counts
    two = (now, now[:, :2].clone() * 0)
    assert float(settle_statistic(two, (prev[0], prev[0][:, :2]), w, "excess")) == pytest.approx(2 / w)


def test_settling_options_are_checked():
    with pytest.raises(ValueError, match="settle_statistic"):
        SpikingParams(settle_statistic="median")
    with pytest.raises(ValueError, match="settle_quantile"):
        SpikingParams(settle_quantile=0.0)
    with pytest.raises(ValueError, match="window >= 20"):
        SpikingParams(window=10, syn_alpha=0.05, rate_tol=0.01)
    base = {"model": {"neurons": "spiking"}, "train": {"lrs": [0.1, 0.1]}}
    with pytest.raises(ConfigError, match="settle_statistic"):
        config_from_dict({**base, "spiking": {"settle_statistic": "median"}})


def test_probe_pictures(tmp_path):
    from spikeep.training.plots import plot_rate_convergence, plot_raster

    net = small_mlp(hidden=(16,), scale=2.0)
    x, y = batch_for(net, 3)
    phases = probe_phases(SpikingSimulator(net, SpikingParams(window=20)), x, y, 40, 20, 0.5, record=2)
    assert [n for n, _ in phases] == ["free", "+beta", "-beta"]
    assert phases[0][1].raster[0].shape == (40, 2, 16)
    for f in (plot_raster, plot_rate_convergence):
        path = f(phases, ["dense0", "dense1"], tmp_path / f"{f.__name__}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
