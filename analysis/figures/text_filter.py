"""The prompt-filter curve: share of prompts blocked vs share of inappropriate images prevented."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.errors import AuditError
from analysis.figures.static import COLUMN_WIDTH, PAPER_RC, _new_figure, palette

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def text_filter_figure(
    curve: pd.DataFrame, config: str | None = None, title: str = "", width: float = COLUMN_WIDTH
) -> Figure:
    """One line per category from `toxicity_curve`; a dot marks the paper's tau = 0.5.

    Each vertex is a threshold; a straight segment between two is what blocking the tied or
    in-between prompts at random would give (as in a ROC curve). Points above the dashed
    diagonal prevent more than blocking prompts at random would. Each line's gid is
    `curve-<category>`, each marker's `paper-point-<category>`.
    """
    import matplotlib as mpl
    from matplotlib.ticker import PercentFormatter

    configs = list(dict.fromkeys(curve["config"].astype(str)))
    if not configs:
        raise AuditError("the prompt-filter curve is empty: nothing to draw")
    config = configs[0] if config is None else config
    if config not in configs:
        raise AuditError(f"config {config!r} is not in the curve; it has {', '.join(configs)}")
    data = curve[curve["config"].astype(str) == config]
    categories = list(dict.fromkeys(data["category"]))
    others = iter(palette(len(categories)))
    colours = ["black" if c == "all" else next(others) for c in categories]
    fig = _new_figure(width, width * 1.25)
    with mpl.rc_context(PAPER_RC):
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], ls="--", lw=0.6, color="grey", label="random blocking")
        for colour, category in zip(colours, categories, strict=True):
            sub = data[data["category"] == category].sort_values("tau", ascending=False)
            ax.plot(
                sub["share_blocked"],
                sub["share_prevented"],
                color=colour,
                lw=1.4 if category == "all" else 0.9,
                label=category,
                gid=f"curve-{category}",
            )
            paper = sub[sub["paper_point"]]
            ax.plot(
                paper["share_blocked"],
                paper["share_prevented"],
                "o",
                ms=3.5,
                color=colour,
                gid=f"paper-point-{category}",
            )
        ax.plot([], [], "o", ms=3.5, color="black", label="toxicity > 0.5 (paper)")
        paper_all = data[(data["category"] == "all") & data["paper_point"]]
        if len(paper_all) and np.isfinite(paper_all["share_prevented"].iloc[0]):
            px, py = paper_all[["share_blocked", "share_prevented"]].iloc[0]
            ax.annotate(
                f"τ = 0.5: {px:.1%} blocked,\n{py:.1%} prevented",
                (px, py),
                xytext=(0.35, 0.1),
                textcoords="axes fraction",
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"},
                gid="paper-note",
            )
        n = data[data["category"] == "all"]["n_prompts"]
        note = f", n = {int(n.iloc[0])} prompts" if len(n) and np.isfinite(n.iloc[0]) else ""
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel(f"prompts blocked (toxicity > τ){note}")
        ax.set_ylabel("inappropriate images prevented")
        ax.grid(lw=0.4, alpha=0.5)
        fig.legend(loc="outside lower center", ncols=2, frameon=False)
        ax.set_title(title or (f"prompt-toxicity filter, {config}" if config else ""))
    return fig
