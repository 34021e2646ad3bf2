"""spikeep: Equilibrium Propagation on rate-coded (and spiking) networks."""


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
