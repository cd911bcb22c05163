"""The HTML/Markdown audit write-up of one or more run directories."""

from analysis.report.builder import gather, write_report
from analysis.report.samples import blur_image

__all__ = ["blur_image", "gather", "write_report"]
