"""Weight traces in HDF5: what synapses do while a network learns, recorded so that a crash loses
nothing flushed and any HDF5 tool can read it.

Layout of traces.h5 (format "spikeep-traces/2"; documented in the README; format 1 still reads):

    /                          attrs: format, spikeep_version, config (JSON), seed, git_commit, created,
                               dataset, input_mean, input_std, input_normalisation
    /iteration   (T,)   int64  the iteration of each per-iteration row; a dimension scale
    /epoch       (T,)   int32  its epoch (labelled by /iteration)
    /snapshot_iteration (S,) int64, /snapshot_epoch (S,) int32: the time axis of full snapshots
    /layers/<name>/            attrs: kind, weight_shape, n_weights, dtype, quantized, units
                               (quantized layers also: scale, bits; weight = scale x code)
        sample_index  (K,)         int64    flat indices into the weight tensor (fixed, random)
        sample_weight (T, K)       float32  those weights after each iteration's update
        sample_delta  (T, K)       float32  the change the update made to them (delta-W)
        sample_grad   (T, K)       float32  the EP (or BPTT) estimate of dL/dw written into .grad
        summary       (T, 5)       float32  norm, mean, std, min, max of the whole weight tensor
        weight        (S, *shape)  float32  full weight tensors (every `full_every` iterations / epoch)
        bias          (S, n_out)   float32  full biases, same times
      quantized layers (chip-like synapses on an integer grid, see spikeep/plasticity.py) also have
        sample_code   (T, K)       int16    the sampled synapses' integer codes after each update
      and store full snapshots as codes instead of floats:
        weight_code   (S, *shape)  int16    (in place of `weight`; LayerTraces.weights() gives scale x code)
    /probe/x (P, ...), /probe/y (P,), /probe/<layer> (S, P, *shape): equilibrium states of a fixed
        probe batch at each snapshot (optional)

Every axis of every dataset has one named dimension scale (axis 0: /iteration or /snapshot_iteration;
then sample_index, summary_column, output/input, output_channel/input_channel/kernel_y/kernel_x,
probe_sample, <layer>_unit or <layer>_channel/_y/_x), so netCDF readers (xarray) name every axis; every
dataset has `units` and `description` attributes. Datasets are chunked along time, resizable (maxshape
None along time), gzip-compressed after the byte shuffle by default (or none, or h5py's own lzf), and
written with HDF5 1.10's object formats (libver v110, the oldest SWMR allows) for older readers.

Crash safety: the writer works in HDF5's SWMR mode and flushes every `flush_every` iterations and at
every snapshot. After a `kill -9` the file opens (with swmr=True, which `open` below does by itself)
and holds everything flushed. Resuming truncates the rows after the checkpoint being resumed and goes
on appending, so no iteration is lost or duplicated. Readers may open the file while it is written.
"""
from .format import FORMAT, PER_ITERATION, PER_SNAPSHOT, SUMMARY_COLUMNS, LayerSpec, TracesError
from .reader import LayerTraces, Traces, export, info, open
from .writer import TraceRecorder, layer_specs

__all__ = ["FORMAT", "PER_ITERATION", "PER_SNAPSHOT", "SUMMARY_COLUMNS", "LayerSpec", "TracesError", "LayerTraces",
           "Traces", "export", "info", "open", "TraceRecorder", "layer_specs"]
