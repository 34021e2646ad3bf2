"""EP estimators against BPTT (acceptance b) and their bookkeeping."""
import math

import pytest
import torch

from conftest import batch_for, small_conv, small_mlp
from spikeep.learning.bptt import bptt_gradients
from spikeep.core.dynamics import free_phase, nudged_phase
from spikeep.learning.ep import ep_gradients
from spikeep.core.interactions import UniDense
from spikeep.learning.estimators import one_sided_estimate, symmetric_estimate, write_grads

BETAS = (0.4, 0.2, 0.1, 0.05)


def _flat(gs):
    return torch.cat([g.flatten() for g in gs.values()])


def _delta(net, inp):
    return lambda a, ba, b, bb: net.dphi_dtheta_delta(inp, a, ba, inp, b, bb)


def one_sided(net, inp, s_free, s_beta, beta):
    return one_sided_estimate(_delta(net, inp), s_free, s_beta, beta)


def symmetric(net, inp, s_plus, s_minus, beta):
    return symmetric_estimate(_delta(net, inp), s_plus, s_minus, beta)


def _slope(betas, errors):
    lx = [math.log(b) for b in betas]
    ly = [math.log(e) for e in errors]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _converged_net(loss, pools):
    # smooth dynamics (steep sigmoid, which is invertible): the fixed point is a stationary point of
    # an energy, so EP -> BPTT as beta -> 0 with the orders the theory gives
    net = small_conv(pools=pools, paddings=(1,), loss=loss, activation="sigmoid", hidden=(16,),
                     in_shape=(1, 8, 8), channels=(4,), strides=(1,), n_classes=4, seed=1)
    return net


@pytest.mark.parametrize("loss,pools", [("cross_entropy", "a"), ("cross_entropy", "m"), ("mse", "a")])
def test_ep_converges_to_bptt_with_beta(loss, pools):
    net = _converged_net(loss, pools)
    x, y = batch_for(net, 8)
    inp = net.prepare(x, y)
    T = 400
    free = free_phase(net, inp, T, tol=1e-14)
    assert free.delta < 1e-14, "free phase did not converge"
    _, g_bptt = bptt_gradients(net, x, y, T, write=False)
    ref = _flat(g_bptt)
    one, sym = [], []
    for beta in BETAS + (0.01,):
        sp = nudged_phase(net, inp, free.state, T, beta).state
        sm = nudged_phase(net, inp, free.state, T, -beta).state
        o = one_sided(net, inp, free.state, sp, beta)
        s = symmetric(net, inp, sp, sm, beta)
        one.append(float((_flat(o) - ref).norm() / ref.norm()))
        sym.append(float((_flat(s) - ref).norm() / ref.norm()))
        if beta == 0.01:
            for name in g_bptt:
                a, b = s[name], g_bptt[name]
                cos = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
                assert cos >= 0.999, f"{name}: cosine {cos:.5f} with BPTT at beta = 0.01"
    s_one, s_sym = _slope(BETAS, one[:4]), _slope(BETAS, sym[:4])
    assert 0.7 <= s_one <= 1.3, f"one-sided error slope {s_one:.2f} (errors {one})"
    assert s_sym >= 1.7, f"symmetric error slope {s_sym:.2f} (errors {sym})"
    assert sym[-1] < one[-1]


def test_paper_activation_symmetric_matches_bptt():
    """With my_hard_sig (the paper's dynamics) the symmetric estimate at small beta matches BPTT."""
    net = small_conv(pools="m", paddings=(1,), loss="cross_entropy", hidden=(16,), in_shape=(1, 8, 8),
                     channels=(4,), strides=(1,), n_classes=4, seed=1)
    x, y = batch_for(net, 8)
    inp = net.prepare(x, y)
    free = free_phase(net, inp, 300, tol=1e-14)
    _, g_bptt = bptt_gradients(net, x, y, 300, write=False)
    beta = 0.01
    sp = nudged_phase(net, inp, free.state, 300, beta).state
    sm = nudged_phase(net, inp, free.state, 300, -beta).state
    est = symmetric(net, inp, sp, sm, beta)
    assert est.keys() == g_bptt.keys()
    for a, b in zip(est.values(), g_bptt.values()):
        assert float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) >= 0.999


def test_symmetric_is_mean_of_two_one_sided():
    net = small_mlp()
    x, y = batch_for(net)
    inp = net.prepare(x, y)
    s0 = free_phase(net, inp, 50).state
    sp, sm = nudged_phase(net, inp, s0, 20, 0.3).state, nudged_phase(net, inp, s0, 20, -0.3).state
    sym = symmetric(net, inp, sp, sm, 0.3)
    plus, minus = one_sided(net, inp, s0, sp, 0.3), one_sided(net, inp, s0, sm, -0.3)
    assert sym.keys() == plus.keys() == {n for n, _ in net.named_parameters()}
    for n in sym:
        torch.testing.assert_close(sym[n], (plus[n] + minus[n]) / 2)


