"""Explicit drives and local updates against autograd of Phi (acceptance a), weight layouts."""
import pytest
import torch
import torch.nn as nn

from conftest import batch_for, random_state, small_conv, small_mlp
from spikeep.core.dynamics import free_phase

CASES = [(p, pad, loss) for p in ("m", "a", "i") for pad in (0, 1) for loss in ("mse", "cross_entropy")]


def _max_rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _check_drives(net, x, y, state):
    inp = net.prepare(x, y)
    for beta in (0.0, 0.5, -0.3):
        with torch.no_grad():
            explicit = net.drives(inp, state, beta)
        st = tuple(s.clone().requires_grad_(True) for s in state)
        auto = torch.autograd.grad(net.phi(x, st, beta, y).sum(), st)
        for k, (e, a) in enumerate(zip(explicit, auto)):
            assert e.shape == a.shape
            assert _max_rel(e, a) <= 1e-6, f"layer {k}, beta {beta}: relative error {_max_rel(e, a):.2e}"
        # local updates: batch-mean dPhi/dtheta
        names, params = zip(*net.named_parameters())
        auto_p = torch.autograd.grad(net.phi(x, state, beta, y).mean(), params, allow_unused=True)
        explicit_p = net.dphi_dtheta(inp, state, beta)
        assert list(explicit_p) == list(names)  # gradients travel by parameter name
        for n, p, a in zip(names, params, auto_p):
            e = explicit_p[n]
            a = torch.zeros_like(p) if a is None else a
            assert e.shape == p.shape
            assert float((e - a).abs().max()) <= 1e-6 * max(float(a.abs().max()), 1e-12)


@pytest.mark.parametrize("pool,pad,loss", CASES)
def test_conv_drives_equal_autograd(pool, pad, loss):
    # odd sizes (13 -> 11 or 13 -> 6 -> ...) exercise pooling remainders; stride 2 in the second layer
    net = small_conv(pools=pool * 2, paddings=(pad, pad), loss=loss, hidden=(7,), strides=(1, 2),
                     in_shape=(2, 13, 13))
    x, y = batch_for(net)
    _check_drives(net, x, y, random_state(net, x.shape[0]))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_mlp_drives_equal_autograd(loss):
    net = small_mlp(loss=loss, hidden=(20, 12))
    x, y = batch_for(net)
    _check_drives(net, x, y, random_state(net, x.shape[0]))


def test_paper_convnet_shapes():
    """The CIFAR-10 ConvNet: 32 -> 16 -> 8 -> 4 -> (pad 0) 2 -> 1, readout 512 -> 10."""
    net = small_conv(pools="mmmm", paddings=(1, 1, 1, 0), strides=(1, 1, 1, 1), channels=(8, 8, 8, 8),
                     in_shape=(3, 32, 32), loss="cross_entropy", n_classes=10)
    assert net.layer_shapes == [(8, 16, 16), (8, 8, 8), (8, 4, 4), (8, 1, 1)]
    x, y = batch_for(net, 3)
    _check_drives(net, x, y, random_state(net, 3))


def test_step_is_sigma_of_drive_and_relax_has_no_graph():
    net = small_conv(loss="cross_entropy").float()
    x, y = batch_for(net)
    inp = net.prepare(x.float(), y)
    s = free_phase(net, inp, 5).state
    assert all(not v.requires_grad and v.grad_fn is None for v in s)
    with torch.no_grad():
        new = net.step(inp, s, 0.3)
        want = [net.activation.fn(d) for d in net.drives(inp, s, 0.3)]
    for a, b in zip(new, want):
        torch.testing.assert_close(a, b)
    assert inp.drive.data_ptr() != new[0].data_ptr()  # the constant input drive is never overwritten


