"""The same code on CUDA: explicit drives equal autograd there, and CUDA agrees with CPU.
Skipped cleanly where no GPU is present (CI has none)."""
import pytest
import torch

from conftest import batch_for, small_conv
from spikeep.core.dynamics import free_phase
from spikeep.learning.ep import ep_gradients

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


def test_cuda_spiking_back_ends_and_local_update_match_cpu():
    """Spiking twin on CUDA (float64): dense and event back ends give the same spikes as on CPU,
    Poisson input from a CPU generator, and the local EP update equals the CPU one."""
    from conftest import small_mlp
    from spikeep.spiking.rule import spiking_ep_gradients
    from spikeep.spiking.simulator import SpikingParams, SpikingSimulator

    net = small_mlp(hidden=(20, 12), in_shape=(1, 6, 6), scale=2.0)
    cuda = small_mlp(hidden=(20, 12), in_shape=(1, 6, 6), scale=2.0).cuda()
    x, y = batch_for(net, 6)
    rasters = []
    for m, dev in ((net, "cpu"), (cuda, "cuda")):
        for backend in ("dense", "event"):
            sim = SpikingSimulator(m, SpikingParams(window=20, backend=backend, encoding="poisson"))
            g = torch.Generator().manual_seed(1)
            ph = sim.run_phase(m.prepare(x.to(dev), y.to(dev)), None, 60, 0.0, g, record=6)
            rasters.append([r.cpu() for r in ph.raster])
    for r in rasters[1:]:
        assert all(torch.equal(a, b) for a, b in zip(rasters[0], r))
    g_cpu = torch.Generator().manual_seed(2)
    g_cuda = torch.Generator().manual_seed(2)
    spiking_ep_gradients(SpikingSimulator(net, SpikingParams(window=20)), x, y, "symmetric", 0.5, 60, 40, g_cpu)
    spiking_ep_gradients(SpikingSimulator(cuda, SpikingParams(window=20)), x.cuda(), y.cuda(), "symmetric", 0.5,
                         60, 40, g_cuda)
    for p, q in zip(net.parameters(), cuda.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-9, atol=1e-12)
