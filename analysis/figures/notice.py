"""A run's notice (the toy model's "planted rates, not a finding") stamped on every figure of it.

The manifest of a run made with a model that carries a notice records it as
`manifest["model"]["notice"]`. A figure cut out of the report (a PNG pasted into slides, a map
shared alone) must still say it, so the notice is put on the figure itself, not only beside
it. The two savers (`export.save_figure` for plotly, `static.save_static` for matplotlib)
look it up from where they write: a figure saved in a run folder or one level below it
(RUN/figures, RUN/results, RUN/i2p) is a figure of that run. A figure of a run with no
notice is left exactly as it was drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.errors import AuditError
from analysis.store import RunDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NOTICE_GID = "run-notice"  # the matplotlib text artist's id (also an SVG element id)
NOTICE_COLOUR = "#b2182b"


def manifest_notice(manifest: dict[str, Any], where: Path | str) -> str | None:
    """`manifest["model"]["notice"]`, checked: text or absent (else one line naming `where`)."""
    model = manifest.get("model")
    if model is None:
        return None
    if not isinstance(model, dict):
        raise AuditError(f"{where}: 'model' must be a JSON object, not {type(model).__name__}")
    notice = model.get("notice")
    if notice is None:
        return None
    if not isinstance(notice, str) or not notice.strip():
        raise AuditError(f"{where}: model.notice must be non-empty text, not {notice!r:.60}")
    return " ".join(notice.split())


def run_notice(run: str | Path) -> str | None:
    """The notice of the run at `run`, or None when it has none (or `run` has no manifest)."""
    rundir = RunDir(run)
    if not rundir.manifest_path.is_file():
        return None
    return manifest_notice(rundir.read_manifest(), rundir.manifest_path)


def notice_for_output(out_base: str | Path) -> str | None:
    """The notice of the run a figure written at `out_base` belongs to: the nearest folder
    holding a manifest.json, looking at most one level above the figure's own folder."""
    folder = Path(out_base).parent
    for candidate in (folder, folder.parent):
        if (candidate / "manifest.json").is_file():
            return run_notice(candidate)
    return None


def stamp_plotly(fig: Any, notice: str | None) -> Any:
    """Put `notice` under the plotly figure's title (once); None leaves the figure as it is."""
    if not notice:
        return fig
    title = fig.layout.title.text or ""
    if notice in title:
        return fig
    line = f"<sup style='color:{NOTICE_COLOUR}'>{notice}</sup>"
    fig.update_layout(title_text=f"{title}<br>{line}" if title else line)
    top = fig.layout.margin.t
    if top is not None and top < 80:  # room for the second title line
        fig.update_layout(margin_t=80)
    return fig


def stamp_matplotlib(fig: Figure, notice: str | None) -> Figure:
    """Put `notice` as a footnote across the bottom of the figure (once; laid out with it)."""
    if not notice or any(t.get_gid() == NOTICE_GID for t in fig.texts):
        return fig
    existing = getattr(fig, "_supxlabel", None)  # a figure's own footer keeps its place
    if existing is not None:
        label = fig.text(0.5, 0.0, notice, ha="center", va="bottom", fontsize=6)
    else:
        label = fig.supxlabel(notice, fontsize=6, wrap=True)
    label.set_color(NOTICE_COLOUR)
    label.set_gid(NOTICE_GID)
    return fig
