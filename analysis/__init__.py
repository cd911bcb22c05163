"""t2i-audit: audit text-to-image models for inappropriate degeneration and ethnic bias."""

from analysis.numerics import pin_mkl

pin_mkl()  # before anything imports torch: MKL fixes its kernels when it initialises

from analysis.hub import enforce_offline  # noqa: E402

enforce_offline()


def __getattr__(name: str) -> str:
    """__version__ on first use: importlib.metadata costs ~60 ms, a fifth of `--help`."""
    if name != "__version__":
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("t2i-audit")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+unknown"
