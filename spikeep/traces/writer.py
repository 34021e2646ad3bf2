"""Writing trace files during training (process 0 only), crash-safe in HDF5's SWMR mode; resuming
truncates the rows after the checkpoint and appends (see the package docstring for the layout)."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np
import torch

from ..training.files import StorageError, ensure_space, storage_error
from .format import (FORMAT, LIBVER, PER_ITERATION, PER_SNAPSHOT, READABLE, SUMMARY_COLUMNS, LayerSpec, TracesError,
                     describe, open_for_reading)


def _compression(name: str, level: int) -> dict[str, Any]:
    """HDF5 filters: gzip (deflate, built into every HDF5) after the byte shuffle; lzf only h5py reads."""
    if name in ("", "none"):
        return {}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "gzip":
        if not 1 <= level <= 4:
            raise ValueError(f"gzip level must be 1..4 (higher levels cost too much time), got {level}")
        return {"compression": "gzip", "compression_opts": level, "shuffle": True}
    raise ValueError(f"unknown compression {name!r}; use 'none', 'lzf' or 'gzip'")


class TraceRecorder:
    """Appends traces of one network's weights to traces.h5 during training (process 0 only)."""

    def __init__(self, path: str | Path, layers: list[LayerSpec], *, attrs: dict[str, Any],
                 compression: str = "gzip", gzip_level: int = 4, chunk: int = 64, flush_every: int = 10,
                 probe: Optional[tuple[np.ndarray, np.ndarray]] = None, resume_iteration: Optional[int] = None):
        self.path = Path(path)
        self.layers = {l.name: l for l in layers}
        self.comp = _compression(compression, gzip_level)
        self.chunk, self.flush_every = max(1, chunk), max(1, flush_every)
        self.probe = probe
        self._rows: list[tuple[int, int, dict, dict]] = []  # buffered per-iteration rows
        self._indices: dict[str, tuple[torch.Tensor, ...]] = {}  # sampled synapses as index tensors
        self.moved_aside: Optional[Path] = None  # a damaged file found on resume, renamed (never deleted)
        self.failed = False  # a write failed (full disk): nothing more is written, close only closes
        try:
            if resume_iteration is not None and self.path.exists():
                try:
                    self._reopen(attrs, resume_iteration)
                except TracesError:
                    # damaged (truncated, cut by a full disk, foreign): keep it under another name and
                    # go on with a fresh file from the resumed iteration
                    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                    self.moved_aside = self.path.with_name(f"{self.path.stem}.damaged-{stamp}{self.path.suffix}")
                    os.replace(self.path, self.moved_aside)
                    self._create(self.path, attrs)
            else:
                self._create(self.path, attrs)
            self.f.swmr_mode = True
        except OSError as e:
            raise storage_error(self.path, e) from None

    # -- file creation -------------------------------------------------------------------------------
    def _create(self, path: Path, attrs: dict[str, Any]) -> None:
        f = h5py.File(path, "w", libver=LIBVER)
        self.f = f
        f.attrs["format"] = FORMAT
        f.attrs["created"] = datetime.now().isoformat(timespec="seconds")
        for k, v in attrs.items():
            f.attrs[k] = v if v is not None else ""
        # a flush appends flush_every rows: chunks no longer than that are written once, whole (a
        # compressed chunk rewritten by every flush leaves its old copies behind as dead space)
        self._t_chunk = min(self.chunk, self.flush_every)
        self._it = self._time_axis("iteration", "i8")
        self._time_axis("epoch", "i4", self._it)
        self._sit = self._time_axis("snapshot_iteration", "i8")
        self._time_axis("snapshot_epoch", "i4", self._sit)
        for spec in self.layers.values():
            self._create_layer(f.create_group(f"layers/{spec.name}"), spec)
        if self.probe is not None:
            self._create_probe(f.create_group("probe"))

    def _time_axis(self, name: str, dtype: str, scale_of: Optional[h5py.Dataset] = None) -> h5py.Dataset:
        d = describe(self.f.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(self._t_chunk,), dtype=dtype),
                     name)
        if scale_of is None:
            d.make_scale(name)
        else:  # epochs label the iteration axis (netCDF allows one dimension per axis)
            d.dims[0].attach_scale(scale_of)
        return d

    def _timed(self, group: h5py.Group, name: str, shape: tuple, dtype: str, axes: list, key: Optional[str] = None,
               per_snapshot: bool = False) -> h5py.Dataset:
        """A dataset growing along time, each axis named by a dimension scale (time, then `axes`)."""
        chunks = (1 if per_snapshot else self._t_chunk,) + tuple(shape)
        d = group.create_dataset(name, shape=(0,) + tuple(shape), maxshape=(None,) + tuple(shape),
                                 chunks=chunks, dtype=dtype, **self.comp)
        describe(d, key or name)
        d.dims[0].attach_scale(self._sit if per_snapshot else self._it)
        for i, scale in enumerate(axes, start=1):
            d.dims[i].attach_scale(scale)
        return d

    def _create_layer(self, g: h5py.Group, spec: LayerSpec) -> None:
        q = spec.scale is not None
        g.attrs.update(kind=spec.kind, weight_shape=spec.weight_shape, n_weights=int(np.prod(spec.weight_shape)),
                       dtype="float32", quantized=q, units="weight (dimensionless, PyTorch layout)")
        if q:
            g.attrs.update(scale=float(spec.scale), bits=int(spec.bits), code_dtype="int16")
        sample = describe(g.create_dataset("sample_index", data=spec.sample_index.astype(np.int64)), "sample_index")
        sample.make_scale("sample_index")
        k = len(spec.sample_index)
        for name in ("sample_weight", "sample_delta", "sample_grad"):
            self._timed(g, name, (k,), "f4", [sample])
        # variable-length UTF-8: what netCDF-4 tools read (a fixed-length byte string crashed ncdump 4.9.0)
        cols = describe(g.create_dataset("summary_column", data=list(SUMMARY_COLUMNS),
                                         dtype=h5py.string_dtype("utf-8")),
                        "summary_column")
        cols.make_scale("summary_column")
        self._timed(g, "summary", (len(SUMMARY_COLUMNS),), "f4", [cols]).attrs["columns"] = ",".join(SUMMARY_COLUMNS)
        w_axes = [_axis(g, a, n) for a, n in zip(_weight_axis_names(spec.weight_shape), spec.weight_shape)]
        if q:
            self._timed(g, "sample_code", (k,), "i2", [sample])
            self._timed(g, "weight_code", spec.weight_shape, "i2", w_axes, per_snapshot=True).attrs["scale"] = \
                float(spec.scale)
        else:
            self._timed(g, "weight", spec.weight_shape, "f4", w_axes, per_snapshot=True)
        self._timed(g, "bias", spec.bias_shape, "f4", w_axes[:1], per_snapshot=True)
        if spec.feedback:
            self._timed(g, "angle", (), "f4", [])

    def _create_probe(self, pg: h5py.Group) -> None:
        x, y = self.probe
        p_axis = _axis(pg, "probe_sample", len(y))
        in_axes = [_axis(pg, a, n) for a, n in zip(_state_axis_names("input", x.shape[1:]), x.shape[1:])]
        for name, data, axes in (("x", x, [p_axis] + in_axes), ("y", y, [p_axis])):
            d = describe(pg.create_dataset(name, data=data), name)
            for i, scale in enumerate(axes):
                d.dims[i].attach_scale(scale)
        for spec in self.layers.values():
            if spec.state_shape is not None:
                axes = [_axis(pg, a, n) for a, n in zip(_state_axis_names(spec.name, spec.state_shape), spec.state_shape)]
                self._timed(pg, spec.name, (len(y),) + spec.state_shape, "f4", [p_axis] + axes, key="probe_state",
                            per_snapshot=True)

    def _reopen(self, attrs: dict[str, Any], last_iteration: int) -> None:
        """Continue an existing file after a resume: keep rows up to `last_iteration`, drop the rest.

        A file whose writer was killed carries HDF5's 'open for writing' flags and cannot be opened
        for appending, so its kept rows are copied into a fresh file, which then replaces it.
        """
        old = open_for_reading(self.path)
        try:
            if old.attrs.get("format") not in READABLE:
                raise TracesError(f"{self.path}: not a spikeep trace file")
            n_it = int(np.searchsorted(old["iteration"][:], last_iteration, side="right"))
            n_sn = int(np.searchsorted(old["snapshot_iteration"][:], last_iteration, side="right"))
            tmp = self.path.with_name(f".{self.path.name}.spikeep-resume{os.getpid()}")
            self._create(tmp, attrs)
            for name in ("iteration", "epoch"):
                self._append(self.f[name], old[name][:n_it])
            for name in ("snapshot_iteration", "snapshot_epoch"):
                self._append(self.f[name], old[name][:n_sn])
            for layer in self.layers:
                if f"layers/{layer}" not in old:
                    raise TracesError(f"{self.path}: has no layer {layer!r}; it was written for another network")
                for name in PER_ITERATION + ("sample_code", "angle"):
                    if f"layers/{layer}/{name}" in self.f:
                        self._append(self.f[f"layers/{layer}/{name}"], old[f"layers/{layer}/{name}"][:n_it])
                for name in PER_SNAPSHOT + ("weight_code",):
                    if f"layers/{layer}/{name}" in self.f:
                        self._copy_rows(old[f"layers/{layer}/{name}"], self.f[f"layers/{layer}/{name}"], n_sn)
                if self.probe is not None and f"probe/{layer}" in old and f"probe/{layer}" in self.f:
                    self._copy_rows(old[f"probe/{layer}"], self.f[f"probe/{layer}"], n_sn)
        finally:
            old.close()
        self.f.close()
        os.replace(tmp, self.path)
        self.f = h5py.File(self.path, "a", libver=LIBVER)

    @staticmethod
    def _copy_rows(src, dst, n: int, block: int = 8) -> None:
        for i in range(0, n, block):
            TraceRecorder._append(dst, src[i:min(n, i + block)])

    @staticmethod
    def _append(d: h5py.Dataset, rows: np.ndarray) -> None:
        if len(rows):
            n = d.shape[0]
            d.resize(n + len(rows), axis=0)
            d[n:] = rows

    # -- recording -------------------------------------------------------------------------------------
    def record(self, iteration: int, epoch: int, weights: dict[str, torch.Tensor], before: dict[str, np.ndarray],
               grads: dict[str, torch.Tensor], angles: Optional[dict[str, torch.Tensor]] = None) -> None:
        """One iteration: the sampled synapses (after the update), their change and their gradient,
        the per-layer summary and, for layers with feedback weights, the angle between forward and
        feedback weights (`angles`, degrees). `before` comes from `sample` called before the update.
        Costs a gather of K values and two passes over each weight tensor, no copy of it."""
        parts = []
        for name, w in weights.items():
            idx = self._index(name, w)
            f = _flat_view(w.detach())
            n = f.numel()
            # three fast passes (PyTorch's pairwise sums); std from them in float64:
            # (n - 1) var = ||w||^2 - (sum w)^2 / n, well conditioned for weights centred near 0
            total, norm = f.sum().double(), torch.linalg.vector_norm(f).double()
            lo, hi = torch.aminmax(f)
            var = ((norm * norm - total * total / n) / max(n - 1, 1)).clamp_min(0)
            parts += [w.detach()[idx], grads[name].detach()[idx], norm[None], (total / n)[None], var.sqrt()[None],
                      lo[None], hi[None]]
            if self.layers[name].scale is not None:  # integer codes (exact in float32 up to 2^24)
                parts.append(torch.round(w.detach()[idx] / self.layers[name].scale))
            if self.layers[name].feedback:
                parts.append(angles[name].reshape(1).to(w.device))
        flat = torch.cat([p.float() for p in parts]).cpu().numpy()  # one transfer per iteration
        row, off = {}, 0
        for name in weights:
            k = len(self.layers[name].sample_index)
            width = (2 * k + len(SUMMARY_COLUMNS) + (k if self.layers[name].scale is not None else 0)
                     + int(self.layers[name].feedback))
            row[name] = flat[off:off + width]
            off += width
        self._rows.append((iteration, epoch, before, row))
        if len(self._rows) >= self.flush_every:
            self.flush()

    def sample(self, weights: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The sampled synapses' current values (call before the optimizer step)."""
        vals = torch.cat([w.detach()[self._index(n, w)].float() for n, w in weights.items()]).cpu().numpy()
        out, off = {}, 0
        for n in weights:
            k = len(self.layers[n].sample_index)
            out[n], off = vals[off:off + k], off + k
        return out

    def _index(self, name: str, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The sampled synapses as a multi-dimensional index (gathers K values in any memory layout)."""
        cache = self._indices.get(name)
        if cache is None or cache[0].device != w.device:
            spec = self.layers[name]
            multi = np.unravel_index(spec.sample_index, spec.weight_shape)
            cache = self._indices[name] = tuple(torch.as_tensor(m, device=w.device) for m in multi)
        return cache

    def _guarded(self, write, nbytes: int) -> None:
        """Run `write` (about `nbytes` of data) if the disk has room for it, else refuse it before HDF5
        starts (HDF5 hitting a full disk half-way can leave a file it cannot close). If the disk fails
        it all the same, shrink every dataset back to its length before, so the file keeps real rows
        only. Either way raise StorageError naming the file."""
        if self.failed:
            raise StorageError(f"{self.path}: an earlier write failed; nothing more is written to it")
        try:
            ensure_space(self.path, nbytes)
        except StorageError:
            self.failed = True
            self._rows.clear()
            raise
        sizes = {}
        self.f.visititems(lambda n, o: sizes.__setitem__(n, o.shape[0])
                          if isinstance(o, h5py.Dataset) and o.maxshape and o.maxshape[0] is None else None)
        try:
            write()
        except (OSError, RuntimeError) as e:
            self.failed = True
            self._rows.clear()
            try:
                for name, n in sizes.items():
                    if self.f[name].shape[0] != n:
                        self.f[name].resize(n, axis=0)
                self.f.flush()
            except (OSError, RuntimeError):
                pass
            raise storage_error(self.path, e) from None

    def snapshot(self, iteration: int, epoch: int, weights: dict[str, torch.Tensor],
                 biases: dict[str, torch.Tensor], states: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Full weight (and bias) tensors, and the probe batch's equilibrium states if given."""
        self.flush(sync=False)
        nbytes = sum(4 * w.numel() for w in list(weights.values()) + list(biases.values()) + list((states or {}).values()))
        self._guarded(lambda: self._write_snapshot(iteration, epoch, weights, biases, states), nbytes)

    def _write_snapshot(self, iteration, epoch, weights, biases, states) -> None:
        self._append(self.f["snapshot_iteration"], np.array([iteration], dtype=np.int64))
        self._append(self.f["snapshot_epoch"], np.array([epoch], dtype=np.int32))
        for name, w in weights.items():
            scale = self.layers[name].scale
            if scale is not None:
                codes = torch.round(w.detach() / scale).to(torch.int16).cpu().numpy()
                self._append(self.f[f"layers/{name}/weight_code"], codes[None])
            else:
                self._append(self.f[f"layers/{name}/weight"], w.detach().float().cpu().numpy()[None])
            self._append(self.f[f"layers/{name}/bias"], biases[name].detach().float().cpu().numpy()[None])
        for name, s in (states or {}).items():
            if f"probe/{name}" in self.f:
                self._append(self.f[f"probe/{name}"], s.detach().float().cpu().numpy()[None])
        self.f.flush()

    def flush(self, sync: bool = True) -> None:
        """Write the buffered rows and make them visible to readers and durable against a crash."""
        if self._rows or sync:
            nbytes = sum(a.nbytes for r in self._rows for part in (r[2], r[3]) for a in part.values()) + 12 * len(self._rows)
            self._guarded(lambda: self._write_rows(sync), nbytes)

    def _write_rows(self, sync: bool) -> None:
        if self._rows:
            its = np.array([r[0] for r in self._rows], dtype=np.int64)
            eps = np.array([r[1] for r in self._rows], dtype=np.int32)
            for name in self.layers:
                k = len(self.layers[name].sample_index)
                before = np.stack([r[2][name] for r in self._rows])
                rows = np.stack([r[3][name] for r in self._rows])
                after, grad = rows[:, :k], rows[:, k:2 * k]
                summ = rows[:, 2 * k:2 * k + len(SUMMARY_COLUMNS)]
                g = self.f[f"layers/{name}"]
                codes = 2 * k + len(SUMMARY_COLUMNS)
                if self.layers[name].scale is not None:
                    self._append(g["sample_code"], rows[:, codes:codes + k].astype(np.int16))
                if self.layers[name].feedback:
                    self._append(g["angle"], rows[:, -1])
                self._append(g["sample_weight"], after)
                self._append(g["sample_delta"], after - before)
                self._append(g["sample_grad"], grad)
                self._append(g["summary"], summ)
            # the time axis last: a reader never sees an iteration whose rows are missing
            self._append(self.f["epoch"], eps)
            self._append(self.f["iteration"], its)
            self._rows.clear()
        if sync:
            self.f.flush()

    def close(self) -> None:
        if getattr(self, "f", None) is not None and self.f.id.valid:
            try:
                if not self.failed:
                    self.flush()
            finally:
                try:
                    self.f.close()
                except (OSError, RuntimeError):
                    pass  # the failure was reported by flush


def _axis(group: h5py.Group, name: str, n: int) -> h5py.Dataset:
    """The dimension scale `name` (0..n-1) of a group, made on first use."""
    if name not in group:
        d = describe(group.create_dataset(name, data=np.arange(n, dtype=np.int32)), "axis")
        d.make_scale(name)
    return group[name]


def _weight_axis_names(shape: tuple[int, ...]) -> list[str]:
    if len(shape) == 2:
        return ["output", "input"]
    if len(shape) == 4:
        return ["output_channel", "input_channel", "kernel_y", "kernel_x"]
    return [f"weight_axis{i}" for i in range(len(shape))]


def _state_axis_names(prefix: str, shape: tuple[int, ...]) -> list[str]:
    if len(shape) == 1:
        return [f"{prefix}_unit"]
    if len(shape) == 3:
        return [f"{prefix}_channel", f"{prefix}_y", f"{prefix}_x"]
    return [f"{prefix}_axis{i}" for i in range(len(shape))]


def _flat_view(w: torch.Tensor) -> torch.Tensor:
    """All elements of a dense tensor as one flat view, in memory order (for order-free statistics)."""
    if w.is_contiguous():
        return w.view(-1)
    if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last):
        return w.permute(0, 2, 3, 1).reshape(-1)  # a view: NHWC storage is contiguous
    return w.reshape(-1)


def layer_specs(net, k: int, seed: int, quantized: Optional[dict[str, tuple[float, int]]] = None) -> list[LayerSpec]:
    """One spec per layer of an EqNetwork, with K synapses drawn at random (fixed by seed);
    `quantized` maps layer names to (scale, bits) of layers whose weights sit on an integer grid."""
    quantized = quantized or {}
    g = torch.Generator().manual_seed(seed)
    specs = []
    n_state = len(net.layer_shapes)
    for i, (name, layer) in enumerate(zip(net.layer_names(), net.layers)):
        n = layer.weight.numel()
        idx = torch.randperm(n, generator=g)[:min(k, n)].sort().values.numpy()
        scale, bits = quantized.get(name, (None, 0))
        specs.append(LayerSpec(name, layer.kind, tuple(layer.weight.shape),
                               tuple(layer.bias.shape), idx,
                               tuple(net.layer_shapes[i]) if i < n_state else None, scale, bits,
                               hasattr(layer, "weight_b")))
    return specs


