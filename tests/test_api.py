"""The Python API (`import spikeep`; README "Python API"): a light import, configs by name, a run folder
loaded as a classifier, relax / EP helpers, a training loop of one's own with torch.optim and a
DataLoader (no hidden calls), and the example script that shows it."""
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, batch_for, small_mlp
from spikeep.config import ConfigError

TINY = ["train.epochs=1", "data.subset=200", "model.hidden=[32]", "train.batch_size=20", "train.checkpoint_every=0"]


def _python(code_or_args, cwd, timeout=300):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_import_is_light_quiet_and_exports_the_api(tmp_path):
    r = _python("import sys, spikeep; print(sorted(m for m in ('torch', 'norse', 'numpy') if m in sys.modules)); "
                "print(all(callable(getattr(spikeep, n)) for n in ('load_config', 'build_network', 'learner', "
                "'load_data', 'relax', 'ep_estimate', 'Model', 'load', 'evaluate', 'train', 'configs')))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[]\nTrue\n" and r.stderr == ""  # nothing heavy imported, nothing printed
    import spikeep

    assert {"load_config", "train", "load", "Model"} <= set(dir(spikeep))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        spikeep.nothing_here  # noqa: B018


def test_load_config_by_name_or_path_with_overrides():
    import spikeep

    by_name = spikeep.load_config("quickstart", ["train.epochs=2"])
    by_path = spikeep.load_config(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml", ["train.epochs=2"])
    assert by_name == by_path and by_name.train.epochs == 2 and by_name.name == "quickstart"
    assert spikeep.load_config("quickstart.toml").name == "quickstart"
    assert "quickstart" in spikeep.configs() and "cifar10_paper" in spikeep.configs()
    with pytest.raises(ConfigError, match="no_such_config is neither a file nor the name of a shipped"):
        spikeep.load_config("no_such_config")


def test_a_run_folder_loads_as_a_model_whose_call_gives_class_scores(tmp_path):
    import spikeep

    r = spikeep.train(spikeep.load_config("quickstart", TINY), tmp_path / "run", echo=False)
    model = spikeep.load(r.run_dir)
    assert isinstance(model, torch.nn.Module) and model.cfg.run_id and model.net.n_classes == 10
    data = spikeep.load_data(model.cfg)
    scores = model(data.test.x[:7])
    assert scores.shape == (7, 10) and scores.dtype == torch.float32 and not scores.requires_grad
    ev = spikeep.evaluate(r.run_dir)
    acc = 100.0 * float((model.predict(data.test.x) == data.test.y).float().mean())
    assert acc == pytest.approx(ev["test_acc"])  # the best epoch's weights, as evaluate reads them
    last = spikeep.load(r.run_dir, weights="last")
    assert torch.equal(last(data.test.x[:7]), scores)  # one epoch: best is last
    with pytest.raises(ValueError, match="weights must be 'best' or 'last'"):
        spikeep.load(r.run_dir, weights="final")


def test_relax_and_ep_estimate_on_a_network():
    import spikeep
    from spikeep.core.dynamics import free_phase

    net = small_mlp(loss="cross_entropy")
    x, y = batch_for(net)
    rel = spikeep.relax(net, x, 30)
    ref = free_phase(net, net.prepare(x), 30)
    assert rel.steps == 30 and all(torch.equal(a, b) for a, b in zip(rel.state, ref.state))
    nudged = spikeep.relax(net, x, 5, y=y, beta=0.5, state=rel.state)
    assert nudged.steps == 5 and not torch.equal(nudged.state[-1], rel.state[-1])
    for p in net.parameters():
        p.grad = None
    r = spikeep.ep_estimate(net, x, y, "symmetric", beta=0.5, T1=30, T2=5)
    assert r.loss.shape == (x.shape[0],) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_a_spiking_learner_needs_no_call_after_an_optimizer_step():
    """The event back end keeps fan-out tables built from the weights: after opt.step() the next estimate
    must use the new weights (before, a script had to call the undocumented learner.weights_changed())."""
    from spikeep.training.learners import SpikingEP
    from spikeep.spiking.simulator import SpikingParams

    net = small_mlp(loss="cross_entropy", hidden=(12, 10))
    x, y = batch_for(net, n=4)
    params = SpikingParams(window=10, backend="event")
    learner = SpikingEP(net, params, "symmetric", 0.5, 60, 30)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    opt.zero_grad()
    learner.estimate(x, y)
    opt.step()
    opt.zero_grad()
    learner.estimate(x, y)  # after the step, no other call
    after_step = [p.grad.clone() for p in net.parameters()]
    opt.zero_grad()
    SpikingEP(net, params, "symmetric", 0.5, 60, 30).estimate(x, y)  # a fresh learner on the same weights
    assert all(torch.equal(a, p.grad) for a, p in zip(after_step, net.parameters()))


def test_example_script_trains_from_python(tmp_path):
    """examples/train_from_python.py, as the README runs it, from an empty folder (the quick-start data
    ships inside the package)."""
    r = _python([str(REPO / "examples" / "train_from_python.py"), "--iterations", "200"], tmp_path)
    assert r.returncode == 0, r.stderr
    m = re.search(r"test accuracy after 200 iterations: ([\d.]+)%", r.stdout)
    assert m and float(m.group(1)) > 80, r.stdout
    assert list(tmp_path.iterdir()) == []  # it writes nothing


def readme_python_examples() -> list[str]:
    """The ```python blocks of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readmes_python_examples_run_from_an_empty_folder(tmp_path):
    blocks = readme_python_examples()
    assert len(blocks) == 2
    for i, code in enumerate(blocks):
        r = _python(code, tmp_path)
        assert r.returncode == 0, f"block {i}:\n{code}\n{r.stderr}"
        assert r.stdout.strip(), f"block {i} printed nothing"
    assert (tmp_path / "runs" / "quick" / "best.pt").is_file()
