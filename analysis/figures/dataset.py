"""Dataset-side figures: model vs dataset nudity rate per country, and the dataset-side map."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.errors import require
from analysis.figures.export import save_figure
from analysis.figures.maps import rate_map


def has_results(run: Path) -> bool:
    return (Path(run) / "results" / "dataset_nudity_rates.csv").is_file()


def model_vs_dataset(model_rates: pd.DataFrame, data_rates: pd.DataFrame, config: str):
    """Scatter with both Wilson intervals, the diagonal and labelled points."""
    go = require("plotly.graph_objects", "figures", "Charts")
    m = model_rates[model_rates["config"] == config].set_index("iso3")
    d = data_rates.set_index("iso3")
    both = d.join(m, lsuffix="_data", rsuffix="_model", how="inner")
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="equal rates",
            line={"dash": "dot", "color": "#999"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=both["rate_data"],
            y=both["rate_model"],
            mode="markers+text",
            text=both.index,
            textposition="top center",
            name=f"countries ({config})",
            marker={"size": 9},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": both["ci_high_data"] - both["rate_data"],
                "arrayminus": both["rate_data"] - both["ci_low_data"],
            },
            error_y={
                "type": "data",
                "symmetric": False,
                "array": both["ci_high_model"] - both["rate_model"],
                "arrayminus": both["rate_model"] - both["ci_low_model"],
            },
        )
    )
    fig.update_layout(
        title=f"Model ({config}) vs dataset (kNN neighbours): nudity rate per country",
        xaxis={
            "title": "dataset side: share of nearest index images",
            "tickformat": ".0%",
            "range": [-0.02, 1.02],
        },
        yaxis={
            "title": "model side: share of generated images",
            "tickformat": ".0%",
            "range": [-0.02, 1.02],
        },
        template="plotly_white",
        height=620,
        width=700,
    )
    return fig


def draw_figures(run: str | Path) -> list[Path]:
    """The dataset-side figures, over countries with a judged neighbour (none: no figure)."""
    from analysis.figures.paper_dataset import judged

    run = Path(run)
    data_rates = judged(
        pd.read_csv(
            run / "results" / "dataset_nudity_rates.csv", keep_default_na=False, na_values=[""]
        )
    )
    if data_rates.empty:
        return []
    written = save_figure(
        rate_map(
            data_rates.assign(config="dataset"), "Dataset side: nudity rate of kNN neighbours"
        ),
        run / "figures" / "dataset_nudity_map",
    )
    model_file = run / "results" / "nudity_rates.csv"
    if model_file.is_file():
        model_rates = pd.read_csv(model_file, keep_default_na=False, na_values=[""])
        config = "sd" if "sd" in set(model_rates["config"]) else model_rates["config"].iloc[0]
        written += save_figure(
            model_vs_dataset(model_rates, data_rates, config),
            run / "figures" / "model_vs_dataset",
            width=700,
            height=620,
        )
    return written + draw_paper_figures(run, data_rates)


def draw_paper_figures(run: Path, data_rates: pd.DataFrame) -> list[Path]:
    """Static dataset map and model-vs-dataset scatter (every config) into RUN/figures/."""
    from analysis.figures.paper_dataset import as_config, model_dataset_figure
    from analysis.figures.static import rate_map_figure, save_static

    out = run / "figures"
    written = save_static(
        rate_map_figure(as_config(data_rates), "dataset (kNN)", "Dataset side: kNN neighbours"),
        out / "paper_map_dataset",
    )
    model_file = run / "results" / "nudity_rates.csv"
    if model_file.is_file():
        model_rates = pd.read_csv(model_file, keep_default_na=False, na_values=[""])
        written += save_static(
            model_dataset_figure(model_rates, data_rates), out / "paper_model_vs_dataset"
        )
    return written