@pytest.mark.parametrize("estimator", ["one_sided", "random_sign", "symmetric"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_grad_is_loss_gradient_and_descends(estimator, loss):
    """The estimate lands in .grad with the loss's sign: a small SGD step lowers the loss."""
    net = small_mlp(loss=loss, hidden=(32,), in_shape=(1, 8, 8))
    x, y = batch_for(net, 32)
    g = torch.Generator().manual_seed(0)
    r = ep_gradients(net, x, y, estimator, 0.1, T1=60, T2=60, generator=g)
    before = float(r.loss.mean())
    assert all(p.grad is not None and p.grad.shape == p.shape for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    opt.step()
    with torch.no_grad():
        after = float(net.loss(free_phase(net, net.prepare(x, y), 60).state, y).mean())
    assert after < before


def test_random_sign_draws_both_signs_reproducibly():
    net = small_mlp()
    x, y = batch_for(net)
    signs = []
    for seed in (0, 0, 1, 2, 3, 4, 5, 6):
        g = torch.Generator().manual_seed(seed)
        signs.append(ep_gradients(net, x, y, "random_sign", 0.2, 10, 5, generator=g).beta)
    assert signs[0] == signs[1]  # same seed, same sign
    assert {math.copysign(1, s) for s in signs} == {1.0, -1.0}
    assert all(abs(s) == 0.2 for s in signs)


def test_bptt_truncation_and_grads_match_autograd_of_loss():
    net = small_conv(loss="cross_entropy")
    x, y = batch_for(net)
    r, g = bptt_gradients(net, x, y, T=12, truncate=4)
    assert all(torch.equal(p.grad, g[n]) for n, p in net.named_parameters())
    r_full, g_full = bptt_gradients(net, x, y, T=12, write=False)
    torch.testing.assert_close(r.loss, r_full.loss)  # same forward
    assert any(not torch.allclose(g[n], g_full[n]) for n in g)  # truncation changes the gradient


def _truncated_by_detach(net, x, y, T, K):
    """dL(s_T)/dtheta through the last K of T free steps, by autograd: all T steps unrolled through
    net.step, the state cut from the graph after T - K of them (written here, apart from bptt.py)."""
    params = dict(net.named_parameters())
    with torch.enable_grad():
        inp = net.prepare(x, y)
        s = net.init_state(x.shape[0])
        for t in range(T):
            if t == T - K:
                s = tuple(v.detach() for v in s)
            s = net.step(inp, s, 0.0)
        loss = net.loss(s, inp.y).mean()
        g = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if gi is None else gi for (n, p), gi in zip(params.items(), g)}


@pytest.mark.parametrize("truncate", [1, 2, 4, 11, 12, 20, 0])
def test_bptt_truncation_equals_autograd_through_the_last_steps_only(truncate):
    """bptt_gradients(T, truncate=K) against an independent computation for each K (0: none, and
    K >= T: all T steps); neighbouring K give different gradients, so an off-by-one fails."""
    net = small_conv(loss="cross_entropy", hidden=(7,))
    x, y = batch_for(net)
    T = 12
    K = T if truncate <= 0 else min(truncate, T)
    _, g = bptt_gradients(net, x, y, T=T, truncate=truncate, write=False)
    ref = _truncated_by_detach(net, x, y, T, K)
    assert g.keys() == ref.keys()
    for n in g:
        torch.testing.assert_close(g[n], ref[n], rtol=1e-9, atol=1e-12, msg=lambda m: f"{n}: {m}")
    if K < T - 1:  # one step more reaches further back: a different gradient (from the first step,
        # which starts at zeros, one step more changes nothing)
        other = _truncated_by_detach(net, x, y, T, K + 1)
        assert any(not torch.allclose(other[n], ref[n], rtol=1e-6, atol=1e-12) for n in ref)


def test_tolerance_ends_a_phase_early():
    net = small_mlp()
    x, y = batch_for(net)
    inp = net.prepare(x, y)
    full = free_phase(net, inp, 500)
    early = free_phase(net, inp, 500, tol=1e-6)
    assert early.steps < 500 and early.delta < 1e-6
    for a, b in zip(early.state, full.state):
        assert float((a - b).abs().max()) < 1e-4


def test_a_new_interaction_kind_needs_no_change_elsewhere():
    net = small_mlp(hidden=(12, 9), in_shape=(1, 5, 5), n_classes=4)
    x, y = batch_for(net, 6)
    ep_gradients(net, x, y, "symmetric", 0.2, 40, 20)
    ref = {n: p.grad.clone() for n, p in net.named_parameters()}
    own = UniDense((12,), 9).double()  # a kind with feedback weights of its own (section 2.4)
    with torch.no_grad():
        own.weight.copy_(net.synapses[1].weight)
        own.bias.copy_(net.synapses[1].bias)
        own.weight_b.copy_(net.synapses[1].weight)
    net.synapses[1] = own
    ep_gradients(net, x, y, "symmetric", 0.2, 40, 20)  # tied feedback weights: the same estimate
    got = {n: p.grad for n, p in net.named_parameters()}
    assert set(got) == set(ref) | {"synapses.1.weight_b"}
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got["synapses.1.weight_b"], ref["synapses.1.weight"], rtol=1e-12, atol=1e-14)
    # the feedback drive goes through weight_b, not weight
    inp = net.prepare(x, y)
    s = free_phase(net, inp, 5).state
    with torch.no_grad():
        own.weight_b.mul_(-1)
        d = net.drives(inp, s)
    torch.testing.assert_close(d[0], inp.drive + s[1] @ own.weight_b)
    with pytest.raises(ValueError, match="missing \\['synapses.1.weight_b'\\]"):
        write_grads(net, {n: g for n, g in got.items() if n != "synapses.1.weight_b"})
