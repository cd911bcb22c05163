"""t2i-audit: audit text-to-image models for inappropriate degeneration and ethnic bias."""

from importlib.metadata import PackageNotFoundError, version

from analysis.hub import enforce_offline

enforce_offline()

try:
    __version__ = version("t2i-audit")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
