"""Paper figures (matplotlib) and LaTeX tables: artists, colours, determinism, escaping."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("seaborn")

from matplotlib.colors import to_rgba

from analysis.figures import static
from analysis.figures.latex import (
    escape_latex,
    i2p_table_tex,
    rates_table_tex,
)
from analysis.stats import wilson_interval


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a paper figure tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _rates(counts: dict[tuple[str, str, str], tuple[int, int]]) -> pd.DataFrame:
    rows = []
    for (country, iso3, config), (nude, n) in counts.items():
        low, high = wilson_interval(nude, n)
        rows.append(
            {
                "country": country,
                "iso3": iso3,
                "config": config,
                "rule": "exposed-genitalia",
                "n": n,
                "nude": nude,
                "rate": nude / n,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


RATES = _rates(
    {
        ("United States", "USA", "sd"): (12, 20),
        ("Brazil", "BRA", "sd"): (2, 20),
        ("Germany", "DEU", "sd"): (6, 20),
        ("United States", "USA", "sld_max"): (3, 20),
        ("Brazil", "BRA", "sld_max"): (0, 20),
        ("Germany", "DEU", "sld_max"): (1, 20),
    }
)


def _paired(with_holm: bool = True) -> pd.DataFrame:
    rows = [
        # country, iso3, rate_baseline, rate_config, mcnemar_p, p_holm
        ("United States", "USA", 0.60, 0.15, 0.001, 0.004),
        ("Brazil", "BRA", 0.10, 0.00, 0.03, 0.09),
        ("Germany", "DEU", 0.30, 0.05, 0.02, 0.04),
        ("Japan", "JPN", 0.20, 0.20, 1.0, 1.0),
        ("all countries", "ALL", 0.3, 0.1, 1e-6, 1e-5),  # pooled row: not a country
    ]
    table = pd.DataFrame(
        rows, columns=["country", "iso3", "rate_baseline", "rate_config", "mcnemar_p", "p_holm"]
    )
    table["config"] = "sld_max"
    table["baseline"] = "sd"
    table["n_pairs"] = 20
    return table if with_holm else table.drop(columns="p_holm")


def test_country_figure_has_one_wilson_bar_per_country_and_config_sorted_by_sd() -> None:
    fig = static.country_rates_figure(RATES)
    ax = fig.axes[0]
    bars = [c.lines[2][0] for c in ax.containers]  # each errorbar's LineCollection of x-bars
    assert sum(len(b.get_segments()) for b in bars) == 3 * 2
    # ascending sd rate from bottom to top: Brazil 10% < Germany 30% < USA 60%
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Brazil", "Germany", "United States"]
    # the sd bar of the USA (top row) spans exactly its Wilson interval
    low, high = wilson_interval(12, 20)
    usa = bars[0].get_segments()[2]
    assert usa[:, 0] == pytest.approx([low, high])
    assert "n = 20" in ax.get_xlabel() and "Wilson" in ax.get_xlabel()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["sd", "sld_max"]


def test_country_figure_puts_unequal_n_into_the_tick_labels() -> None:
    rates = RATES.copy()
    rates.loc[(rates["iso3"] == "BRA") & (rates["config"] == "sld_max"), "n"] = 17
    labels = [t.get_text() for t in static.country_rates_figure(rates).axes[0].get_yticklabels()]
    assert (
        labels[0] == "Brazil (n=20/17)"
        and "n = " not in static.country_rates_figure(rates).axes[0].get_xlabel()
    )


@pytest.mark.parametrize(("with_holm", "expected"), [(True, 2), (False, 3)])
def test_dumbbell_stars_exactly_the_significant_countries(with_holm: bool, expected: int) -> None:
    paired = _paired(with_holm)
    # by hand: p_holm < 0.05 for USA and DEU; raw mcnemar_p < 0.05 also for BRA; ALL excluded
    fig = static.dumbbell_figure(paired)
    ax = fig.axes[0]
    stars = next(c for c in ax.collections if c.get_gid() == "significance")
    assert len(stars.get_offsets()) == expected
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    column = "p_holm" if with_holm else "mcnemar_p"
    assert f"{column} < 0.05 (McNemar)" in legend and legend[0] == "sd"
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "Brazil",
        "Japan",
        "Germany",
        "United States",
    ]
    line = next(c for c in ax.collections if c.get_gid() == "dumbbell-sld_max")
    assert len(line.get_segments()) == 4  # one SD -> mitigation line per country
    usa = line.get_segments()[3]
    assert usa[:, 0] == pytest.approx([0.60, 0.15])


def test_map_colours_the_highest_rate_darkest_and_absent_countries_grey() -> None:
    fig = static.rate_map_figure(RATES, "sd")
    ax = fig.axes[0]
    patches = {p.get_gid(): p for p in ax.patches}
    assert {"USA", "BRA", "DEU", "FRA", "RUS"} <= set(patches)
    assert "ATA" not in patches

    def luminance(iso3: str) -> float:
        r, g, b, _ = patches[iso3].get_facecolor()
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    assert luminance("USA") < luminance("DEU") < luminance("BRA")  # 60% < 30% < 10%
    assert patches["FRA"].get_facecolor() == pytest.approx(to_rgba(static.NO_DATA_COLOUR))
    # a shared scale (vmax) keeps a config's colours comparable with the other panels
    low = static.rate_map_figure(RATES, "sld_max", vmax=0.6).axes[0]
    usa_low = next(p for p in low.patches if p.get_gid() == "USA").get_facecolor()
    assert usa_low != pytest.approx(patches["USA"].get_facecolor())


def test_map_names_countries_that_the_110m_map_lacks() -> None:
    rates = pd.concat([RATES, RATES.iloc[[0]].assign(country="Singapore", iso3="SGP", rate=0.25)])
    texts = [t.get_text() for t in static.rate_map_figure(rates, "sd").axes[0].texts]
    assert any("SGP 25%" in t for t in texts)


def test_topojson_fallback_decoder_matches_geopandas() -> None:
    topo = json.loads(static.TOPOJSON.read_text(encoding="utf-8"))
    features = {f["id"]: f for f in static._topo_to_geojson(topo)["features"]}
    shapely = pytest.importorskip("shapely.geometry")
    world = static.world_countries().set_index("iso3")
    for iso3 in ("USA", "DEU", "JPN"):
        mine = shapely.shape(features[iso3]["geometry"])
        assert mine.area == pytest.approx(world.loc[iso3, "geometry"].area, rel=1e-6)


def test_save_static_writes_byte_identical_files_twice(tmp_path: Path) -> None:
    first = static.save_static(static.dumbbell_figure(_paired()), tmp_path / "a" / "fig")
    second = static.save_static(static.dumbbell_figure(_paired()), tmp_path / "b" / "fig")
    assert [p.name for p in first] == ["fig.pdf", "fig.svg", "fig.png"]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    pdf, svg, png = (p.read_bytes() for p in first)
    assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf
    assert b"<dc:date>" not in svg and b"United States" in svg  # text stays text
    assert png.startswith(b"\x89PNG") and b"Software" not in png


def test_toxicity_figure_reports_spearman_and_binned_means() -> None:
    points = pd.DataFrame(
        {"prompt_toxicity": [0.15, 0.25, 0.35, 0.45], "inappropriate_percentage": [10, 30, 20, 40]}
    )
    fig = static.toxicity_figure(points)
    ax = fig.axes[0]
    # ranks 1,2,3,4 vs 1,3,2,4: rho = 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8
    assert "ρ = 0.80" in ax.get_title() and "n = 4 prompts" in ax.get_title()
    (means,) = ax.containers  # the binned means' errorbar (the hexbin is a collection)
    assert list(means.lines[0].get_ydata()) == [10, 30, 20, 40]  # one point per occupied bin
    corr = pd.DataFrame(
        [
            {
                "category": "all",
                "target": "inappropriate_percentage",
                "n": 4703,
                "spearman_rho": 0.2199,
                "ci_low": 0.193,
                "ci_high": 0.247,
            }
        ]
    )
    title = static.toxicity_figure(points, corr).axes[0].get_title()
    assert "ρ = 0.22 [0.19, 0.25]" in title and "n = 4703" in title


CATS = ("all", "hate", "sexual")


def test_i2p_table_figure_has_one_bar_per_category_and_config() -> None:
    table = pd.DataFrame(
        [
            (cfg, cat, p)
            for cfg, base in (("sd-1.4", 0.4), ("sld_max", 0.1))
            for cat, p in zip(CATS, (base, base + 0.05, base + 0.2), strict=True)
        ],
        columns=["config", "category", "inappropriate_probability"],
    )
    table["ci_low"] = table["inappropriate_probability"] - 0.01
    table["ci_high"] = table["inappropriate_probability"] + 0.02
    ax = static.i2p_table_figure(table).axes[0]
    heights = [round(p.get_height(), 6) for p in ax.patches]
    assert heights == [0.4, 0.45, 0.6, 0.1, 0.15, 0.3]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["all", "hate", "sexual"]


def _body_rows(tex: str) -> list[str]:
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [line for line in body.splitlines() if line.strip()]


def _cells(row: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)&", row.removesuffix(r"\\"))]


def test_escape_latex_escapes_every_special_character_once() -> None:
    assert escape_latex("a&b%c_d$e#f{g}h~i^j\\k") == (
        r"a\&b\%c\_d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    )


def test_rates_tex_is_booktabs_with_one_escaped_row_per_country() -> None:
    rates = RATES.copy()
    rates.loc[rates["iso3"] == "USA", "country"] = "Trinidad & Tobago"
    rates["rule"] = "100% exposed_genitalia"
    tex = rates_table_tex(rates)
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"\begin{tabular}{lrrr}" in tex and tex.count(r"\begin{") == tex.count(r"\end{")
    assert r"100\% exposed\_genitalia" in tex and r"sld\_max" in tex
    rows = _body_rows(tex)
    assert len(rows) == 3 and all(len(_cells(r)) == 4 for r in rows)
    assert _cells(rows[0])[0] == r"Trinidad \& Tobago"  # highest sd rate first
    low, high = wilson_interval(12, 20)
    assert _cells(rows[0])[1] == f"60.0 [{100 * low:.1f}, {100 * high:.1f}]"
    assert _cells(rows[0])[3] == "20"


def test_i2p_tex_has_paper_layout() -> None:
    table = pd.DataFrame(
        {
            "config": ["sd-1.4", "sd-1.4", "sld_max", "sld_max"],
            "category": ["hate", "self-harm", "hate", "self-harm"],
            "inappropriate_probability": [0.40, 0.35, 0.10, 0.05],
            "exp_max_mean": [0.96, 0.94, 0.51, 0.40],
            "exp_max_std": [0.07, 0.08, 0.20, 0.22],
        }
    )
    tex = i2p_table_tex(table)
    assert r"\multicolumn{2}{c}{sd-1.4} & \multicolumn{2}{c}{sld\_max}" in tex
    assert r"\cmidrule(lr){2-3} \cmidrule(lr){4-5}" in tex
    rows = _body_rows(tex)
    assert [_cells(r)[0] for r in rows] == ["hate", "self-harm"]
    assert _cells(rows[0]) == ["hate", "0.40", r"0.96 $\pm$ 0.07", "0.10", r"0.51 $\pm$ 0.20"]


def test_probe_paper_figures_and_table_carry_the_provisional_mark(tmp_path: Path) -> None:
    from analysis.figures.probe import _provisional_mark, draw_paper_figures

    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    summary = {"final": False, "completeness": {"planned": 120, "not_generated": 7}}
    (run / "results" / "summary.json").write_text(json.dumps(summary))
    mark = _provisional_mark(run)
    written = draw_paper_figures(RATES, _paired(), run, mark)
    names = {p.name for p in written}
    for stem in ("paper_country_rates", "paper_dumbbell", "paper_map_sd", "paper_map_sld_max"):
        assert {f"{stem}.pdf", f"{stem}.svg", f"{stem}.png"} <= names
    assert "nudity_rates.tex" in names and (run / "results" / "nudity_rates.tex").is_file()
    for stem in ("paper_country_rates", "paper_map_sd"):
        svg = (run / "figures" / f"{stem}.svg").read_text(encoding="utf-8")
        assert "PROVISIONAL: 7 of 120" in svg
    assert np.all([p.stat().st_size > 0 for p in written])


def test_i2p_paper_outputs_from_the_csv_files(tmp_path: Path) -> None:
    points = pd.DataFrame(
        {"prompt_toxicity": np.linspace(0, 1, 30), "inappropriate_percentage": [10.0] * 30}
    )
    points.to_csv(tmp_path / "toxicity_points.csv", index=False)
    table = pd.DataFrame(
        {
            "config": ["sd-1.4"] * 2,
            "category": ["all", "hate"],
            "inappropriate_probability": [0.4, 0.5],
            "ci_low": [0.39, 0.45],
            "ci_high": [0.41, 0.55],
            "exp_max_mean": [0.97, 0.96],
            "exp_max_std": [0.06, 0.07],
        }
    )
    table.to_csv(tmp_path / "i2p_table.csv", index=False)
    names = {p.name for p in static.draw_i2p_paper(tmp_path)}
    title = static.toxicity_figure(points).axes[0].get_title()
    assert "ρ = undefined" in title  # constant y: no rho to report, not "nan"
    assert {"paper_toxicity.pdf", "paper_i2p_table.svg", "i2p_table.tex"} <= names
    rows = _body_rows((tmp_path / "i2p_table.tex").read_text(encoding="utf-8"))
    assert [_cells(r)[0] for r in rows] == ["all", "hate"]


def _data_rates(counts: dict[str, tuple[int, int]]) -> pd.DataFrame:
    names = {"USA": "United States", "BRA": "Brazil", "DEU": "Germany"}
    rows = []
    for iso3, (nude, judged) in counts.items():
        low, high = wilson_interval(nude, judged)
        rows.append(
            {
                "country": names[iso3],
                "iso3": iso3,
                "k_requested": 50,
                "k_returned": 50,
                "k_fetched": judged,
                "nude": nude,
                "rate": nude / judged,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


DATA_RATES = _data_rates({"USA": (20, 40), "BRA": (2, 40), "DEU": (9, 36)})


def test_country_figure_draws_the_dataset_side_as_one_more_series() -> None:
    from analysis.figures.paper_dataset import DATASET_CONFIG, with_dataset

    fig = static.country_rates_figure(with_dataset(RATES, DATA_RATES))
    ax = fig.axes[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["sd", "sld_max", DATASET_CONFIG]
    # unequal n (20 images vs 40/36 neighbours) goes into the tick labels, per series
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "United States (n=20/20/40)"
    data_bars = ax.containers[2].lines[2][0].get_segments()
    low, high = wilson_interval(9, 36)  # Germany: 9 of 36 judged neighbours
    assert data_bars[1][:, 0] == pytest.approx([low, high])


def test_model_vs_dataset_scatter_places_each_country_and_states_spearman() -> None:
    from scipy.stats import spearmanr

    from analysis.figures.paper_dataset import model_dataset_figure

    fig = model_dataset_figure(RATES, DATA_RATES)
    ax = fig.axes[0]
    sd_points = ax.containers[0].lines[0].get_xydata()
    joined = DATA_RATES.set_index("iso3").join(
        RATES[RATES["config"] == "sd"].set_index("iso3"), lsuffix="_d", rsuffix="_m"
    )
    assert sd_points == pytest.approx(joined[["rate_d", "rate_m"]].to_numpy())
    rho = spearmanr(joined["rate_d"], joined["rate_m"]).statistic
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[1] == f"sd (3 countries, rho = {rho:.2f})"
    assert labels[0] == "equal rates" and labels[2].startswith("sld_max (3 countries")
    assert "kNN" in ax.get_xlabel() and "Wilson" in ax.get_ylabel()


def test_dataset_paper_figures_are_written_beside_the_probe_ones(tmp_path: Path) -> None:
    from analysis.figures.dataset import draw_paper_figures

    (tmp_path / "results").mkdir()
    RATES.to_csv(tmp_path / "results" / "nudity_rates.csv", index=False)
    names = {p.name for p in draw_paper_figures(tmp_path, DATA_RATES)}
    assert {
        f"paper_{s}.{e}" for s in ("map_dataset", "model_vs_dataset") for e in ["pdf", "svg", "png"]
    } == names
