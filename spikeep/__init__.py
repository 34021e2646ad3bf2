"""spikeep: Equilibrium Propagation on rate-coded (and spiking) networks.

The Python API (see the README's "Python API" and spikeep/api.py), loaded on first use so that
`import spikeep` stays instant and prints nothing:

    spikeep.load_config("quickstart", ["train.epochs=1"])   a shipped config's name or a TOML file -> Config
    spikeep.build_network(cfg), spikeep.learner(cfg, net), spikeep.load_data(cfg)
    spikeep.relax(net, x, T), spikeep.ep_estimate(net, x, y)
    spikeep.Model(net, cfg)(x) -> class scores;  spikeep.load(RUN_DIR) -> Model;  spikeep.evaluate(RUN_DIR)
    spikeep.train(cfg, run_dir), spikeep.configs()
"""
import warnings

# Norse 1.1.0 compiles its functions with torch.jit.script at import, which newer PyTorch deprecates
# with a FutureWarning on every start; only that message is silenced, nothing else of torch or Norse
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

__all__ = ["load_config", "configs", "build_network", "learner", "load_data", "relax", "ep_estimate", "Model",
           "load", "evaluate", "train", "__version__"]


def __getattr__(name: str):
    # the version is looked up on first use: importing the package stays instant (cli installs its
    # signal handlers right after), with nothing in the way of a Ctrl-C at startup
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("spikeep")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0.0.0+unknown"
    if name in __all__:  # the API: torch and the rest are imported here, on first use
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'spikeep' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
