"""Issue 24 (I2P): prompt-set loading, attack success with unknown verdicts, one clustering by
prompt text with a clustered paired test, README numbers, and Table 1's booktabs .tex."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from analysis.errors import AuditError
from analysis.i2p.attack import attack_success
from analysis.i2p.prompt_sets import load_prompt_set, parse_columns
from analysis.stats.paired import clustered_paired_comparison

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ 1. the prompt-set loader


def test_a_field_mapped_twice_is_named() -> None:
    with pytest.raises(AuditError, match=r"field 'prompt' is mapped twice \('a' and 'b'\)"):
        parse_columns("prompt=a,seed=s,prompt=b")


def test_a_mapped_column_twice_in_the_header_is_named(tmp_path: Path) -> None:
    path = tmp_path / "set.csv"
    path.write_text("prompt,seed,prompt\nfirst,1,second\n")
    with pytest.raises(AuditError, match=r"set.csv: column 'prompt' .* appears 2 times"):
        load_prompt_set(path, parse_columns("prompt=prompt"))
    # pandas renames the second copy 'prompt.1': that name is not in the file either
    with pytest.raises(AuditError, match=r"has no column 'prompt.1'"):
        load_prompt_set(path, parse_columns("prompt=prompt.1"))
    # a duplicate the mapping does not use is harmless
    data = load_prompt_set(path, parse_columns("prompt=seed"))
    assert list(data.frame["prompt"]) == ["1"]


def test_a_row_without_prompt_text_is_named_by_its_line(tmp_path: Path) -> None:
    path = tmp_path / "set.csv"
    # line 1 header, lines 2-3 one quoted prompt, line 4 blank (skipped), line 5 blank prompt
    path.write_text('prompt,seed\n"two\nlines",1\n\n  ,2\nok,3\n,4\n')
    with pytest.raises(AuditError, match=r"set.csv: row 2 \(line 5\) has no prompt text .*2 such"):
        load_prompt_set(path, parse_columns("prompt=prompt,seed=seed"))
    # the seed errors name the same place
    path.write_text('prompt,seed\n"two\nlines",1\nb,x\n')
    with pytest.raises(AuditError, match=r"seed column 'seed' row 2 \(line 4\)"):
        load_prompt_set(path, parse_columns("prompt=prompt,seed=seed"))
    parquet = tmp_path / "set.parquet"
    pd.DataFrame({"prompt": ["a", None, "c"]}).to_parquet(parquet)
    with pytest.raises(AuditError, match=r"set.parquet: row 2 has no prompt text"):
        load_prompt_set(parquet, parse_columns(None))


# ------------------------------------------------------------------ 2. attack success


def _verdicts(cells: dict[tuple[str, str], list[bool | None]], **text: str) -> pd.DataFrame:
    rows = [
        {
            "config": config,
            "prompt_id": pid,
            "prompt": text.get(pid, f"text {pid}"),
            "group": "nudity" if pid != "p3" else "nudity, violence",
            "image_index": k,
            "verdict": v,
        }
        for (config, pid), values in cells.items()
        for k, v in enumerate(values)
    ]
    frame = pd.DataFrame(rows)
    frame["verdict"] = frame["verdict"].astype("boolean")
    return frame


def test_an_unknown_image_makes_the_attack_unknown_unless_another_is_flagged() -> None:
    cells = {
        ("sd", "p1"): [None, False],  # unknown (the old code: a failed attack)
        ("sd", "p2"): [None, True],  # success: one flagged image is enough
        ("sd", "p3"): [False, False],  # failure
        ("sd", "p4"): [None, None],  # unknown
        ("sd", "p5"): [False, False],  # p5 and p6 share a text: one prompt, a success
        ("sd", "p6"): [True, None],
    }
    table = attack_success(_verdicts(cells, p6="text p5")).set_index(["config", "group"])
    row = table.loc[("sd", "all")]
    # by hand: known = p2 (success), p3 (failure), 'text p5' (success); unknown = p1, p4
    assert (row["n_success"], row["n_prompts"], row["n_prompts_without_verdict"]) == (2, 3, 2)
    assert row["asr"] == pytest.approx(2 / 3)
    wilson = proportion_confint(2, 3, method="wilson")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson)
    violence = table.loc[("sd", "violence")]  # p3 only
    assert (violence["n_success"], violence["n_prompts"]) == (0, 1)


def test_guardrail_table_attack_success_leaves_unknown_prompts_out(monkeypatch) -> None:
    import analysis.i2p.table as i2p_table
    from analysis.guardrails.arms import Arm
    from analysis.guardrails.table import guardrail_table

    cells = {
        ("sd", "p1"): [True, True],
        ("sd", "p2"): [False, False],
        ("sd", "p3"): [True, False],
        ("sd", "p4"): [False, False],
        ("sld", "p1"): [None, False],  # unknown
        ("sld", "p2"): [False, False],
        ("sld", "p3"): [True, None],  # success
        ("sld", "p4"): [False, True],  # same text as p3: pooled with it
    }
    frame = _verdicts(cells, p4="text p3")
    frame["seed"] = 100 + frame["image_index"]
    frame["item_id"] = frame["config"] + frame["prompt_id"] + frame["image_index"].astype(str)
    monkeypatch.setattr(i2p_table, "run_verdicts", lambda run, *a: frame.copy())
    arms = [Arm(c, Path("x"), c, "guidance", "m", "i2p") for c in ("sd", "sld")]
    table = guardrail_table(arms, seed=1).set_index("guardrail")
    sld = table.loc["sld"]
    # texts: 'text p1' unknown, 'text p2' failure, 'text p3' (p3 + p4) success
    assert (sld["i2p_asr"], sld["i2p_asr_n_unknown"]) == (pytest.approx(1 / 2), 1)
    assert (sld["i2p_asr_ci_low"], sld["i2p_asr_ci_high"]) == pytest.approx(
        proportion_confint(1, 2, method="wilson")
    )
    assert table.loc["sd", "i2p_prompts"] == 3  # four prompt ids, three texts
    # change: pairs with both verdicts; sums per text (base, arm): p1 (1, 0) over 1 pair,
    # p2 (0, 0) over 2, p3+p4 (1, 2) over 3 -> (0 - 1 + 0 + 1) / 6
    assert sld["i2p_n_pairs"] == 6 and sld["i2p_change"] == pytest.approx(0.0)


# ------------------------------------------------------------------ 3. clustered paired test


def test_durkalski_with_one_pair_per_cluster_is_the_ordinary_mcnemar() -> None:
    rng = np.random.default_rng(3)
    base = rng.random(200) < 0.4
    other = np.where(rng.random(200) < 0.3, ~base, base)
    res = clustered_paired_comparison(base, other, np.arange(200))
    table = [[np.sum(base & other), np.sum(base & ~other)], [np.sum(~base & other), 0]]
    ref = mcnemar(table, exact=False, correction=False)
    assert res["chi2"] == pytest.approx(ref.statistic, rel=1e-12)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    # the interval: with n clusters of one pair it is the paired Wald interval (n - 1 variance)
    e = other.astype(float) - base.astype(float)
    half = stats.norm.ppf(0.975) * e.std(ddof=1) / np.sqrt(200)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((e.mean() - half, e.mean() + half))


def test_durkalski_on_a_hand_computed_clustered_example() -> None:
    # cluster A: 3 pairs flagged under base only; B: one each way; C: one under other only;
    # D: one concordant each way
    pairs = {
        "A": [(1, 0), (1, 0), (1, 0)],
        "B": [(1, 0), (0, 1)],
        "C": [(0, 1)],
        "D": [(0, 0), (1, 1)],
    }
    clusters = [k for k, v in pairs.items() for _ in v]
    base = [a for v in pairs.values() for a, _ in v]
    other = [b for v in pairs.values() for _, b in v]
    res = clustered_paired_comparison(np.array(base), np.array(other), np.array(clusters))
    # b = 4, c = 2; b_k - c_k = 3, 0, -1, 0 -> X2 = (4 - 2)^2 / (9 + 1) = 0.4
    assert (res["b"], res["c"], res["n_pairs"], res["n_clusters"]) == (4, 2, 8, 4)
    assert res["chi2"] == pytest.approx(0.4)
    assert res["p_value"] == pytest.approx(stats.chi2.sf(0.4, 1))
    assert res["p_value"] > mcnemar([[1, 4], [2, 1]], exact=False, correction=False).pvalue
    # d = -2/8; e_k - d n_k = -2.25, 0.5, 1.25, 0.5 -> var = 4/3 * 7.125 / 64
    half = stats.norm.ppf(0.975) * np.sqrt(4 / 3 * 7.125 / 64)
    assert res["difference"] == pytest.approx(-0.25)
    assert res["ci_high"] == pytest.approx(-0.25 + half)
    assert res["ci_low"] == -1.0 == max(-1.0, -0.25 - half)  # clipped to the possible range


def test_paired_table_clusters_by_prompt_text_and_names_its_test() -> None:
    from analysis.i2p.paired import paired_table

    # the hand example above as I2P images: clusters are prompt texts; p_c1 and p_c2 share one
    texts = {"pa": "A", "pb": "B", "p_c1": "C", "p_c2": "C", "pd": "D"}
    cells = {  # prompt_id -> [(sd, sld) per image]
        "pa": [(1, 0), (1, 0), (1, 0)],
        "pb": [(1, 0), (0, 1)],
        "p_c1": [(0, 1)],
        "p_c2": [(None, 1)],  # dropped pair, but its prompt is the same cluster as p_c1
        "pd": [(0, 0), (1, 1)],
    }
    rows = []
    for pid, images in cells.items():
        for k, (sd, sld) in enumerate(images):
            for config, v in (("sd", sd), ("sld", sld)):
                rows.append(
                    {
                        "config": config,
                        "prompt_id": pid,
                        "prompt": texts[pid],
                        "image_index": k,
                        "seed": k,
                        "group": "sexual",
                        "verdict": None if v is None else bool(v),
                    }
                )
    frame = pd.DataFrame(rows)
    frame["verdict"] = frame["verdict"].astype("boolean")
    row = paired_table(frame).set_index("category").loc["all"]
    assert (row["n_pairs"], row["n_clusters"], row["n_dropped"]) == (8, 4, 1)
    assert (row["b10"], row["b01"]) == (4, 2)
    assert row["chi2"] == pytest.approx(0.4)
    assert row["p_value"] == pytest.approx(stats.chi2.sf(0.4, 1))
    assert row["test"] == "clustered McNemar (Durkalski et al. 2003), clusters = prompt text"
    assert "Obuchowski" in row["interval"]
    # per prompt id (5 clusters) the answer would differ: the key is the text
    by_id = paired_table(frame.assign(prompt=frame["prompt_id"])).set_index("category")
    assert by_id.loc["all", "n_clusters"] == 4  # p_c2's only pair is dropped
    assert by_id.loc["all", "chi2"] == pytest.approx(0.4)


def test_table_attack_and_paired_test_count_the_same_clusters() -> None:
    from analysis.i2p.attack import prompt_outcomes
    from analysis.i2p.paired import paired_table
    from analysis.i2p.table import run_prompts, table_from_prompts

    rng = np.random.default_rng(5)
    ids = [f"p{i}" for i in range(12)]
    text = {pid: f"text {i % 8}" for i, pid in enumerate(ids)}  # 12 ids, 8 texts
    rows = [
        {
            "config": config,
            "prompt_id": pid,
            "prompt": text[pid],
            "image_index": k,
            "seed": k,
            "group": "hate",
            "verdict": bool(rng.random() < 0.4),
        }
        for config in ("sd", "sld")
        for pid in ids
        for k in range(3)
    ]
    frame = pd.DataFrame(rows)
    table = table_from_prompts(run_prompts(frame), source="run", n_draws=100)
    units = table.set_index(["config", "category"]).loc[("sd", "all"), "n_prompt_units"]
    paired = paired_table(frame).set_index("category").loc["all", "n_clusters"]
    attack = len(prompt_outcomes(frame[frame["config"] == "sd"]))
    assert units == paired == attack == 8


# ------------------------------------------------------------------ 4. README numbers


def _readme_numbers():
    spec = importlib.util.spec_from_file_location(
        "readme_numbers", ROOT / "tools" / "readme_numbers.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_readme_numbers_are_current_and_a_stale_one_is_caught(tmp_path, capsys) -> None:
    tool = _readme_numbers()
    numbers = tool.compute()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    stale_msg = "README numbers are stale: run tools/readme_numbers.py --write"
    assert tool.render(text, numbers) == text, stale_msg
    # what `t2i-audit i2p correlate` prints on the bundled data (the report)
    assert numbers["spearman_ci"] == "[0.194, 0.246]" and numbers["spearman_rho"] == "0.220"
    assert (numbers["n_prompts"], numbers["n_prompt_texts"]) == ("4703", "4467")
    # check mode on a stale copy: exit 1 and a diff naming the stale span; write repairs it
    tool.compute = lambda: numbers  # computed once above
    stale = tmp_path / "README.md"
    stale.write_text(text.replace(numbers["spearman_ci"], "[0.193, 0.247]"), encoding="utf-8")
    assert tool.main(["--check", "--readme", str(stale)]) == 1
    assert "-rho(prompt toxicity" in capsys.readouterr().out
    assert tool.main(["--write", "--readme", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text
    assert tool.main(["--readme", str(stale)]) == 0  # --check is the default


# ------------------------------------------------------------------ 5. Table 1 in LaTeX


def test_i2p_table_writes_a_booktabs_tex_with_the_csv_numbers(tmp_path) -> None:
    from analysis.cli import main

    out = tmp_path / "t"
    with pytest.raises(SystemExit) as done:
        main(["i2p", "table", "--out", str(out), "--n-draws", "100"])
    assert done.value.code == 0
    tex = (out / "i2p_table.tex").read_text()
    lines = tex.splitlines()
    top, mid, bottom = (lines.index(rule) for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert top < mid < bottom
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    csv = pd.read_csv(out / "i2p_table.csv").set_index("category")
    body = lines[mid + 1 : bottom]
    assert len(body) == len(csv)
    for line in body:
        cells = [c.strip() for c in line.removesuffix(r"\\").split("&")]
        r = csv.loc[cells[0]]
        assert cells[1] == f"{r['inappropriate_probability']:.2f}"
        mean, std = re.fullmatch(r"(\S+) \$\\pm\$ (\S+)", cells[2]).groups()
        assert (mean, std) == (f"{r['exp_max_mean']:.2f}", f"{r['exp_max_std']:.2f}")
    assert csv.loc["all", "inappropriate_probability"] == pytest.approx(0.386, abs=5e-4)
    assert r"sd-1.4" in tex


def test_tex_shows_a_category_without_prompts_as_a_dash(tmp_path) -> None:
    from analysis.i2p.table import table_from_prompts, write_table

    prompts = pd.DataFrame(
        {
            "config": "sd_max",
            "prompt_id": ["a", "b"],
            "prompt": ["x", "y"],
            "categories": ["hate", "hate"],
            "n_images": [2, 2],
            "n_inappropriate": [1, 2],
            "n_missing_images": [0, 0],
        }
    )
    files = write_table(table_from_prompts(prompts, source="run", n_draws=100), tmp_path)
    assert [p.name for p in files][-1] == "i2p_table.tex"
    tex = files[-1].read_text()
    assert r"sd\_max" in tex and "nan" not in tex
    assert re.search(r"^violence & -- & -- \\\\$", tex, re.M)
    assert re.search(r"^hate & 0\.75 & ", tex, re.M)
