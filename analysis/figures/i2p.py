"""I2P figures: toxicity vs inappropriateness (hexbin + binned means) and Table 1 as a chart.

Both are drawn from the CSV files the `i2p` commands write, so `t2i-audit figures` can redraw them
without the dataset, a GPU or the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import AuditError, require

POINTS_FILE = "toxicity_points.csv"
CORRELATION_FILE = "toxicity_correlation.csv"
TABLE_FILE = "i2p_table.csv"
FIGURE_STEM = "toxicity_correlation"
TABLE_FIGURE_STEM = "i2p_table_chart"
TARGET_LABELS = {
    "inappropriate_percentage": "inappropriate (Q16 or NudeNet)",
    "nudity_percentage": "nudity (NudeNet)",
    "q16_percentage": "Q16",
}


def hexbin_counts(
    x: np.ndarray,
    y: np.ndarray,
    nx: int,
    extent: tuple[float, float, float, float],
    ny: int | None = None,
) -> pd.DataFrame:
    """Hexagonal binning on two offset lattices (as matplotlib's hexbin): centre and count.

    Lattice A has centres at (xmin + i sx, ymin + j sy), lattice B is offset by half a cell in
    both directions; a point goes to the nearer centre (y distances weighted by 3, which makes
    the cells regular hexagons in grid units). Returns one row per non-empty hexagon: centre
    (cx, cy), count, and the cell size (sx, sy) in data units; the vertices are
    (cx +- sx/2, cy +- sy/6) and (cx, cy +- sy/3).
    """
    xmin, xmax, ymin, ymax = extent
    ny = ny or max(1, round(nx / np.sqrt(3)))
    sx = (xmax - xmin) / nx
    sy = (ymax - ymin) / ny
    gx = (np.asarray(x, float) - xmin) / sx
    gy = (np.asarray(y, float) - ymin) / sy
    ix1, iy1 = np.round(gx), np.round(gy)
    ix2, iy2 = np.floor(gx) + 0.5, np.floor(gy) + 0.5
    d1 = (gx - ix1) ** 2 + 3.0 * (gy - iy1) ** 2
    d2 = (gx - ix2) ** 2 + 3.0 * (gy - iy2) ** 2
    first = d1 <= d2
    cx = np.where(first, ix1, ix2) * sx + xmin
    cy = np.where(first, iy1, iy2) * sy + ymin
    cells = pd.DataFrame({"cx": np.round(cx, 12), "cy": np.round(cy, 12)})
    counts = cells.value_counts().rename("count").reset_index()
    counts["sx"] = sx
    counts["sy"] = sy
    return counts.sort_values(["cy", "cx"]).reset_index(drop=True)


def hex_vertices(cx: float, cy: float, sx: float, sy: float) -> list[tuple[float, float]]:
    """The six corners of the cell centred at (cx, cy) on a lattice of spacing (sx, sy)."""
    return [
        (cx + sx / 2, cy - sy / 6),
        (cx + sx / 2, cy + sy / 6),
        (cx, cy + sy / 3),
        (cx - sx / 2, cy + sy / 6),
        (cx - sx / 2, cy - sy / 6),
        (cx, cy - sy / 3),
    ]


def _hex_path(cx: float, cy: float, sx: float, sy: float) -> str:
    pts = hex_vertices(cx, cy, sx, sy)
    return "M " + " L ".join(f"{px:.6g},{py:.6g}" for px, py in pts) + " Z"


def correlation_figure(points: pd.DataFrame, correlation: pd.DataFrame | None = None):
    """Hexbin of every prompt (toxicity vs inappropriate %) under binned means with 95% CIs."""
    go = require("plotly.graph_objects", "figures", "I2P figures")
    from plotly.colors import sample_colorscale

    from analysis.i2p.correlation import TOXIC_THRESHOLD, binned_means

    x = points["prompt_toxicity"].to_numpy(float)
    y = points["inappropriate_percentage"].to_numpy(float)
    # Percentages over 10 images are multiples of 10: ny = 5 puts 0, 20, .. on lattice A and
    # 10, 30, .. on lattice B, so every observed value sits on a cell centre (a full honeycomb).
    hexes = hexbin_counts(x, y, nx=16, extent=(0.0, 1.0, 0.0, 100.0), ny=5)
    logc = np.log10(hexes["count"].to_numpy(float))
    top = max(float(logc.max()), 1e-9)
    colors = sample_colorscale("Blues", list(0.15 + 0.85 * logc / top))
    stops = np.linspace(0.0, 1.0, 11)
    scale = [
        [float(t), c]
        for t, c in zip(stops, sample_colorscale("Blues", list(0.15 + 0.85 * stops)), strict=True)
    ]
    shapes = [
        {
            "type": "path",
            "path": _hex_path(r.cx, r.cy, r.sx, r.sy),
            "fillcolor": color,
            "line": {"width": 0.3, "color": "white"},
            "layer": "below",
        }
        for r, color in zip(hexes.itertuples(), colors, strict=True)
    ]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=hexes["cx"],
            y=hexes["cy"],
            mode="markers",
            marker={
                "size": 1,
                "opacity": 0,
                "color": logc,
                "colorscale": scale,
                "cmin": 0,
                "cmax": top,
                "showscale": True,
                "colorbar": {
                    "title": {"text": "prompts"},
                    "tickvals": list(range(int(np.ceil(top)) + 1)),
                    "ticktext": [str(10**t) for t in range(int(np.ceil(top)) + 1)],
                },
            },
            text=[f"{c} prompts" for c in hexes["count"]],
            hovertemplate="toxicity %{x:.2f}<br>inappropriate %{y:.0f}%<br>%{text}<extra></extra>",
            name="prompts (hexbin)",
            showlegend=False,
        )
    )
    styles = {
        "inappropriate_percentage": ("#d62728", True),
        "nudity_percentage": ("#9467bd", "legendonly"),
        "q16_percentage": ("#2ca02c", "legendonly"),
    }
    for target, (color, visible) in styles.items():
        if target not in points:
            continue
        binned = binned_means(x, points[target].to_numpy(float))
        binned = binned[binned["n"] > 0]
        mid = (binned["bin_low"] + binned["bin_high"]) / 2
        fig.add_trace(
            go.Scatter(
                x=mid,
                y=binned["mean"],
                mode="lines+markers",
                visible=visible,
                line={"color": color, "width": 2},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (binned["ci_high"] - binned["mean"]).fillna(0),
                    "arrayminus": (binned["mean"] - binned["ci_low"]).fillna(0),
                    "color": color,
                },
                customdata=np.stack([binned["n"], binned["bin_low"], binned["bin_high"]], axis=1),
                hovertemplate=(
                    "toxicity [%{customdata[1]:.1f}, %{customdata[2]:.1f}): mean %{y:.1f}%"
                    "<br>%{customdata[0]} prompts<extra></extra>"
                ),
                name=f"mean {TARGET_LABELS[target]} % (95% CI)",
            )
        )
    fig.add_vline(
        x=TOXIC_THRESHOLD,
        line={"dash": "dot", "color": "grey"},
        annotation_text="toxic > 0.5",
        annotation_position="top right",
    )
    title = "I2P: prompt toxicity vs share of inappropriate SD 1.4 images"
    if correlation is not None:
        row = correlation[
            (correlation["category"] == "all")
            & (correlation["target"] == "inappropriate_percentage")
        ]
        if not row.empty:
            r = row.iloc[0]
            title += (
                f"<br><sup>Spearman ρ = {r['spearman_rho']:.2f} "
                f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}], n = {int(r['n'])}; "
                f"{100 * r['share_toxic']:.1f}% of prompts have toxicity > 0.5</sup>"
            )
    fig.update_layout(
        title={"text": title},
        shapes=list(fig.layout.shapes) + shapes,
        xaxis={"title": {"text": "prompt toxicity (Perspective API)"}, "range": [-0.02, 1.02]},
        yaxis={"title": {"text": "inappropriate images per prompt (%)"}, "range": [-6, 106]},
        template="plotly_white",
        width=900,
        height=600,
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def table_figure(table: pd.DataFrame):
    """Inappropriate probability per category, one bar per config, with Wilson intervals."""
    go = require("plotly.graph_objects", "figures", "I2P figures")
    fig = go.Figure()
    for config in dict.fromkeys(table["config"]):
        part = table[table["config"] == config]
        fig.add_trace(
            go.Bar(
                x=part["category"],
                y=part["inappropriate_probability"],
                name=f"{config} ({part['source'].iloc[0]})",
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": part["ci_high"] - part["inappropriate_probability"],
                    "arrayminus": part["inappropriate_probability"] - part["ci_low"],
                },
                customdata=np.stack([part["exp_max_mean"], part["exp_max_std"]], axis=1),
                hovertemplate=(
                    "%{x}: %{y:.3f}<br>exp. max %{customdata[0]:.2f} ± %{customdata[1]:.2f}"
                    "<extra></extra>"
                ),
            )
        )
    fig.update_layout(
        barmode="group",
        title={"text": "I2P inappropriate probability per category (95% Wilson CI)"},
        yaxis={"title": {"text": "inappropriate probability"}, "range": [0, 1]},
        template="plotly_white",
        width=900,
        height=500,
    )
    return fig


def draw_figures(path: Path) -> list[Path]:
    """Redraw every I2P figure whose data files are in `path` or `path/results` (a run or a dir)."""
    from analysis.figures.export import save_figure

    path = Path(path)
    written: list[Path] = []
    for folder in (path, path / "results"):
        points_file = folder / POINTS_FILE
        if points_file.is_file():
            points = pd.read_csv(points_file)
            corr_file = folder / CORRELATION_FILE
            corr = pd.read_csv(corr_file) if corr_file.is_file() else None
            written += save_figure(correlation_figure(points, corr), folder / FIGURE_STEM)
        table_file = folder / TABLE_FILE
        if table_file.is_file():
            table = pd.read_csv(table_file)
            if table.empty:
                raise AuditError(f"{table_file} is empty: re-run `t2i-audit i2p table`")
            written += save_figure(table_figure(table), folder / TABLE_FIGURE_STEM)
        if points_file.is_file() or table_file.is_file():
            from analysis.figures.static import draw_i2p_paper

            written += draw_i2p_paper(folder)  # matplotlib PDF/SVG/PNG and Table 1 as .tex
    return written
