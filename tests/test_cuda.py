"""The same code on CUDA: explicit drives equal autograd there, and CUDA agrees with CPU.
Skipped cleanly where no GPU is present (CI has none)."""
import pytest
import torch

from conftest import batch_for, small_conv
from spikeep.dynamics import free_phase
from spikeep.estimators import ep_gradients

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_drives_equal_autograd_and_cpu():
    net = small_conv(pools="ma", paddings=(1, 0), loss="cross_entropy", hidden=(9,))
    x, y = batch_for(net, 6)
    cuda = small_conv(pools="ma", paddings=(1, 0), loss="cross_entropy", hidden=(9,)).cuda()
    xc, yc = x.cuda(), y.cuda()
    s_cpu = free_phase(net, net.prepare(x, y), 30).state
    inp = cuda.prepare(xc, yc)
    s = free_phase(cuda, inp, 30).state
    for a, b in zip(s, s_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        explicit = cuda.drives(inp, s, 0.5)
    st = tuple(v.clone().requires_grad_(True) for v in s)
    auto = torch.autograd.grad(cuda.phi(xc, st, 0.5, yc).sum(), st)
    for e, a in zip(explicit, auto):
        assert float((e - a).abs().max() / a.abs().max()) <= 1e-6


def test_cuda_ep_step_matches_cpu_float32():
    net = small_conv(loss="cross_entropy").float()
    cuda = small_conv(loss="cross_entropy").float().cuda()
    x, y = batch_for(net, 8)
    ep_gradients(net, x.float(), y, "symmetric", 0.5, 20, 5)
    ep_gradients(cuda, x.float().cuda(), y.cuda(), "symmetric", 0.5, 20, 5)
    for p, q in zip(net.parameters(), cuda.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-3, atol=1e-5)
