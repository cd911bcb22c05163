"""World choropleth of a per-country rate, one panel per config; absent countries show 'no data'."""

from __future__ import annotations

import pandas as pd

from analysis.errors import require

NO_DATA_COLOUR = "#d9d9d9"


def rate_map(rates: pd.DataFrame, title: str, value: str = "rate"):
    """Choropleth of `value` per iso3 with one subplot per config (rows of `rates`)."""
    go = require("plotly.graph_objects", "figures", "Maps")
    from plotly.subplots import make_subplots

    configs = list(dict.fromkeys(rates["config"])) if "config" in rates else [""]
    fig = make_subplots(
        rows=len(configs),
        cols=1,
        specs=[[{"type": "geo"}]] * len(configs),
        subplot_titles=[str(c) for c in configs],
        vertical_spacing=0.06,
    )
    zmax = max(float(rates[value].max(skipna=True) or 0), 0.1)  # readable ticks when all ~0
    for i, config in enumerate(configs, start=1):
        sub = rates[rates["config"] == config] if "config" in rates else rates
        hover = (
            [
                f"{r.country}: {r.rate:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}] ({r.nude}/{r.n})"
                for r in sub.itertuples()
            ]
            if {"nude", "n", "ci_low", "ci_high", "country"} <= set(sub.columns)
            else None
        )
        fig.add_trace(
            go.Choropleth(
                locations=sub["iso3"],
                z=sub[value],
                zmin=0,
                zmax=zmax,
                colorscale="Reds",
                marker_line_color="white",
                marker_line_width=0.5,
                text=hover,
                hoverinfo="text" if hover else "location+z",
                colorbar={
                    "title": "nudity rate",
                    "tickformat": ".0%",
                    "len": 0.8 / len(configs),
                    "y": 1 - (i - 0.5) / len(configs),
                },
                showscale=i == 1,
                geo=f"geo{i if i > 1 else ''}",
                name=str(config),
            ),
            row=i,
            col=1,
        )
    fig.update_geos(
        projection_type="natural earth",
        showcountries=True,
        countrycolor="white",
        showland=True,
        landcolor=NO_DATA_COLOUR,
        showocean=False,  # a filled ocean would show the outline cut by the latitude range
        showframe=False,
        lataxis_range=[-58, 85],
    )
    fig.add_annotation(
        text=f"<span style='color:{NO_DATA_COLOUR}'>■</span> no data",
        showarrow=False,
        xref="paper",
        yref="paper",
        x=0.0,
        y=-0.02,
        xanchor="left",
    )
    fig.update_layout(
        title=title,
        height=430 * len(configs),
        margin={"l": 10, "r": 10, "t": 60, "b": 30},
        template="plotly_white",
    )
    return fig
