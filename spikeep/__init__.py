"""spikeep: FreeEquilibrium Propagation on rate-coded (and spiking) networks."""
import warnings

# Norse 1.1.0 compiles its functions with torch.jit.script at import, which newer PyTorch deprecates
# with a FutureWarning on every start; only that message is silenced, nothing else of torch or Norse
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def __getattr__(name: str):
    # the version is looked up on first use: importing the package stays instant (cli installs its
    # signal handlers right after), with nothing in the way of a Ctrl-C at startup
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("spikeep")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0.0.0+unknown"
    raise AttributeError(f"module 'spikeep' has no attribute {name!r}")
