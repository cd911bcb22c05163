"""Paper-ready static figures (matplotlib + seaborn), drawn from the same result CSVs as plotly.

Every builder takes DataFrames and returns a matplotlib Figure, so drawing is separate from
saving and tests can inspect the artists. Figures are sized for a column (3.3 in) or a page
(6.9 in), use seaborn's colour-blind-safe palette, and show n and 95% Wilson intervals.
`save_static` writes PDF, SVG and PNG with pinned metadata, so re-drawing gives the same bytes.
No figure needs the network: the world map is the bundled data/world_110m.json.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.errors import AuditError, require
from analysis.resources import DATA_DIR
from analysis.store.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMN_WIDTH = 3.3  # inches, one column of a two-column paper
PAGE_WIDTH = 6.9  # inches, full text width
ALPHA = 0.05
NO_DATA_COLOUR = "#d9d9d9"
MAP_CMAP = "Reds"  # sequential: the highest rate is the darkest country
TOPOJSON = DATA_DIR / "world_110m.json"
STATIC_FORMATS = ("pdf", "svg", "png")
_WRAP = np.array([360.0, 0.0])  # one turn of longitude
HASH_SALT = "t2i-audit"  # fixes the SVG element ids matplotlib would otherwise randomise
PAPER_RC: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.0,
    "pdf.fonttype": 42,  # embed TrueType so the text stays editable and searchable
    "svg.fonttype": "none",
    "svg.hashsalt": HASH_SALT,
}


def palette(n: int) -> list[tuple[float, float, float]]:
    """n colours from seaborn's colour-blind-safe palette (the first is the baseline's)."""
    sns = require("seaborn", "figures", "Paper figures")
    return list(sns.color_palette("colorblind", n_colors=max(n, 1)))


def interval_dots(
    ax: Any, x: Any, y: Any, low: Any, high: Any, *, colour: Any, label: str, gid: str
) -> None:
    """Points at x with horizontal intervals [low, high] (a missing bound draws no whisker)."""
    x = np.asarray(x, dtype=float)
    err = np.vstack([x - np.asarray(low, dtype=float), np.asarray(high, dtype=float) - x])
    ax.errorbar(
        x,
        y,
        xerr=np.nan_to_num(err),
        fmt="o",
        ms=3,
        color=colour,
        elinewidth=0.8,
        capsize=0,
        label=label,
        gid=gid,
    )


def new_figure(width: float, height: float) -> Figure:
    """A Figure not registered with pyplot, so building many never leaks global state."""
    require("matplotlib", "figures", "Paper figures")
    import matplotlib as mpl
    from matplotlib.figure import Figure

    with mpl.rc_context(PAPER_RC):
        return Figure(figsize=(width, height), layout="constrained")


_new_figure = new_figure  # older name, kept for callers outside this module


def _configs(rates: pd.DataFrame, baseline: str | None = None) -> list[str]:
    """Configs in file order, the baseline (default 'sd' when present) first."""
    configs = [str(c) for c in dict.fromkeys(rates["config"])]
    base = baseline if baseline in configs else ("sd" if "sd" in configs else configs[0])
    return [base, *[c for c in configs if c != base]]


def country_rates_figure(
    rates: pd.DataFrame, title: str = "", width: float = COLUMN_WIDTH, baseline: str | None = None
) -> Figure:
    """Nudity rate per country, one dot + Wilson bar per config, sorted by the baseline's rate.

    Countries run bottom (lowest baseline rate) to top; ties are broken by name so the order
    is reproducible. n is in the axis label when equal everywhere, else in each tick label.
    """
    import matplotlib as mpl
    from matplotlib.ticker import PercentFormatter

    rates = rates.assign(config=rates["config"].astype(str))
    configs = _configs(rates, baseline)
    base = rates[rates["config"] == configs[0]]
    order = base.sort_values(["rate", "country"], na_position="first")["country"].tolist()
    order += sorted(set(rates["country"]) - set(order))
    n_values = set(rates["n"].astype(int))
    labels = order
    if len(n_values) > 1:
        n_by = rates.pivot_table(index="country", columns="config", values="n", aggfunc="first")
        labels = [
            f"{c} (n={'/'.join(str(int(n_by.at[c, k])) for k in configs if k in n_by)})"
            for c in order
        ]
    colours = palette(len(configs))
    fig = new_figure(width, max(1.8, 0.18 * len(order) + 1.3))
    with mpl.rc_context(PAPER_RC):
        ax = fig.add_subplot()
        step = 0.6 / max(len(configs), 1)
        for i, config in enumerate(configs):
            sub = rates[rates["config"] == config].set_index("country").reindex(order)
            y = np.arange(len(order)) + (i - (len(configs) - 1) / 2) * step
            interval_dots(
                ax,
                sub["rate"],
                y,
                sub["ci_low"],
                sub["ci_high"],
                colour=colours[i],
                label=config,
                gid=f"rates-{config}",
            )
        ax.set_yticks(np.arange(len(order)), labels)
        ax.set_ylim(-0.7, len(order) - 0.3)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        n_note = (
            f"\n(n = {n_values.pop()} images per country and config)" if len(n_values) == 1 else ""
        )
        ax.set_xlabel(f"nudity rate, 95% Wilson interval{n_note}")
        ax.grid(axis="x", lw=0.4, alpha=0.5)
        fig.legend(loc="outside upper center", ncols=len(configs), frameon=False)
        if title:
            ax.set_title(title)
    return fig


def p_column(paired: pd.DataFrame) -> str:
    """`p_holm` (family-wise corrected) when present with values, else the raw `mcnemar_p`."""
    if "p_holm" in paired and paired["p_holm"].notna().any():
        return "p_holm"
    return "mcnemar_p"


def dumbbell_figure(
    paired: pd.DataFrame, title: str = "", width: float = COLUMN_WIDTH, alpha: float = ALPHA
) -> Figure:
    """SD -> mitigation per country on the same seeds; a star marks McNemar p < alpha.

    The legend names the p-value used (Holm-corrected when the column exists), so a reader
    knows whether the stars survive multiple testing.
    """
    import matplotlib as mpl
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import PercentFormatter

    paired = paired[paired["iso3"] != "ALL"].assign(config=lambda t: t["config"].astype(str))
    fig = new_figure(width, max(1.8, 0.18 * paired["iso3"].nunique() + 1.3))
    with mpl.rc_context(PAPER_RC):
        ax = fig.add_subplot()
        if paired.empty:
            ax.set_title(f"{title} (no paired configs)".strip())
            return fig
        baseline = str(paired["baseline"].iloc[0])
        first = paired.drop_duplicates("iso3")
        order = first.sort_values(["rate_baseline", "country"])["country"].tolist()
        configs = [str(c) for c in dict.fromkeys(paired["config"])]
        colours = palette(len(configs) + 1)
        pcol = p_column(paired)
        step = 0.6 / max(len(configs), 1)
        ys = {c: float(i) for i, c in enumerate(order)}
        sig_x: list[float] = []
        sig_y: list[float] = []
        ax.scatter([], [], s=10, color=colours[0], label=baseline)  # baseline first in legend
        for i, config in enumerate(configs):
            sub = paired[paired["config"] == config].set_index("country").reindex(order)
            y = np.arange(len(order)) + (i - (len(configs) - 1) / 2) * step
            xb, xc = sub["rate_baseline"].to_numpy(float), sub["rate_config"].to_numpy(float)
            segments = [[(a, yy), (b, yy)] for a, b, yy in zip(xb, xc, y, strict=True)]
            ax.add_collection(
                LineCollection(
                    segments,
                    colors=[colours[i + 1]],
                    linewidths=1.2,
                    alpha=0.7,
                    gid=f"dumbbell-{config}",
                )
            )
            ax.scatter(xb, y, s=10, color=colours[0], zorder=3)
            ax.scatter(xc, y, s=10, color=colours[i + 1], zorder=3, label=config)
            hit = (sub[pcol].to_numpy(float) < alpha) & np.isfinite(xc)
            sig_x += list(np.maximum(xb, xc)[hit])
            sig_y += list(y[hit])
        ax.scatter(
            np.asarray(sig_x) + 0.02,
            sig_y,
            marker="*",
            s=22,
            color="black",
            zorder=4,
            label=f"{pcol} < {alpha:g} (McNemar)",
            gid="significance",
        )
        ax.set_yticks(list(ys.values()), order)
        ax.set_ylim(-0.7, len(order) - 0.3)
        ax.set_xlim(left=0)
        ax.autoscale_view(scaley=False)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        n_pairs = set(paired["n_pairs"].astype(int)) if "n_pairs" in paired else set()
        n_note = f"\n(n = {n_pairs.pop()} seed pairs per country)" if len(n_pairs) == 1 else ""
        ax.set_xlabel(f"nudity rate, same seeds{n_note}")
        ax.grid(axis="x", lw=0.4, alpha=0.5)
        fig.legend(loc="outside upper center", ncols=2, frameon=False)
        if title:
            ax.set_title(title)
    return fig


def _topo_to_geojson(topo: dict, name: str = "countries") -> dict:
    """Decode one TopoJSON object to a GeoJSON FeatureCollection (fallback without GDAL)."""
    scale = topo.get("transform", {}).get("scale", [1.0, 1.0])
    shift = topo.get("transform", {}).get("translate", [0.0, 0.0])
    arcs = []
    for arc in topo["arcs"]:
        pts = np.asarray(arc, float)
        if "transform" in topo:
            pts = np.cumsum(pts, axis=0) * scale + shift  # quantised arcs are delta-coded
        arcs.append(pts)

    def ring(indexes: list[int]) -> list[list[float]]:
        out: list[list[float]] = []
        for k in indexes:
            pts = arcs[k] if k >= 0 else arcs[~k][::-1]
            out += pts[1:].tolist() if out else pts.tolist()  # shared endpoints once
        return out

    features = []
    for g in topo["objects"][name]["geometries"]:
        if g["type"] == "Polygon":
            geometry = {"type": "Polygon", "coordinates": [ring(r) for r in g["arcs"]]}
        elif g["type"] == "MultiPolygon":
            polys = [[ring(r) for r in poly] for poly in g["arcs"]]
            geometry = {"type": "MultiPolygon", "coordinates": polys}
        else:
            continue
        features.append(
            {"type": "Feature", "id": g.get("id"), "properties": {}, "geometry": geometry}
        )
    return {"type": "FeatureCollection", "features": features}


@lru_cache(maxsize=1)
def world_countries():
    """The bundled 1:110m countries as a GeoDataFrame keyed by ISO-3 `iso3` (no download)."""
    gpd = require("geopandas", "figures", "Paper maps")
    try:
        world = gpd.read_file(TOPOJSON, layer="countries")
    except Exception:  # GDAL without the TopoJSON driver: decode it here
        topo = json.loads(TOPOJSON.read_text(encoding="utf-8"))
        collection = _topo_to_geojson(topo)
        world = gpd.GeoDataFrame.from_features(collection["features"], crs="EPSG:4326")
        world["id"] = [f["id"] for f in collection["features"]]
    world = world.rename(columns={"id": "iso3"})[["iso3", "geometry"]]
    world = world[world["iso3"].notna() & (world["iso3"] != "ATA")]  # Antarctica: no data, space
    return world.reset_index(drop=True)


def _geometry_path(geom):
    """One compound matplotlib Path for a (multi)polygon, holes included (even-odd rings)."""
    from matplotlib.path import Path as MplPath

    polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    verts, codes = [], []
    for poly in polys:
        for ring in [poly.exterior, *poly.interiors]:
            xy = np.asarray(ring.coords, float)[:, :2].copy()
            xy[:, 0] = np.unwrap(xy[:, 0], period=360.0)  # rings crossing the antimeridian
            copies = [xy]
            if xy[:, 0].max() > 180:  # draw the part beyond the edge on the other side too
                copies.append(xy - _WRAP)
            if xy[:, 0].min() < -180:
                copies.append(xy + _WRAP)
            for part in copies:
                verts.append(part)
                codes += [MplPath.MOVETO] + [MplPath.LINETO] * (len(part) - 2)
                codes += [MplPath.CLOSEPOLY]
    return MplPath(np.concatenate(verts), codes)


def rate_map_figure(
    rates: pd.DataFrame,
    config: str,
    title: str = "",
    width: float = PAGE_WIDTH,
    vmax: float | None = None,
    value: str = "rate",
) -> Figure:
    """World choropleth of `value` for one config; one PathPatch per country (gid = ISO-3).

    Pass the same `vmax` for every config so the panels share one colour scale. Countries of
    the probe missing from the 1:110m map (small islands) are listed under the map.
    """
    import matplotlib as mpl
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.patches import Patch, PathPatch
    from matplotlib.ticker import PercentFormatter

    sub = rates[rates["config"].astype(str) == str(config)]
    values = dict(zip(sub["iso3"], sub[value].astype(float), strict=True))
    n = dict(zip(sub["iso3"], sub["n"], strict=True)) if "n" in sub else {}
    top = vmax if vmax is not None else float(np.nanmax([*values.values(), 0.0]))
    norm = Normalize(0.0, max(top, 0.1))  # readable ticks when every rate is ~0
    # Reds from 15%: a rate of 0 stays visibly "measured", apart from the white background
    cmap = ListedColormap(mpl.colormaps[MAP_CMAP](np.linspace(0.15, 1.0, 256)), name="rate")
    world = world_countries()
    fig = new_figure(width, width * 0.52)
    with mpl.rc_context(PAPER_RC):
        ax = fig.add_subplot()
        for row in world.itertuples():
            v = values.get(row.iso3, np.nan)
            colour = NO_DATA_COLOUR if not np.isfinite(v) else cmap(norm(v))
            ax.add_patch(
                PathPatch(
                    _geometry_path(row.geometry),
                    facecolor=colour,
                    edgecolor="white",
                    linewidth=0.2,
                    gid=row.iso3,
                )
            )
        ax.set_xlim(-180, 180)
        ax.set_ylim(-58, 85)
        ax.set_aspect("equal")
        ax.set_axis_off()
        bar = fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.6, pad=0.01, aspect=25
        )
        ns = {int(v) for v in n.values()}
        bar.set_label(f"nudity rate (n = {ns.pop()} per country)" if len(ns) == 1 else "rate")
        bar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.legend(
            handles=[Patch(facecolor=NO_DATA_COLOUR, label="no data")],
            loc="lower left",
            frameon=False,
        )
        missing = sorted(set(values) - set(world["iso3"]))
        if missing:
            shown = ", ".join(f"{c} {values[c]:.0%}" for c in missing)
            ax.text(
                0.0,
                -0.02,
                f"not on the 1:110m map: {shown}",
                transform=ax.transAxes,
                fontsize=6,
                va="top",
            )
        ax.set_title(title or str(config))
    return fig


def toxicity_figure(
    points: pd.DataFrame,
    correlation: pd.DataFrame | None = None,
    target: str = "inappropriate_percentage",
    width: float = COLUMN_WIDTH,
) -> Figure:
    """Prompt toxicity vs inappropriate images (%): hexbin of prompts, binned means with 95% t
    intervals, and Spearman's rho (from `correlation` when given, else computed here)."""
    import matplotlib as mpl
    from scipy import stats

    from analysis.i2p.correlation import TOXIC_THRESHOLD, binned_means

    x = points["prompt_toxicity"].to_numpy(float)
    y = points[target].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    varied = len(np.unique(x[ok])) > 1 and len(np.unique(y[ok])) > 1  # else rho is undefined
    rho = float(stats.spearmanr(x[ok], y[ok]).statistic) if varied else float("nan")
    low, high, n = None, None, int(ok.sum())
    if correlation is not None:
        row = correlation[(correlation["category"] == "all") & (correlation["target"] == target)]
        if not row.empty:
            r = row.iloc[0]
            rho, low, high, n = float(r["spearman_rho"]), r["ci_low"], r["ci_high"], int(r["n"])
    colours = palette(4)
    fig = new_figure(width, width * 0.8)
    with mpl.rc_context(PAPER_RC):
        ax = fig.add_subplot()
        hb = ax.hexbin(
            x[ok],
            y[ok],
            gridsize=(16, 5),
            extent=(0, 1, 0, 100),
            bins="log",
            mincnt=1,
            cmap="Greys",
            linewidths=0.2,
            edgecolors="white",
        )
        binned = binned_means(x[ok], y[ok])
        binned = binned[binned["n"] > 0]
        mid = ((binned["bin_low"] + binned["bin_high"]) / 2).to_numpy(float)
        mean = binned["mean"].to_numpy(float)
        err = np.vstack([mean - binned["ci_low"], binned["ci_high"] - mean])
        ax.errorbar(
            mid,
            mean,
            yerr=np.nan_to_num(err),
            fmt="o-",
            ms=3,
            color=colours[3],
            elinewidth=0.8,
            capsize=1.5,
            label="binned mean (95% CI)",
            gid="binned-means",
        )
        ax.axvline(TOXIC_THRESHOLD, ls=":", color="grey", lw=0.8)
        interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
        shown = f"{rho:.2f}{interval}" if np.isfinite(rho) else "undefined (constant input)"
        ax.set_title(f"Spearman ρ = {shown}, n = {n} prompts", gid="spearman")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-6, 106)
        ax.set_xlabel("prompt toxicity (Perspective API)")
        ax.set_ylabel("inappropriate images per prompt (%)")
        ax.legend(loc="upper left", framealpha=0.9)
        fig.colorbar(hb, ax=ax, label="prompts", pad=0.01)
    return fig


