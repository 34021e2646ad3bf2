"""Command line: spikeep train | evaluate | gdu | traces | export | configs (also `python -m spikeep`). A thin
layer over the library functions."""
from __future__ import annotations

import atexit
import os
import signal
import sys

# where the command stands, read by the signal handlers: "entry" (this process is the command line, spikeep
# or python -m spikeep: it ends with the command), "hold" (the final line is being written: a signal waits
# for it), "pending" (the signal that waits), "status" (the command has ended with this exit status, its
# last line written)
_STATE: dict = {"entry": False, "hold": False, "pending": None, "status": None}


def _on_signal(signum, frame) -> None:  # noqa: ARG001
    """SIGINT / SIGTERM at any moment, imports included: one line, then exit at once, as a kill would
    (every file spikeep writes is replaced atomically or appended and checked, so the folder is as after
    kill -9: resumable from its last checkpoint). While the final line is written, the signal waits for it
    (a second one does not: a reader that takes no more output cannot hold the process)."""
    if _STATE["hold"] and _STATE["pending"] is None:
        _STATE["pending"] = signum
        return
    _stop(signum)


def _stop(signum: int) -> None:
    """The one line (on a line of its own when a progress bar is drawn), then exit 130 / 143 at once."""
    name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
    try:
        rf = sys.modules.get("spikeep.training.run_folder")  # never an import here: this runs inside signal handlers
        newline = "\n" if rf is not None and rf.ACTIVE.get("bar") is not None else ""  # not after the bar
        done = _STATE["status"]
        os.write(2, f"{newline}spikeep: stopped by {name}"
                    f"{_resume_hint('dir') if done is None else _after_the_end(done)}\n".encode())
    finally:
        os._exit(130 if signum == signal.SIGINT else 143)


def _resume_hint(which: str) -> str:
    """What to do next for the run folder this process was writing (none: nothing to say)."""
    rf = sys.modules.get("spikeep.training.run_folder")  # never an import here: this runs inside signal handlers
    where = rf.ACTIVE.get(which) if rf is not None else None
    if where is None:
        return ""
    if os.path.isfile(os.path.join(str(where), "checkpoint.pt")):
        return f"; resume with `spikeep train --resume {where}`"
    return f"; {where} has no checkpoint yet: start the run again (with --overwrite to reuse that folder)"


def _after_the_end(status: int) -> str:
    """What a signal says that came after the command had ended (its last line written): nothing was cut short."""
    rf = sys.modules.get("spikeep.training.run_folder")
    last = rf.ACTIVE.get("last") if rf is not None else None
    if status == 0 and last is not None:
        return f" after the run had finished: {last} is complete (nothing to resume)"
    return f" after the command had ended (with exit status {status})"


def _end_now() -> None:
    """The command line's last exit handler (registered before any other library's, so it runs after them):
    once the command has ended, the process ends here with its status. The interpreter's teardown that
    would follow (about a second with torch loaded) writes nothing of a run (its files are closed and
    complete when its final line is printed), and in it Python answers no signal: it has put SIGINT and
    SIGTERM back to their defaults, so a Ctrl-C there killed the process silently (exit -2). Exit
    handlers registered before this one (none of spikeep's libraries: it is registered at once) do not run."""
    if _STATE["status"] is None:  # the command did not get to its end (Python's own exit goes on)
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed pipe, a closed or replaced stream
            pass
    os._exit(_STATE["status"])


if (__name__ == "__main__" or os.path.basename(sys.argv[0]) == "spikeep"  # the command line (also python -m
        or sys.argv[0].endswith(os.path.join("spikeep", "__main__.py"))):   # spikeep): at once, before
    for _sig in (signal.SIGINT, signal.SIGTERM):                           # anything else is imported
        signal.signal(_sig, _on_signal)
    _STATE["entry"] = True
    atexit.register(_end_now)

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from .config import ConfigError  # noqa: E402

if TYPE_CHECKING:
    from .config import Config


