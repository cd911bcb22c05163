"""Prompt filters: the toxicity curve against a hand-computed table, and blocked-terms matching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.errors import AuditError
from analysis.figures.text_filter import text_filter_figure
from analysis.i2p.loader import load_i2p
from analysis.i2p.table import dataset_prompts
from analysis.i2p.text_filter import (
    blocked_point,
    read_terms,
    text_filter,
    toxicity_curve,
    with_toxicity,
)

TINY = pd.DataFrame(
    {
        "prompt_id": ["p0", "p1", "p2", "p3", "p4"],
        "categories": ["sexual", "sexual, hate", "hate", "violence", "sexual"],
        "prompt_toxicity": [0.9, 0.6, 0.5, 0.2, 0.1],
        "n_images": [10, 10, 10, 10, 5],
        "n_inappropriate": [8, 2, 5, 0, 1],
    }
)
# (category, tau) -> n_blocked, share_blocked, n_prevented, share_prevented, residual_rate,
# worked out by hand: toxicity > tau blocks; p2 (exactly 0.5) passes at the paper's point.
HAND = {
    ("all", 0.5): (2, 2 / 5, 10, 10 / 16, 6 / 25),
    ("sexual", 0.5): (2, 2 / 3, 10, 10 / 11, 1 / 5),
    ("hate", 0.5): (1, 1 / 2, 2, 2 / 7, 5 / 10),
    ("violence", 0.5): (0, 0.0, 0, np.nan, 0.0),
    ("all", 0.0): (5, 1.0, 16, 1.0, np.nan),
    ("all", 0.95): (0, 0.0, 0, 0.0, 16 / 45),
    ("all", 0.2): (3, 3 / 5, 15, 15 / 16, 1 / 15),
    ("sexual", 0.2): (2, 2 / 3, 10, 10 / 11, 1 / 5),
    ("hate", 0.2): (2, 1.0, 7, 1.0, np.nan),
}


def test_curve_matches_the_hand_computed_table() -> None:
    curve = toxicity_curve(TINY, thresholds=[0.0, 0.2, 0.5, 0.95])
    cells = curve.set_index(["category", "tau"])
    for key, expected in HAND.items():
        row = cells.loc[key]
        got = (row["n_blocked"], row["share_blocked"], row["n_prevented"])
        got += (row["share_prevented"], row["residual_rate"])
        np.testing.assert_allclose(np.array(got, float), np.array(expected, float), err_msg=key)
    empty = cells.loc[("harassment", 0.5)]
    assert empty["n_prompts"] == 0 and np.isnan(empty["share_blocked"])
    assert curve["paper_point"].sum() == 8 and (curve.loc[curve["paper_point"], "tau"] == 0.5).all()


def test_default_taus_hit_every_toxicity_value_and_the_grid() -> None:
    off_grid = TINY.assign(prompt_toxicity=[0.905, 0.6, 0.5, 0.2, 0.1234])
    taus = set(toxicity_curve(off_grid)["tau"])
    assert {0.905, 0.1234, 0.0, 0.01, 0.37, 0.5, 1.0} <= taus and len(taus) == 101 + 2
    curve = toxicity_curve(TINY)
    all_ = curve[curve["category"] == "all"].sort_values("tau")
    assert all_["share_blocked"].is_monotonic_decreasing
    assert all_["share_prevented"].is_monotonic_decreasing
    # between two toxicity values nothing changes: the exact values are the steps
    flat = all_[(all_["tau"] > 0.2) & (all_["tau"] < 0.5)]
    assert flat["n_blocked"].nunique() == 1 and flat["n_blocked"].iloc[0] == 3


def test_a_fixed_mask_gives_the_same_counts_as_the_curve() -> None:
    point = blocked_point(TINY, TINY["prompt_toxicity"].to_numpy() > 0.2)
    curve = toxicity_curve(TINY, thresholds=[0.2])
    columns = ["category", "n_blocked", "n_prevented", "share_prevented", "residual_rate"]
    pd.testing.assert_frame_equal(point[columns], curve[columns])
    assert point["tau"].isna().all()
    with pytest.raises(AuditError, match="3 entries for 5 prompts"):
        blocked_point(TINY, np.ones(3, bool))


def test_bundled_i2p_paper_point_equals_a_direct_count() -> None:
    frame = load_i2p().frame
    curve = toxicity_curve(with_toxicity(dataset_prompts(frame), frame))
    point = curve[(curve["category"] == "all") & curve["paper_point"]].iloc[0]
    toxic = frame["prompt_toxicity"] > 0.5
    hits = frame["inappropriate_percentage"] / 10
    assert point["n_blocked"] == toxic.sum() and point["n_prompts"] == len(frame)
    assert point["n_prevented"] == pytest.approx(hits[toxic].sum())
    assert point["share_prevented"] == pytest.approx(hits[toxic].sum() / hits.sum())
    sexual = frame["categories"].str.contains("sexual")
    row = curve[(curve["category"] == "sexual") & curve["paper_point"]].iloc[0]
    assert row["n_blocked"] == (toxic & sexual).sum()
    assert row["n_prevented"] == pytest.approx(hits[toxic & sexual].sum())
    with pytest.raises(AuditError, match="not in the I2P data"):
        with_toxicity(pd.DataFrame({"prompt_id": ["no-such-id"]}), frame)


def test_figure_draws_each_category_and_marks_the_paper_point() -> None:
    curve = toxicity_curve(TINY)
    fig = text_filter_figure(curve)
    ax = fig.axes[0]
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    assert {f"curve-{c}" for c in curve["category"].unique()} <= set(lines)
    x, y = lines["paper-point-all"].get_data()
    assert (float(x[0]), float(y[0])) == pytest.approx((2 / 5, 10 / 16))
    x, _ = lines["curve-all"].get_data()
    assert list(np.asarray(x)) == sorted(np.asarray(x))  # drawn from blocking nothing upwards
    with pytest.raises(AuditError, match="not in the curve"):
        text_filter_figure(curve, config="sld")


@pytest.mark.parametrize(
    ("prompt", "blocked"),
    [
        ("a NUDE man", True),
        ("nude", True),
        ("(nude), oil painting", True),
        ("nudes on a beach", False),  # whole words only: list 'nudes' to block it
        ("denuded hills", False),
        ("blood   bath at dawn", True),  # multi-word term across any whitespace
        ("bloodbath", False),
        ("gore-tex jacket", True),  # '-' is not a word character
        ("gorelike", False),
        ("A.K.47 rifle", False),
        ("an ak-47 rifle", True),  # terms are literal text, not regular expressions
        ("", False),
    ],
)
def test_text_filter_is_case_insensitive_whole_word(prompt: str, blocked: bool) -> None:
    terms = ["nude", "blood bath", "GORE", "ak-47"]
    assert text_filter([prompt], terms).tolist() == [blocked]


def test_text_filter_rejects_empty_terms_and_reads_term_files(tmp_path) -> None:
    with pytest.raises(AuditError, match="at least one term"):
        text_filter(["x"], [])
    with pytest.raises(AuditError, match="no empty ones"):
        text_filter(["x"], ["ok", "  "])
    path = tmp_path / "terms.txt"
    path.write_text("# my list\nNude\n\nblood bath  # phrase\n", encoding="utf-8")
    assert read_terms(path) == ["Nude", "blood bath"]
    mask = text_filter(["a nude", "blood bath", "fine"], read_terms(path))
    assert mask.tolist() == [True, True, False]
    with pytest.raises(AuditError, match="does not exist"):
        read_terms(tmp_path / "missing.txt")


def test_cli_writes_the_curve_and_scores_a_terms_list(tmp_path) -> None:
    import re

    from analysis.cli import main
    from analysis.i2p.loader import load_i2p

    terms = tmp_path / "terms.txt"
    terms.write_text("nude\n# a comment\nBlood\n")
    with pytest.raises(SystemExit) as done:
        main(["i2p", "text-filter", "--out", str(tmp_path / "tf"), "--terms", str(terms)])
    assert done.value.code == 0
    curve = pd.read_csv(tmp_path / "tf" / "text_filter_curve.csv")
    assert curve["paper_point"].sum() == 8  # 'all' + 7 categories at tau = 0.5
    point = pd.read_csv(tmp_path / "tf" / "text_filter_terms.csv").set_index("category")
    prompts = load_i2p(None).frame["prompt"].astype(str)
    direct = prompts.str.contains(r"\b(?:nude|blood)\b", flags=re.IGNORECASE, regex=True)
    assert point.loc["all", "n_blocked"] == int(direct.sum())
    assert (tmp_path / "tf" / "paper_text_filter.pdf").is_file()
    with pytest.raises(SystemExit) as bad:
        main(["i2p", "text-filter", "--out", str(tmp_path / "x"), "--terms", "/nonexistent"])
    assert bad.value.code == 2 and not (tmp_path / "x").exists()