def i2p_table_figure(table: pd.DataFrame, width: float = PAGE_WIDTH) -> Figure:
    """Table 1 as grouped bars: inappropriate probability per category and config, Wilson CIs."""
    import matplotlib as mpl

    categories = list(dict.fromkeys(table["category"]))
    configs = [str(c) for c in dict.fromkeys(table["config"])]
    colours = palette(len(configs))
    fig = new_figure(width, 2.4)
    with mpl.rc_context(PAPER_RC):
        ax = fig.add_subplot()
        w = 0.8 / len(configs)
        for i, config in enumerate(configs):
            part = table[table["config"].astype(str) == config].set_index("category")
            part = part.reindex(categories)
            p = part["inappropriate_probability"].to_numpy(float)
            err = np.vstack([p - part["ci_low"].to_numpy(float), part["ci_high"] - p])
            ax.bar(
                np.arange(len(categories)) + (i - (len(configs) - 1) / 2) * w,
                p,
                width=w,
                color=colours[i],
                yerr=np.nan_to_num(err),
                error_kw={"elinewidth": 0.7, "capsize": 1.5},
                label=config,
                gid=f"bars-{config}",
            )
        ax.set_xticks(np.arange(len(categories)), categories, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("inappropriate probability")
        ax.legend(
            title="config (95% Wilson CI)",
            ncols=min(len(configs), 4),
            frameon=False,
            loc="upper left",
        )
        ax.grid(axis="y", lw=0.4, alpha=0.5)
    return fig


def save_static(
    fig: Figure, out_base: str | Path, formats: tuple[str, ...] = STATIC_FORMATS, dpi: int = 300
) -> list[Path]:
    """Write out_base.pdf/.svg/.png; dates and software stamps are dropped and the SVG id salt
    is fixed, so drawing the same data twice writes byte-identical files. A figure written
    into a run whose model carries a notice (the toy model) shows it as a footnote."""
    import matplotlib as mpl

    from analysis.figures.notice import notice_for_output, stamp_matplotlib

    out_base = Path(out_base)
    stamp_matplotlib(fig, notice_for_output(out_base))
    out_base.parent.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, dict[str, Any]] = {
        "pdf": {"CreationDate": None, "ModDate": None},
        "svg": {"Date": None},
        "png": {"Software": None},
    }
    written = []
    for fmt in formats:
        if fmt not in metadata:
            raise AuditError(f"unknown static figure format {fmt!r}; use pdf, svg or png")
        buf = io.BytesIO()
        with mpl.rc_context({"svg.hashsalt": HASH_SALT, "svg.fonttype": "none"}):
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata[fmt])
        path = out_base.with_name(f"{out_base.name}.{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def draw_i2p_paper(folder: str | Path) -> list[Path]:
    """Paper versions of the I2P figures and Table 1 (.tex) from the CSVs in `folder`."""
    from analysis.figures.i2p import CORRELATION_FILE, POINTS_FILE, TABLE_FILE
    from analysis.figures.latex import i2p_table_tex, write_tex

    folder = Path(folder)
    written: list[Path] = []
    if (folder / POINTS_FILE).is_file():
        points = pd.read_csv(folder / POINTS_FILE)
        corr_file = folder / CORRELATION_FILE
        corr = pd.read_csv(corr_file) if corr_file.is_file() else None
        written += save_static(toxicity_figure(points, corr), folder / "paper_toxicity")
    if (folder / TABLE_FILE).is_file():
        table = pd.read_csv(folder / TABLE_FILE)
        if not table.empty:
            written += save_static(i2p_table_figure(table), folder / "paper_i2p_table")
            written.append(write_tex(i2p_table_tex(table), folder / "i2p_table.tex"))
    return written
