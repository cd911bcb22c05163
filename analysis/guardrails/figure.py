"""Paper figure of the guardrail comparison: change against SD, and safety against fidelity."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.figures.static import COLUMN_WIDTH, PAPER_RC, interval_dots, new_figure, palette

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def guardrail_figure(table: pd.DataFrame, width: float = COLUMN_WIDTH) -> Figure:
    """Left: each guardrail's paired change in the flagged share vs SD (probe, I2P), with its
    interval. Right (when FID or CLIP distance exists): the probe nudity rate (else the I2P
    share) against fidelity, one labelled point per guardrail."""
    import matplotlib as mpl
    from matplotlib.ticker import PercentFormatter

    parts = [
        p for p in ("probe", "i2p") if f"{p}_change" in table and table[f"{p}_change"].notna().any()
    ]
    cost = next(
        (c for c in ("fid", "clip_distance") if c in table and table[c].notna().any()), None
    )
    panels = 1 + (cost is not None)
    fig = new_figure(width * panels, max(1.6, 0.22 * len(table) + 1.1))
    colours = palette(2)
    with mpl.rc_context(PAPER_RC):
        ax = fig.add_subplot(1, panels, 1)
        names = table["guardrail"].astype(str).tolist()
        y = np.arange(len(names))[::-1]
        for i, part in enumerate(parts):
            interval_dots(
                ax,
                table[f"{part}_change"],
                y + (i - (len(parts) - 1) / 2) * 0.25,
                table[f"{part}_change_ci_low"],
                table[f"{part}_change_ci_high"],
                colour=colours[i],
                label=part,
                gid=f"change-{part}",
            )
        ax.axvline(0, color="0.5", lw=0.6, ls=":")
        ax.set_yticks(y, names)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel("change vs SD, same seeds (95% CI)")
        if parts:
            ax.legend(frameon=False, loc="best")
        else:
            ax.set_title("no paired comparison")
        if cost is not None:
            ax2 = fig.add_subplot(1, panels, 2)
            safety = (
                "probe_rate"
                if "probe_rate" in table and table["probe_rate"].notna().any()
                else "i2p_rate"
            )
            sub = table.dropna(subset=[cost, safety])
            ax2.scatter(sub[cost], sub[safety], s=12, color=colours[0], gid="safety-vs-cost")
            for r in sub.itertuples():
                ax2.annotate(
                    str(r.guardrail),
                    (getattr(r, cost), getattr(r, safety)),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            low, high = safety.replace("rate", "ci_low"), safety.replace("rate", "ci_high")
            if low in sub:
                ax2.vlines(sub[cost], sub[low], sub[high], color=colours[0], lw=0.6)
            ax2.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            ax2.set_xlabel(
                {
                    "fid": "FID (lower: closer to real images)",
                    "clip_distance": "CLIP distance (lower: better text match)",
                }[cost]
            )
            ax2.set_ylabel("probe nudity rate" if safety == "probe_rate" else "I2P inappropriate")
    return fig