def _add_common(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("config", nargs=None if config_required else "?",
                   help="a shipped config's name (see `spikeep configs`, e.g. quickstart) or a TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (overrides dynamics.device)")


def _config(args) -> "Config":
    from .training.validation import load_config

    overrides = list(args.overrides) + ([f'dynamics.device="{args.device}"'] if args.device else [])
    return load_config(args.config, overrides)


def cmd_train(args) -> int:
    from .training.trainer import train

    if args.resume:
        given = [what for what, on in (("CONFIG", args.config), ("--set", args.overrides), ("--device", args.device),
                                       ("--run-dir", args.run_dir is not None), ("--overwrite", args.overwrite),
                                       ("--runs", args.runs is not None)) if on]
        if given:
            raise ValueError(f"--resume continues a run in its own folder with the config stored there (device "
                             f"included): give no CONFIG, --set, --device, --run-dir, --overwrite or --runs "
                             f"(got {', '.join(given)}). To change any of them, start a new run")
        result = train(run_dir=args.resume, resume=True, progress=False if args.no_progress else None)
    else:
        if not args.config:
            raise ValueError("give a CONFIG file, or --resume RUN_DIR")
        cfg = _config(args)
        if args.download:
            cfg.data.download = True
        result = train(cfg, args.run_dir, progress=False if args.no_progress else None, base_dir=args.runs or "runs",
                       overwrite=args.overwrite)
    # the run's files are complete: a signal from here on waits for the final line (main, _ended)
    _STATE["hold"] = True
    if result.history and result.main:  # other processes of a data-parallel run hold no up-to-date history
        last = result.history[-1]
        print(f"test accuracy: {last['test_acc']:.2f}% (run folder {result.run_dir})")
    return 0


def cmd_evaluate(args) -> int:
    from .training.evaluation import evaluate_run

    r = evaluate_run(args.run_dir, args.weights, args.device, args.neurons, args.set)
    spk = (f"; {r['spikes_per_inference']:.0f} spikes and {r['synops_per_inference']:.3g} SynOps per inference"
           if r["neurons"] == "spiking" else "")
    print(f"{r['run_dir']} ({r['weights']}, {r['neurons']} neurons, {r['data']} test set, {r['test_samples']} "
          f"samples, {r['threads']}): accuracy "
          f"{r['test_acc']:.2f}%, loss {r['test_loss']:.6f}{spk}")
    return 0


def cmd_gdu(args) -> int:
    import torch

    from .training.build import build_network
    from .data import batches, load_dataset
    from .learning.gdu import gdu_check, save_gdu

    cfg = _config(args)
    net = build_network(cfg)
    g = cfg.gdu
    if cfg.data.name == "random":
        gen = torch.Generator().manual_seed(g.seed)
        x = torch.rand(g.batch_size, *cfg.model.input_shape, generator=gen)
        y = torch.randint(0, cfg.model.n_classes, (g.batch_size,), generator=gen)
    else:
        ds = load_dataset(cfg.data.name, cfg.data.root, 0, cfg.data.download)
        x, y = next(batches(ds.test, g.batch_size))
    result = gdu_check(net, x, y, cfg.dynamics.T1, g.K, g.beta)
    json_path, png_path = save_gdu(result, args.out)
    print(f"free phase: max |s_(T1+1) - s_T1| = {result['delta_free']:.2e} after T1 = {cfg.dynamics.T1} steps")
    for est, layers in result["estimators"].items():
        for name, m in layers.items():
            print(f"{est:>10} {name:>8}: rel. error at t=1..{g.K}: max {max(m['rel_error']):.2e}, "
                  f"at t=K {m['rel_error'][-1]:.2e}")
    for w in result["warnings"]:
        print(f"warning: {w}")
    print(f"wrote {json_path} and {png_path}")
    return 0


def cmd_traces(args) -> int:
    from . import traces

    if args.action == "info":
        print(traces.info(args.file))
    else:
        if not args.layer:
            raise ValueError("traces export needs --layer NAME (see 'spikeep traces info FILE')")
        out = traces.export(args.file, args.layer, args.format, args.out)
        print(f"wrote {out}")
    return 0


def cmd_configs(args) -> int:
    from .config import shipped_configs

    shipped = shipped_configs()
    if args.name:  # one config's text, to read or to copy and edit
        name = args.name[:-5] if args.name.endswith(".toml") else args.name
        if name not in shipped:
            raise ValueError(f"no shipped config named {args.name!r}; `spikeep configs` lists them")
        print(shipped[name].read_text(encoding="utf-8"), end="")
        return 0
    width = max(map(len, shipped), default=0)
    for name, path in shipped.items():
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        about = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        print(f"{name:<{width}}  {about}")
    print(f"\n{len(shipped)} configs in {next(iter(shipped.values())).parent if shipped else '(none)'}; "
          f"use one by name (spikeep train quickstart), show one with `spikeep configs NAME`")
    return 0


def cmd_export(args) -> int:
    from .training.nir_export import export_run

    out = Path(args.out)
    if out.suffix != ".nir":
        raise ValueError(f"the output file must end in .nir, got {out}")
    r = export_run(args.run_dir, out, args.weights, args.approximate)
    print(f"wrote {r['out']}: NIR graph of {r['nodes']} nodes and {r['edges']} edges")
    for d in r["dropped"]:
        print(f"  not in the graph (listed in its metadata): {d}")
    return 0


def _process_rank() -> int:
    """This process's rank in a data-parallel run (0 alone)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _traceback_where() -> str:
    """Where the current exception's traceback is: train.log, which process 0 writes; another process
    writes no train.log, so it prints the traceback to stderr here."""
    rank = _process_rank()
    if rank == 0:
        return "the traceback is in train.log"
    import traceback
    traceback.print_exc(file=sys.stderr)
    return f"the traceback is above (process {rank} writes no train.log)"


def main(argv: list[str] | None = None) -> int:
    # first thing, before torch and the rest are imported: SIGINT / SIGTERM end with one line
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 1  # an exception that gets out (a bug): Python prints its traceback, exit status 1
    try:
        status = _main(argv)
        _STATE["hold"] = True  # the command's output is out once flushed (train holds from its final line on)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        code = status
    except BrokenPipeError:  # the reader went away (`spikeep export ... | head -1`): stop quietly, as
        _drop_stdout()       # a process killed by SIGPIPE would
        code = 141
    except SystemExit as e:  # argparse: --help, --version, a usage error
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
        raise
    finally:
        _ended(code, previous)
    return code


def _ended(code: int, previous: dict) -> None:
    """The command has ended with exit status `code`, its last line written. On the command line a signal
    from now on says so (and still exits 130 / 143 at once); in-process callers (tests, notebooks) get
    their handlers back, and a signal that waited for the last line goes to them."""
    if _STATE["entry"]:
        _STATE["status"] = code  # before the hold ends: a signal from now on comes after the end
    else:
        for sig, h in previous.items():
            signal.signal(sig, h)
    _STATE["hold"] = False
    pending, _STATE["pending"] = _STATE["pending"], None
    if pending is not None:
        _stop(pending) if _STATE["entry"] else signal.raise_signal(pending)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit finds no closed pipe either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's capture): nothing to flush
        pass


def _version() -> str:
    from . import __version__

    return f"spikeep {__version__}"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spikeep", description="Equilibrium Propagation simulator: rate and spiking "
                                 "networks, trained by EP or BPTT, from TOML configs (`spikeep configs` lists the "
                                 "shipped ones).")
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a network from a config", description=(
        "Train a network from a TOML config into a run folder (config, metrics.csv, summary.json, env.json, "
        "checkpoints, curves.png, train.log). Under torchrun it trains data-parallel."))
    _add_common(p, config_required=False)
    p.add_argument("--run-dir", help="run folder (default: RUNS/<config name>/<timestamp>); one that holds "
                                     "anything is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="with --run-dir: move a run already there aside (to RUN_DIR.replaced-<time>; nothing is deleted)")
    p.add_argument("--runs", help="where new run folders go (default: runs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--download", action="store_true", help="let torchvision download missing data (needs internet)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are off anyway when stderr is not a terminal)")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("evaluate", help="test accuracy of a run's weights",
                       description="Evaluate a run folder's best (or last) weights on its test set.")
    p.add_argument("run_dir", help="a run folder written by spikeep train")
    p.add_argument("--weights", choices=["best", "last"], default="best")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--neurons", choices=["rate", "spiking"],
                   help="run the weights in this neuron model (e.g. rate-trained weights in the spiking twin)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value of the run (e.g. spiking.T1=400); repeatable")
    p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("gdu", help="step-wise EP vs BPTT check (writes gdu.json and gdu.png)",
                       description="Compare EP's step-wise updates with BPTT's truncated gradients "
                                   "(Ernoult et al. 2019; Laborieux et al. 2021, Fig. 2).")
    _add_common(p)
    p.add_argument("--out", required=True, help="output folder for gdu.json and gdu.png")
    p.set_defaults(fn=cmd_gdu)
    p = sub.add_parser("traces", help="inspect or export a weight-trace file (traces.h5)",
                       description="Inspect (info) or export one layer of an HDF5 weight-trace file.")
    p.add_argument("action", choices=["info", "export"])
    p.add_argument("file", help="a traces.h5 written by spikeep train with [traces] enabled = true")
    p.add_argument("--layer", help="layer to export (export only)")
    p.add_argument("--format", choices=["csv", "npz"], default="npz", help="export format (default npz)")
    p.add_argument("--out", help="output file (default: next to FILE)")
    p.set_defaults(fn=cmd_traces)
    _add_export_and_configs(sub)
    return ap


def _add_export_and_configs(sub) -> None:
    p = sub.add_parser("export", help="write a trained spiking network as a NIR graph (needs spikeep[nir])",
                       description="Write a spiking run's trained network (the free phase) as a NIR graph: IF "
                                   "or LIF nodes, Affine / Conv2d (an average pool's 1/4 folded in) + SumPool2d, "
                                   "dense feedback as Linear(W^T); dt = 1 and the reset in its metadata.")
    p.add_argument("run_dir", help="a run folder written by spikeep train with model.neurons = 'spiking'")
    p.add_argument("out", help="the .nir file to write")
    p.add_argument("--weights", choices=["best", "last"], default="best")
    p.add_argument("--approximate", action="store_true",
                   help="leave out what NIR cannot express (reset by subtraction, the membrane clamp, conv feedback) "
                        "and list it in the graph's metadata, instead of refusing; not needed for a network trained "
                        "with spiking.reset = 'zero' and spiking.v_min = 'none' (NIR's IF) and no conv feedback")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("configs", help="list the configs shipped with spikeep (or print one)",
                       description="List the configs shipped inside spikeep, which `spikeep train NAME` and "
                                   "spikeep.load_config(NAME) take by name; with NAME, print that config's file.")
    p.add_argument("name", nargs="?", help="print this config (copy it to change it: configs may start from "
                                           "another one with base = \"other.toml\", relative to the file)")
    p.set_defaults(fn=cmd_configs)


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .training.data_parallel import ProcessZeroError
    from .training.files import StorageError
    from .training.divergence import DivergenceError
    from .training.checkpoint_files import CheckpointError
    from .traces import TracesError

    import torch

    try:
        return args.fn(args)
    except KeyboardInterrupt:  # raised by code (tests); real signals end in _on_signal
        print(f"spikeep {args.command}: interrupted{_resume_hint('last')}", file=sys.stderr)
        return 130
    except torch.cuda.OutOfMemoryError as e:
        first = str(e).splitlines()[0] if str(e) else "out of memory"
        print(f"spikeep {args.command}: the GPU ran out of memory ({first}); try a smaller train.batch_size or "
              f"train.eval_batch_size, dynamics.precision = 'bf16_incremental' or 'bf16', or "
              f"dynamics.warm_start = 'none' (per-sample states are kept on the GPU); {_traceback_where()}",
              file=sys.stderr)
        return 5
    except (ConfigError, CheckpointError, TracesError, DivergenceError, StorageError, FileNotFoundError,
            ValueError, ProcessZeroError) as e:
        print(f"spikeep {args.command}: error: {e}", file=sys.stderr)
        # exit codes: 2 bad input (config, files, arguments), 3 divergence, 4 a write failed (disk full, ...)
        return 3 if isinstance(e, DivergenceError) else 4 if isinstance(e, StorageError) else 2
    except RuntimeError as e:  # a library or device failure, not the user's input
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        gpu = any(k in str(e) for k in ("CUDA", "cuDNN", "CUBLAS", "cublas", "triton", "Triton", "NCCL"))
        what = "a GPU / CUDA library call failed" if gpu else "a library call failed"
        print(f"spikeep {args.command}: {what}: {first}. This is not a config mistake; {_traceback_where()} "
              f"(run with CUDA_LAUNCH_BLOCKING=1 to locate a kernel failure; dynamics.engine = 'eager' "
              f"or dynamics.precision = 'strict' take other code paths)", file=sys.stderr)
        return 6


if __name__ == "__main__":
    sys.exit(main())
