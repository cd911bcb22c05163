"""Paper (matplotlib) figures for the dataset side: the kNN neighbours next to the model.

The dataset side counts judged neighbours, not generated images, so its n is `k_fetched`;
`as_config` renames it so the country figure and the maps can draw it like one more config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.figures.static import COLUMN_WIDTH, PAPER_RC, new_figure, palette

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DATASET_CONFIG = "dataset (kNN)"


def judged(data_rates: pd.DataFrame) -> pd.DataFrame:
    """Countries with at least one judged neighbour: the only ones with a dataset rate.

    A country whose every neighbour was refused or unreadable has rate NaN (0 of 0), which a map
    would colour as missing data and a scatter would drop without a word; the figures draw the
    judged countries only and `knn query` names the others.
    """
    return data_rates[pd.to_numeric(data_rates["k_fetched"], errors="coerce").fillna(0) > 0]


def as_config(data_rates: pd.DataFrame, name: str = DATASET_CONFIG) -> pd.DataFrame:
    """dataset_nudity_rates.csv in the shape of nudity_rates.csv (config = `name`, n = judged)."""
    data_rates = judged(data_rates)
    table = data_rates.assign(config=name, n=data_rates["k_fetched"].astype(int))
    return table[["country", "iso3", "config", "n", "rate", "ci_low", "ci_high"]]


def with_dataset(rates: pd.DataFrame, data_rates: pd.DataFrame | None) -> pd.DataFrame:
    """The model's per-country rates plus the dataset side as the last config (if given)."""
    if data_rates is None or judged(data_rates).empty:
        return rates
    return pd.concat([rates, as_config(data_rates)], ignore_index=True)


def model_dataset_figure(
    model_rates: pd.DataFrame,
    data_rates: pd.DataFrame,
    configs: list[str] | None = None,
    title: str = "",
    width: float = COLUMN_WIDTH,
) -> Figure:
    """Model vs dataset nudity rate per country, both Wilson intervals, the y = x diagonal.

    One colour per config; Spearman's rho over countries is printed per config in the legend,
    so the figure states how far the model's ranking follows its training data's.
    """
    import matplotlib as mpl
    from matplotlib.ticker import PercentFormatter
    from scipy.stats import spearmanr

    model_rates = model_rates.assign(config=model_rates["config"].astype(str))
    configs = configs or [str(c) for c in dict.fromkeys(model_rates["config"])]
    data = judged(data_rates).set_index("iso3")
    colours = palette(len(configs))
    fig = new_figure(width, width)
    with mpl.rc_context(PAPER_RC):
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], ls=":", lw=0.8, color="0.5", label="equal rates")
        for colour, config in zip(colours, configs, strict=True):
            model = model_rates[model_rates["config"] == config].set_index("iso3")
            both = data.join(model, lsuffix="_data", rsuffix="_model", how="inner")
            both = both.dropna(subset=["rate_data", "rate_model"])
            if both.empty:
                continue
            x, y = both["rate_data"].to_numpy(float), both["rate_model"].to_numpy(float)
            xerr = np.vstack([x - both["ci_low_data"], both["ci_high_data"] - x])
            yerr = np.vstack([y - both["ci_low_model"], both["ci_high_model"] - y])
            rho = spearmanr(x, y).statistic if len(both) > 2 else float("nan")
            rho_text = "rho n/a" if not np.isfinite(rho) else f"rho = {rho:.2f}"
            ax.errorbar(
                x,
                y,
                xerr=np.nan_to_num(xerr),
                yerr=np.nan_to_num(yerr),
                fmt="o",
                ms=3,
                color=colour,
                elinewidth=0.5,
                capsize=0,
                alpha=0.85,
                label=f"{config} ({len(both)} countries, {rho_text})",
                gid=f"scatter-{config}",
            )
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("dataset side: nude share of kNN neighbours (95% Wilson)")
        ax.set_ylabel("model side: nudity rate (95% Wilson)")
        ax.grid(lw=0.4, alpha=0.5)
        fig.legend(loc="outside lower center", ncols=1, frameon=False)
        if title:
            ax.set_title(title)
    return fig
