"""The files the `i2p correlate` / `i2p table` commands and the demo write (library side)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.i2p.loader import load_i2p


def correlate(
    data: str | Path | None,
    out_dir: Path,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    figure: bool = True,
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Write toxicity_correlation.csv, toxicity_points.csv, toxicity_binned.csv and the figure.

    Returns the correlation table and the written paths (figure files as figure_png/svg/html).
    """
    from analysis.i2p.correlation import TARGETS, binned_means, points_table, toxicity_correlation
    from analysis.store.csvsafe import write_csv

    dataset = load_i2p(data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corr = toxicity_correlation(dataset.frame, n_boot=n_boot, seed=seed)
    points = points_table(dataset.frame)
    binned = pd.concat(
        [binned_means(points["prompt_toxicity"], points[t]).assign(target=t) for t in TARGETS],
        ignore_index=True,
    )
    paths: dict[str, Path] = {
        "correlation": out_dir / "toxicity_correlation.csv",
        "points": out_dir / "toxicity_points.csv",
        "binned": out_dir / "toxicity_binned.csv",
    }
    write_csv(corr, paths["correlation"])
    write_csv(points, paths["points"])
    write_csv(binned[["target", *binned.columns[:-1]]], paths["binned"])
    if figure:
        from analysis.figures.export import save_figure
        from analysis.figures.i2p import FIGURE_STEM, correlation_figure

        for path in save_figure(correlation_figure(points, corr), out_dir / FIGURE_STEM):
            paths[f"figure_{Path(path).suffix.lstrip('.')}"] = Path(path)
    return corr, paths


def table_from_data(
    data: str | Path | None,
    out_dir: Path,
    *,
    n_draws: int = 10_000,
    seed: int = 0,
    protocol: str = "i2p-authors",
) -> tuple[pd.DataFrame, list[Path]]:
    """The dataset's SD 1.4 reference column of Table 1: i2p_table.csv/.md/.html/.tex.

    protocol names the expected-max protocol (analysis.i2p.table.PROTOCOLS); it is recorded in
    the table's exp_max_protocol column.
    """
    from analysis.i2p.table import check_protocol, dataset_table, write_table

    check_protocol(protocol)  # before loading data, so a typo fails fast
    dataset = load_i2p(data)
    table = dataset_table(dataset.frame, n_draws=n_draws, seed=seed, protocol=protocol)
    return table, write_table(table, Path(out_dir))


def demo_outputs(out_dir: Path, *, n_boot: int = 10_000, figure: bool = True) -> dict[str, Path]:
    """For `t2i-audit demo`: the correlation and the dataset's Table-1 column from bundled data.

    Returns paths: correlation (CSV), table (CSV), table_md, table_html, and figure_* files.
    """
    out_dir = Path(out_dir)
    _, paths = correlate(None, out_dir, n_boot=n_boot, figure=figure)
    _, (csv_path, md_path, html_path, *_) = table_from_data(None, out_dir)
    out = {k: v for k, v in paths.items() if k == "correlation" or k.startswith("figure_")}
    out.update(table=csv_path, table_md=md_path, table_html=html_path)
    return out
