"""HDF5 weight traces (issue 4): round trip, kill -9, resume without gaps or duplicates, a reader
while training writes, errors, and the layout read by h5py alone."""
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, kill_when
from spikeep import traces
from spikeep.cli import main
from spikeep.traces import LayerSpec, TraceRecorder, TracesError

TRAIN = [sys.executable, "-m", "spikeep.cli", "train", "--no-progress"]
TRACED = ["--set", "data.subset=500", "--set", "model.hidden=[48]", "--set", "train.batch_size=25",
          "--set", "dynamics.T1=20", "--set", "dynamics.T2=6", "--set", "train.epochs=3",
          "--set", "train.checkpoint_every=3", "--set", "traces.enabled=true", "--set", "traces.sample=40",
          "--set", "traces.flush_every=2", "--set", "traces.full_every=7", "--set", "traces.probe=4"]
QUICK = str(REPO / "spikeep" / "config" / "shipped" / "quickstart.toml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _specs():
    return [LayerSpec("a", "dense", (3, 4), (3,), np.array([0, 5, 11]), (3,)),
            LayerSpec("b", "conv", (2, 1, 2, 2), (2,), np.array([1, 7]), None)]


def _fake_step(g):
    return ({"a": torch.randn(3, 4, generator=g), "b": torch.randn(2, 1, 2, 2, generator=g)},
            {"a": torch.randn(3, 4, generator=g), "b": torch.randn(2, 1, 2, 2, generator=g)})


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip"])
def test_round_trip_is_exact(tmp_path, compression):
    g = torch.Generator().manual_seed(0)
    rec = TraceRecorder(tmp_path / "t.h5", _specs(), attrs={"config": "{\"x\": 1}", "seed": 7},
                        compression=compression, flush_every=3, chunk=4)
    w_prev, _ = _fake_step(g)
    written = []
    for it in range(1, 11):
        before = rec.sample(w_prev)
        w, grad = _fake_step(g)
        rec.record(it, 1 + it // 6, w, before, grad)
        written.append((w, grad, w_prev))
        if it % 5 == 0:
            rec.snapshot(it, 1 + it // 6, w, {"a": torch.ones(3) * it, "b": torch.zeros(2)},
                         {"a": torch.full((4, 3), float(it))} if False else None)
        w_prev = w
    rec.close()
    with traces.open(tmp_path / "t.h5") as t:
        assert t.layers == ["a", "b"] and t.config == {"x": 1} and t.attrs["seed"] == 7
        assert t.iteration.tolist() == list(range(1, 11))
        assert t.epoch.tolist() == [1 + i // 6 for i in range(1, 11)]
        assert t.snapshot_iteration.tolist() == [5, 10]
        for name in ("a", "b"):
            lt = t[name]
            idx = lt.sample_index
            for k, (w, grad, wp) in enumerate(written):
                want = w[name].reshape(-1)[idx].numpy()
                assert np.array_equal(lt.sample_weight[k], want)
                assert np.array_equal(lt.sample_grad[k], grad[name].reshape(-1)[idx].numpy())
                assert np.array_equal(lt.sample_delta[k], want - wp[name].reshape(-1)[idx].numpy())
                s = lt.summary_columns()
                wf = w[name].reshape(-1)
                assert s["norm"][k] == pytest.approx(float(wf.norm()), rel=1e-6)
                assert s["min"][k] == float(wf.min()) and s["max"][k] == float(wf.max())
            assert np.array_equal(lt.weight[1], written[9][0][name].numpy())
            assert torch.equal(lt.torch("weight", 0), written[4][0][name])
        assert np.array_equal(t["a"].bias[:, 0], [5.0, 10.0])


def test_bad_paths_and_unknown_layers(tmp_path, capsys):
    with pytest.raises(TracesError, match="no trace file at"):
        traces.open(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(TracesError, match="not a readable HDF5 trace file"):
        traces.open(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(TracesError, match="not a spikeep trace file"):
        traces.open(tmp_path / "other.h5")
    rec = TraceRecorder(tmp_path / "t.h5", _specs(), attrs={})
    rec.close()
    with traces.open(tmp_path / "t.h5") as t, pytest.raises(TracesError, match=r"no layer 'c'; layers: a, b"):
        t["c"]
    assert main(["traces", "export", str(tmp_path / "t.h5"), "--layer", "c"]) == 2
    assert "no layer 'c'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="gzip level must be 1..4"):
        TraceRecorder(tmp_path / "u.h5", _specs(), attrs={}, compression="gzip", gzip_level=9)


def _rows(path):
    try:
        with traces.open(path) as t:
            return t.n_rows()
    except (TracesError, OSError, KeyError):
        return 0


@pytest.mark.slow
def test_kill_resume_reader_and_cli(tmp_path):
    """One traced run, killed with kill -9 twice and resumed; a reader follows it while it writes.
    The killed file opens and holds what was flushed; the resumed file has every iteration exactly
    once and equals, bit for bit, the traces of an uninterrupted run."""
    ref = tmp_path / "ref"
    assert subprocess.run(TRAIN + [QUICK, "--run-dir", str(ref)] + TRACED, cwd=REPO, env=ENV).returncode == 0
    run = tmp_path / "run"
    h5 = run / "traces.h5"
    p = subprocess.Popen(TRAIN + [QUICK, "--run-dir", str(run)] + TRACED, cwd=REPO, env=ENV)
    seen = []

    def reader_sees_enough():  # a concurrent reader: rows only ever grow, and each row is complete
        n = _rows(h5)
        if n:
            with traces.open(h5) as t:
                it = t.iteration
                assert len(t["dense0"].sample_weight) >= len(it) and it.tolist() == list(range(1, len(it) + 1))
        seen.append(n)
        return n >= 25

    assert kill_when(p, reader_sees_enough), "run ended before it was killed"
    assert seen == sorted(seen) and seen[-1] >= 25
    with traces.open(h5) as t:  # opens after kill -9, holds what was flushed (flush_every = 2)
        n_killed = t.n_rows()
        assert n_killed >= 24 and t.iteration.tolist() == list(range(1, n_killed + 1))
        assert len(t.snapshot_iteration) >= 3
    p = subprocess.Popen(TRAIN + ["--resume", str(run)], cwd=REPO, env=ENV)
    assert kill_when(p, lambda: _rows(h5) >= 45), "the resumed run ended before its kill (two kills are the test)"
    assert subprocess.run(TRAIN + ["--resume", str(run)], cwd=REPO, env=ENV).returncode == 0
    with traces.open(ref / "traces.h5") as a, traces.open(h5) as b:
        assert b.iteration.tolist() == list(range(1, 61)) == a.iteration.tolist()
        assert b.snapshot_iteration.tolist() == a.snapshot_iteration.tolist()
        for name in a.layers:
            for item in ("sample_weight", "sample_delta", "sample_grad", "summary", "weight", "bias"):
                assert np.array_equal(getattr(a[name], item)[:], getattr(b[name], item)[:]), (name, item)
        assert np.array_equal(a.file["probe/dense0"][:], b.file["probe/dense0"][:])
    # the CLI reads it too
    assert main(["traces", "info", str(h5)]) == 0
    out = tmp_path / "d.csv"
    assert main(["traces", "export", str(h5), "--layer", "dense0", "--format", "csv", "--out", str(out)]) == 0
    data = np.loadtxt(out, delimiter=",", skiprows=1)
    assert data.shape == (60, 2 + 5 + 3 * 40) and data[:, 0].tolist() == list(range(1, 61))
    assert main(["traces", "export", str(h5), "--layer", "readout", "--format", "npz", "--out",
                 str(tmp_path / "r.npz")]) == 0
    z = np.load(tmp_path / "r.npz")
    assert z["sample_weight"].shape == (60, 40) and z["weight"].shape[1:] == (10, 48)


LAYOUT_CHECK = textwrap.dedent('''
    import json, sys
    import h5py, numpy as np
    f = h5py.File(sys.argv[1], "r")
    assert f.attrs["format"] == "spikeep-traces/2"
    for key in ("spikeep_version", "config", "seed", "git_commit", "input_mean", "input_std", "input_normalisation"):
        assert key in f.attrs, key
    json.loads(f.attrs["config"])
    T, S = f["iteration"].shape[0], f["snapshot_iteration"].shape[0]
    assert f["epoch"].shape == (T,) and f["snapshot_epoch"].shape == (S,)
    assert f["iteration"].is_scale and f["snapshot_iteration"].is_scale
    assert [s.name for s in f["epoch"].dims[0].values()] == ["/iteration"]
    for name, g in f["layers"].items():
        shape = tuple(g.attrs["weight_shape"])
        K = g["sample_index"].shape[0]
        assert g.attrs["kind"] in ("dense", "conv") and g.attrs["quantized"] == False
        assert g["sample_index"].dtype == np.int64 and g["sample_index"][:].max() < np.prod(shape)
        for d in ("sample_weight", "sample_delta", "sample_grad"):
            assert g[d].shape == (T, K) and g[d].dtype == np.float32 and g[d].maxshape[0] is None
            assert [[s.name for s in dim.values()] for dim in g[d].dims] == [["/iteration"], [g.name + "/sample_index"]]
            assert g[d].compression == "gzip" and g[d].shuffle
        assert g["summary"].shape == (T, 5) and g["summary"].attrs["columns"] == "norm,mean,std,min,max"
        assert g["weight"].shape == (S,) + shape and g["weight"].chunks[0] == 1
        assert [s.name for s in g["weight"].dims[0].values()] == ["/snapshot_iteration"]
        assert g["bias"].shape[0] == S
    # every axis of every dataset has one dimension scale; every dataset has units and a description
    def check(name, d):
        if isinstance(d, h5py.Dataset):
            assert all(len(dim) == 1 for dim in d.dims) or d.is_scale, name
            assert "units" in d.attrs and d.attrs["description"], name
    f.visititems(check)
    assert "spikeep" not in sys.modules
    print("layout ok", T, S)
''')


def test_layout_is_readable_by_h5py_alone(tmp_path):
    from spikeep.training.validation import load_config
    from spikeep.training.trainer import train

    cfg = load_config(QUICK, [a for a in TRACED[1::2]] + ["train.epochs=1"])
    train(cfg, tmp_path / "run", progress=False, echo=False)
    r = subprocess.run([sys.executable, "-c", LAYOUT_CHECK, str(tmp_path / "run" / "traces.h5")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("layout ok 20 ")
    # the analysis script turns the run's traces into figures
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "plot_traces.py"), str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("weight_trajectories.png", "weight_change_hist.png", "weight_summary.png"):
        assert (tmp_path / "run" / name).read_bytes()[:4] == b"\x89PNG"


def _small_run(tmp_path):
    from spikeep.training.validation import load_config
    from spikeep.training.trainer import train

    cfg = load_config(QUICK, ["data.subset=100", "model.hidden=[8]", "train.batch_size=25", "dynamics.T1=10",
                              "dynamics.T2=4", "train.epochs=1", "traces.enabled=true", "traces.sample=6",
                              "traces.full_every=2", "traces.probe=2"])
    train(cfg, tmp_path / "run", progress=False, echo=False)
    return tmp_path / "run" / "traces.h5"


def test_h5dump_reads_every_dataset(tmp_path):
    """HDF5's own tools (Debian's hdf5-tools, HDF5 1.10) read the whole file: gzip, v110 object formats."""
    import shutil
    if shutil.which("h5dump") is None:
        pytest.skip("h5dump not installed (Debian: apt-get install hdf5-tools; .ci/run installs it)")
    path = _small_run(tmp_path)
    r = subprocess.run(["h5dump", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "error" not in (r.stdout + r.stderr).lower()
    assert 'DATASET "sample_weight"' in r.stdout and "COMPRESSION DEFLATE" in subprocess.run(
        ["h5dump", "-p", "-H", str(path)], capture_output=True, text=True).stdout
    # and the previous format's lzf file is what it could not read (the reason for format 2)
    r = subprocess.run(["h5dump", str(REPO / "tests" / "data" / "traces_v1.h5")], capture_output=True, text=True)
    assert r.returncode != 0


def test_xarray_opens_each_layer_group(tmp_path):
    """Named dimension scales on every axis: xarray (h5netcdf) opens the root, every layer and the probe."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    path = _small_run(tmp_path)
    with traces.open(path) as t:
        want = {n: t[n].sample_weight[:] for n in t.layers}
        T = t.n_rows()
    root = xr.open_dataset(path, engine="h5netcdf")
    assert root.sizes["iteration"] == T and root["epoch"].dims == ("iteration",)
    assert root.attrs["format"] == "spikeep-traces/2" and "input_normalisation" in root.attrs
    for name, w in want.items():
        ds = xr.open_dataset(path, engine="h5netcdf", group=f"layers/{name}")
        assert ds["sample_weight"].dims == ("iteration", "sample_index")
        assert np.array_equal(ds["sample_weight"].values, w)
        assert ds["weight"].dims[0] == "snapshot_iteration" and ds["summary"].dims[1] == "summary_column"
        assert ds["sample_grad"].attrs["units"] == "1" and "estimate" in ds["sample_grad"].attrs["description"]
    probe = xr.open_dataset(path, engine="h5netcdf", group="probe")
    assert probe["dense0"].dims == ("snapshot_iteration", "probe_sample", "dense0_unit")


def test_previous_format_still_reads_and_resumes(tmp_path):
    """tests/data/traces_v1.h5 was written by the format-1 writer (lzf, libver latest, scales on axis 0 only)."""
    import shutil
    old = tmp_path / "traces.h5"
    shutil.copy(REPO / "tests" / "data" / "traces_v1.h5", old)
    with traces.open(old) as t:
        assert t.format == "spikeep-traces/1" and t.layers == ["dense0", "readout"]
        n, its = t.n_rows(), t.iteration.tolist()
        w = {name: t[name].sample_weight[:] for name in t.layers}
        specs = [LayerSpec(lt.name, lt.kind, lt.weight_shape, (lt.bias.shape[1],), lt.sample_index) for lt in t]
        snaps = t.snapshot_iteration.tolist()
    assert n == 8 and its == list(range(1, 9)) and snaps == [4, 8]
    assert "format spikeep-traces/1" in traces.info(old)
    assert traces.export(old, "dense0", "csv").read_text().count("\n") == n + 1
    # resuming a run whose file is format 1 carries its rows over into a format-2 file
    rec = TraceRecorder(old, specs, attrs={}, resume_iteration=6)
    rec.close()
    assert rec.moved_aside is None
    with traces.open(old) as t:
        assert t.format == "spikeep-traces/2" and t.iteration.tolist() == its[:6]
        assert all(np.array_equal(t[name].sample_weight[:], w[name][:6]) for name in t.layers)
        assert t.snapshot_iteration.tolist() == [4]


def test_summary_column_is_variable_length_utf8_and_a_locked_file_says_why(tmp_path, monkeypatch):
    """issue 29, item 9: netCDF-4 tools read variable-length UTF-8 strings (a fixed-length byte string
    crashed ncdump 4.9.0); a reader opening a file whose writer has not switched to SWMR mode yet (HDF5's
    errno 11) is told so, and to open it again in a moment."""
    import h5py

    import spikeep.traces.format as fmt
    from spikeep.traces import Traces
    from spikeep.training.trainer import train
    from spikeep.training.validation import load_config

    cfg = load_config("quickstart", ["train.epochs=1", "data.subset=200", "data.test_subset=100", "traces.enabled=true",
                                     "model.hidden=[16]"])
    train(cfg, tmp_path / "run", progress=False, echo=False)
    path = tmp_path / "run" / "traces.h5"
    with h5py.File(path, "r") as f:
        for layer in f["layers"]:
            d = f["layers"][layer]["summary_column"]
            info = h5py.check_string_dtype(d.dtype)
            assert info is not None and info.encoding == "utf-8" and info.length is None, d.dtype
            assert [c.decode() if isinstance(c, bytes) else c for c in d[:]] == list(fmt.SUMMARY_COLUMNS)
    def locked(*a, **k):
        raise OSError("Unable to synchronously open file (unable to lock file, errno = 11, error message = "
                      "'Resource temporarily unavailable')")

    monkeypatch.setattr(fmt.h5py, "File", locked)
    with pytest.raises(fmt.TracesError, match="has not switched to SWMR mode yet: open it again in a moment"):
        Traces(path)