def test_weights_use_pytorch_layouts_and_init():
    """Same seed -> the same weights as nn.Conv2d / nn.Linear; loaded into them, same forward drive."""
    net = small_conv(pools="ii", paddings=(1, 0), hidden=(9,), in_shape=(2, 8, 8), seed=3)
    torch.manual_seed(3)
    conv0 = nn.Conv2d(2, 4, 3, 1, 1).double()
    assert torch.equal(conv0.weight, net.synapses[0].weight) and torch.equal(conv0.bias, net.synapses[0].bias)
    lin = nn.Linear(6 * 6 * 6, 9).double()
    lin.load_state_dict({k.split(".")[-1]: v for k, v in net.state_dict().items() if k.startswith("synapses.2.")})
    pre = torch.rand(3, 6, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(lin(pre.flatten(1)), net.synapses[2].forward_drive(pre)[0])
    # init_scale multiplies weights and biases
    scaled = small_conv(pools="ii", paddings=(1, 0), hidden=(9,), in_shape=(2, 8, 8), seed=3, scale=0.5)
    torch.testing.assert_close(scaled.synapses[1].weight, 0.5 * net.synapses[1].weight)
    torch.testing.assert_close(scaled.synapses[1].bias, 0.5 * net.synapses[1].bias)


@pytest.mark.parametrize("name", ["my_hard_sig", "hard_sigmoid", "sigmoid", "tanh", "identity"])
def test_activations_in_place_equal_out_of_place(name):
    from spikeep.core.activations import get_activation

    a = get_activation(name)
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    torch.testing.assert_close(a.fn_(x.clone()), a.fn(x))
    ref = {"my_hard_sig": (x / 2).clamp(0, 1), "hard_sigmoid": x.clamp(0, 1),
           "sigmoid": 1 / (1 + torch.exp(-4 * (x - 0.5))), "tanh": torch.tanh(x), "identity": x}[name]
    torch.testing.assert_close(a.fn(x), ref)


def test_channels_last_is_the_same_math():
    net = small_conv(pools="ma", paddings=(1, 0), loss="cross_entropy", hidden=(7,), in_shape=(2, 13, 13))
    nhwc = small_conv(pools="ma", paddings=(1, 0), loss="cross_entropy", hidden=(7,),
                      in_shape=(2, 13, 13)).use_channels_last()
    x, y = batch_for(net)
    a = free_phase(net, net.prepare(x, y), 20).state
    inp = nhwc.prepare(x, y)
    assert inp.x.is_contiguous(memory_format=torch.channels_last)
    b = free_phase(nhwc, inp, 20).state
    assert b[0].is_contiguous(memory_format=torch.channels_last)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    g, h = net.dphi_dtheta(net.prepare(x, y), a, 0.5), nhwc.dphi_dtheta(inp, b, 0.5)
    assert g.keys() == h.keys()
    for n in g:
        torch.testing.assert_close(g[n], h[n], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_step_compiles_without_graph_breaks():
    """The step is a pure function of (parameters, inputs, state, beta): torch.compile captures it
    whole (fullgraph=True fails on any graph break) and gives the same states."""
    net = small_conv(loss="cross_entropy").float()
    x, y = batch_for(net, 8)
    with torch.no_grad():
        inp = net.prepare(x.float(), y)
        s = free_phase(net, inp, 3).state
        compiled = torch.compile(net.step, fullgraph=True)
        for a, b in zip(compiled(inp, s, 0.5), net.step(inp, s, 0.5)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make", [lambda: small_conv(pools="ma", paddings=(1, 0), loss="cross_entropy", hidden=(7,)),
                                  lambda: small_conv(pools="mi", loss="mse"), lambda: small_mlp(hidden=(9, 7))])
def test_delta_of_local_updates_is_the_difference_float64(make):
    """dphi_dtheta_delta (states differenced before they are correlated) equals the plain difference of
    the two local updates, every parameter, with each phase's own max-pool indices."""
    net = make()
    x, y = batch_for(net)
    inp = net.prepare(x, y)
    a, b = random_state(net, 5, seed=3), random_state(net, 5, seed=4)
    for ba, bb in ((0.3, -0.3), (0.0, 0.5)):
        d = net.dphi_dtheta_delta(inp, a, ba, inp, b, bb)
        ga, gb = net.dphi_dtheta(inp, a, ba), net.dphi_dtheta(inp, b, bb)
        assert d.keys() == ga.keys()
        for n in d:
            torch.testing.assert_close(d[n], ga[n] - gb[n], rtol=1e-10, atol=1e-13)
    other = inp._replace(x=torch.rand_like(inp.x))  # spiking phases bring their own input rates
    d = net.dphi_dtheta_delta(inp, a, 0.3, other, b, -0.3)
    ga, gb = net.dphi_dtheta(inp, a, 0.3), net.dphi_dtheta(other, b, -0.3)
    for n in d:
        torch.testing.assert_close(d[n], ga[n] - gb[n], rtol=1e-10, atol=1e-13)


def test_max_pool_tie_rule_is_the_first_maximum_in_any_layout():
    from spikeep.core.pooling import (max_pool_2x2, max_pool_2x2_explicit, max_unpool_2x2,
                                           max_unpool_2x2_explicit)

    z = torch.tensor([[1.0, 1.0, 0.0, 2.0, 5.0], [1.0, 1.0, 2.0, 2.0, 5.0], [0.0, 3.0, 4.0, 4.0, 5.0],
                      [3.0, 3.0, 4.0, 1.0, 5.0]], dtype=torch.float64).expand(2, 3, 4, 5).contiguous()
    g = torch.Generator().manual_seed(0)
    ties = torch.randint(0, 3, (4, 6, 9, 11), generator=g).double()  # values from {0, 1, 2}: ties everywhere
    for t in (z, z.contiguous(memory_format=torch.channels_last), ties, ties.contiguous(memory_format=torch.channels_last)):
        v, k = max_pool_2x2_explicit(t)
        assert v.is_contiguous(memory_format=torch.channels_last) == (not t.is_contiguous())
        torch.testing.assert_close(v, torch.nn.functional.max_pool2d(t, 2, 2), rtol=0, atol=0)
        if t.shape == z.shape:
            assert k[0, 0].tolist() == [[0, 1], [1, 0]]  # ties: top-left, top-right, ... the first wins
        # PyTorch's CPU kernels keep the first maximum too (what max_pool_2x2 relies on for speed)
        fv, fi = max_pool_2x2(t)
        hw = t.shape[2:]
        up, fup = max_unpool_2x2_explicit(v, k, hw), max_unpool_2x2(fv, fi, hw)
        torch.testing.assert_close(up, fup, rtol=0, atol=0)
        assert int((up != 0).sum()) == int((v != 0).sum())
    # under autograd the gradient reaches the winner alone, as the unpooling routes the feedback
    t = ties.clone().requires_grad_(True)
    v, k = max_pool_2x2_explicit(t)
    (grad,) = torch.autograd.grad((v * 1.5).sum(), t)
    torch.testing.assert_close(grad, max_unpool_2x2_explicit(torch.full_like(v, 1.5), k, t.shape[2:]))


def test_layouts_settle_to_the_same_state_with_tied_pools(monkeypatch):
    """A padding-0 ConvNet from rest: after one step layer 2 is driven by its bias alone, flat, so every
    pool window of conv 3 is tied, and s_3's feedback goes where the tie rule says. NCHW and NHWC follow
    the same trajectory (float64); another tie rule (the last maximum) does not, so ties matter here."""
    import spikeep.core.fused as fused
    import spikeep.core.pooling as pooling

    kw = dict(pools="mmm", paddings=(0, 0, 0), strides=(1, 1, 1), channels=(4, 6, 8), loss="cross_entropy",
              hidden=(), in_shape=(2, 30, 30), scale=2.0)
    net, nhwc = small_conv(**kw), small_conv(**kw).use_channels_last()
    x, y = batch_for(net)
    a = free_phase(net, net.prepare(x, y), 60).state
    b = free_phase(nhwc, nhwc.prepare(x, y), 60).state
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-13, atol=1e-13)
    def last_maximum(z):  # windows reversed (every map here has even sides): the last maximum wins
        v, k = pooling.max_pool_2x2_explicit(z.flip(-1).flip(-2))
        return v.flip(-1).flip(-2), (3 - k).flip(-1).flip(-2)

    monkeypatch.setattr(fused, "max_pool_2x2", last_maximum)  # the layer update's pooling kernel
    c = free_phase(net, net.prepare(x, y), 60).state
    assert max(float((u - w).abs().max()) for u, w in zip(a, c)) > 0.05
