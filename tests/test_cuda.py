"""The same code on CUDA: explicit drives equal autograd there, and CUDA agrees with CPU.
Skipped cleanly where no GPU is present (CI has none). Each test states the precision it checks:
float64, or float32 with TF32 off (dynamics.precision = "strict"; cuDNN would use TF32 by default)."""
import copy

import pytest
import torch

from conftest import batch_for, small_conv
from spikeep.core.dynamics import free_phase
from spikeep.learning.ep import ep_gradients
from spikeep.training.checkpoint_files import load_checkpoint

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
    """Strict float32 (TF32 off for matmuls and cuDNN) against the CPU, estimate by estimate."""
    from spikeep.training.torch_settings import set_precision

    set_precision("strict")
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


def test_cuda_max_pool_tie_rule_and_layouts_match_cpu():
    """Off the CPU the explicit tie rule runs: same values, same winners and the same unpooling as the
    CPU kernels, in both memory formats; a tie-heavy ConvNet settles the same in NCHW and NHWC."""
    from conftest import small_conv
    from spikeep.core.pooling import max_pool_2x2, max_unpool_2x2

    g = torch.Generator().manual_seed(0)
    ties = torch.randint(0, 3, (4, 6, 9, 11), generator=g).double()
    for t in (ties, ties.contiguous(memory_format=torch.channels_last)):
        v, i = max_pool_2x2(t)
        vc, ic = max_pool_2x2(t.cuda())
        assert torch.equal(vc.cpu(), v)
        assert torch.equal(max_unpool_2x2(vc, ic, t.shape[2:]).cpu(), max_unpool_2x2(v, i, t.shape[2:]))
    kw = dict(pools="mmm", paddings=(0, 0, 0), strides=(1, 1, 1), channels=(4, 6, 8), loss="cross_entropy",
              hidden=(), in_shape=(2, 30, 30), scale=2.0)
    net, nhwc = small_conv(**kw).cuda(), small_conv(**kw).cuda().use_channels_last()
    x, y = batch_for(net)
    a = free_phase(net, net.prepare(x.cuda(), y.cuda()), 60).state
    b = free_phase(nhwc, nhwc.prepare(x.cuda(), y.cuda()), 60).state
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_cuda_training_resumes_bitwise_in_deterministic_mode(tmp_path, monkeypatch):
    """20 iterations on CUDA with train.deterministic = true, interrupted after 7 and resumed: the same
    weights as without the interruption, bit for bit."""
    import spikeep.training.trainer as tr
    from conftest import REPO, crash_at_update
    from spikeep.training.validation import load_config

    over = ['dynamics.device="cuda"', "train.deterministic=true", "data.subset=500", "model.hidden=[64]",
            "train.batch_size=25", "dynamics.T1=15", "dynamics.T2=5", "train.checkpoint_every=3", "train.epochs=1",
            "estimator.name=random_sign", "data.crop_padding=2", "data.hflip=true"]
    cfg = load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", over)
    try:
        tr.train(cfg, tmp_path / "a", progress=False, echo=False)
        restore = crash_at_update(monkeypatch, 7)
        with pytest.raises(KeyboardInterrupt):
            tr.train(cfg, tmp_path / "b", progress=False, echo=False)
        restore()
        tr.train(run_dir=tmp_path / "b", resume=True, progress=False, echo=False)
    finally:
        torch.use_deterministic_algorithms(False)
    wa = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cuda_triton_engine_equals_reference_and_graphs_equal_eager():
    """The Triton layer updates on the GPU (float64: to rounding) and CUDA-graph blocks (bitwise
    the same kernels replayed) against the reference drives; batched +-beta EP against sequential."""
    from spikeep.core.relaxer import Relaxer, RelaxSettings

    net = small_conv(pools="ma", paddings=(1, 0), loss="cross_entropy", hidden=(9,)).cuda()
    x, y = batch_for(net, 6)
    xc, yc = x.cuda(), y.cuda()
    inp = net.prepare(xc, yc)
    s = free_phase(net, inp, 7).state
    with torch.no_grad():
        for cl in (False, True):
            net.use_channels_last(cl)
            st = tuple(net._layout(t) for t in s)
            for beta in (0.0, 0.5):
                ref = tuple(net.activation.fn(d) for d in net.drives(inp, st, beta))
                got = Relaxer(RelaxSettings(kernels="triton")).step(net, inp, st, beta)
                assert max(float((a - b).abs().max()) for a, b in zip(ref, got)) <= 1e-12
        eng = Relaxer(RelaxSettings(kernels="triton", graphs=True))
        plain = Relaxer(RelaxSettings(kernels="triton", graphs=False))
        for _ in range(2):  # capture, then replay
            g = eng.run_block(net, inp, s, 0.3, 9)
        p = plain.run_block(net, inp, s, 0.3, 9)
        assert all(torch.equal(a, b) for a, b in zip(g.state, p.state))
    ref = copy.deepcopy(net)
    ep_gradients(net, xc, yc, "symmetric", 0.5, 30, 8,
                 relaxer=Relaxer(RelaxSettings(kernels="triton", graphs=True, batch_phases=True)))
    ep_gradients(ref, xc, yc, "symmetric", 0.5, 30, 8)
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-13)


def test_cuda_incremental_float32_accurate():
    """bf16_incremental on the GPU: the free equilibrium within float32 rounding of float64's."""
    from spikeep.core.relaxer import Relaxer, RelaxSettings

    net = small_conv(pools="mm", loss="cross_entropy", channels=(8, 12), in_shape=(3, 12, 12)).cuda()
    x, y = batch_for(net, 8)
    exact = free_phase(net, net.prepare(x.cuda(), y.cuda()), 300, tol=1e-14).state
    net.float()
    rx = Relaxer(RelaxSettings(kernels="triton", precision="bf16_incremental", recompute_every=20))
    s = free_phase(net, net.prepare(x.float().cuda(), y.cuda()), 300, relaxer=rx).state
    assert max(float((a.double() - b).abs().max()) for a, b in zip(s, exact)) < 1e-5
