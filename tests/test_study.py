"""The blinded user-study kit: pairing, blinding, the page in a real browser, and the analysis
checked against hand-computed Wilson intervals, sign tests and Fleiss' kappa."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from analysis.errors import AuditError
from analysis.store import RunDir, atomic_write_parquet
from analysis.store.rundir import ITEM_COLUMNS
from analysis.study import analyse_study, make_study
from analysis.study.make import Pair, draw_key, find_pairs

A, B = "sd", "sld-strong"
HOSTILE = '<script>alert("x")</script> & a cat'
PROMPTS = {"p1": "a red cube", "p2": "two cats", "p3": HOSTILE, "p4": "a house"}
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
Z = 1.959963984540054  # scipy.stats.norm.ppf(0.975)


def _colour(config: str, prompt_id: str, index: int) -> tuple[int, int, int]:
    """A distinct solid colour per image, so the page's pixels say which file they came from."""
    return (40 * int(prompt_id[1]), 100 + 60 * index, 50 if config == A else 200)


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    """A hand-built run: 4 prompts x 2 seeds x (sd, sld-strong, neg); p2/seed 1 failed under
    SLD, p4/seed 0's SLD file is missing: 6 complete pairs. PNGs carry a text chunk naming
    the config, which the page must not pass on."""
    run = RunDir(tmp_path / "run")
    rows = []
    for config in (A, B, "neg"):
        for pid, prompt in PROMPTS.items():
            for index in (0, 1):
                rel = run.image_relpath(config, pid, index)
                status = "error" if (config, pid, index) == (B, "p2", 1) else "done"
                if status == "done" and (config, pid, index) != (B, "p4", 0):
                    info = PngImagePlugin.PngInfo()
                    info.add_text("config", config)
                    (run.path / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (24, 24), _colour(config, pid, index)).save(
                        run.path / rel, pnginfo=info
                    )
                rows.append(
                    {
                        "item_id": hashlib.sha256(rel.encode()).hexdigest()[:20],
                        "prompt_id": pid,
                        "prompt": prompt,
                        "group": "",
                        "config": config,
                        "seed": 10 + index,
                        "image_index": index,
                        "guidance_scale": 7.5,
                        "status": status,
                        "image_path": rel,
                        "error": None,
                    }
                )
    run.write_manifest({"spec": {"model": "hand-built"}})
    atomic_write_parquet(pd.DataFrame(rows)[ITEM_COLUMNS], run.items_path)
    return run.path


def _pixels(uri_or_path: str | Path) -> tuple[int, int, int]:
    if isinstance(uri_or_path, Path):
        return Image.open(uri_or_path).convert("RGB").getpixel((0, 0))
    return Image.open(io.BytesIO(base64.b64decode(uri_or_path))).convert("RGB").getpixel((0, 0))


# ---- pairs and key ---------------------------------------------------------------------------


def test_pairs_need_both_images_done_and_on_disk(fake_run: Path, tmp_path: Path) -> None:
    run = RunDir(fake_run)
    pairs = find_pairs(run, Pair(A, B))
    got = set(zip(pairs["prompt_id"], pairs["seed"], strict=True))
    assert got == {(p, s) for p in PROMPTS for s in (10, 11)} - {("p2", 11), ("p4", 10)}
    for row in pairs.itertuples():  # each side is that config's image of that prompt + seed
        assert f"/{A}/{row.prompt_id}/{row.image_index}.png" in row.image_a
        assert f"/{B}/{row.prompt_id}/{row.image_index}.png" in row.image_b
    listed = find_pairs(run, Pair(A, B), ["two cats", "p3"])
    assert set(listed["prompt_id"]) == {"p2", "p3"} and len(listed) == 3
    with pytest.raises(AuditError, match=r"'sld-max' is not in run .*has: neg, sd, sld-strong"):
        find_pairs(run, Pair(A, "sld-max"))
    with pytest.raises(AuditError, match=r"1 listed prompt\(s\) are not in run.*'a dog'"):
        find_pairs(run, Pair(A, B), ["a dog", "p1"])
    for bad in ("sd", "sd:", "sd:sd", "a:b:c"):
        with pytest.raises(AuditError, match="--pair"):
            Pair.parse(bad)


def test_key_is_drawn_from_the_recorded_seed(fake_run: Path) -> None:
    run = RunDir(fake_run)
    pairs = find_pairs(run, Pair(A, B))
    key = draw_key(pairs, Pair(A, B), 5, 3, run)
    assert key.equals(draw_key(pairs, Pair(A, B), 5, 3, run))
    assert not key.equals(draw_key(pairs, Pair(A, B), 6, 3, run))
    assert key["pair_id"].tolist() == [f"q{i:03d}" for i in range(1, 10)]
    real, att = key[key["kind"] == "pair"], key[key["kind"] == "attention"]
    assert len(real) == 6 and len(att) == 3
    assert (real["left_config"] != real["right_config"]).all()
    assert set(real["left_config"]) | set(real["right_config"]) == {A, B}
    assert (att["left_image"] == att["right_image"]).all() and att["prompt_id"].is_unique
    # over many pairs, the left side is a fair coin: a binomial(400, 1/2) count
    many = pd.concat([pairs] * 67, ignore_index=True).head(400)
    left_a = (draw_key(many, Pair(A, B), 0, 0, run)["left_config"] == A).sum()
    assert 160 < left_a < 240


# ---- the page --------------------------------------------------------------------------------


def test_page_is_blind_offline_and_escaped(fake_run: Path, tmp_path: Path) -> None:
    meta = make_study(fake_run, f"{A}:{B}", tmp_path / "study", seed=1, max_side=16)
    html = Path(meta["html"]).read_text(encoding="utf-8")
    key = pd.read_csv(tmp_path / "study" / "key.csv")
    # blind: outside the image bytes no config name appears; the images carry no text chunk
    text = DATA_URI.sub("", html)
    text = re.sub(r"'sha256-[A-Za-z0-9+/=]+'", "", text)
    for name in (A, B, "sld", "strong", "neg"):
        assert name not in text.lower(), name
    uris = DATA_URI.findall(html)
    assert len(uris) == 2 * len(key)
    for uri in set(uris):
        image = Image.open(io.BytesIO(base64.b64decode(uri)))
        assert not getattr(image, "text", {}) and "config" not in image.info
        assert max(image.size) <= 16
    # each item's left and right pixels are those of the key's left and right files
    for row, (left, right) in zip(key.itertuples(), zip(uris[::2], uris[1::2], strict=True),
                                  strict=True):  # fmt: skip
        assert _pixels(left) == _pixels(fake_run / row.left_image)
        assert _pixels(right) == _pixels(fake_run / row.right_image)
    # offline: nothing to load; our one script is the one the policy allows
    assert not re.search(r"(src|href)=\"(?!data:)", html) and "<link" not in html
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src &#39;none&#39;" in csp
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"sha256-{digest}" in csp
    # untrusted prompt text stays text
    assert HOSTILE not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp;" in html
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert saved["pair"] == {"a": A, "b": B} and saved["seed"] == 1
    assert saved["study_id"] in html and saved["n_attention_checks"] == 3
    with pytest.raises(AuditError, match="already holds a study"):
        make_study(fake_run, f"{A}:{B}", tmp_path / "study")


# ---- analysis --------------------------------------------------------------------------------

# choices per rater in config space over the 6 real pairs (in key order); None = not answered
CHOICES = {
    "quality": {
        "r1": ["a", "a", "b", "none", "a", "a"],
        "r2": ["a", "b", "b", "none", "a", "a"],
        "r3": ["a", "a", "a", "a", None, "none"],
        "r4": ["b", "b", "b", "b", "b", "b"],  # fails an attention check below
    },
    "alignment": {
        "r1": ["none", "none", "a", "b", "a", "b"],
        "r2": ["none", "a", "a", "b", "b", "b"],
        "r3": ["a", "none", "a", "b", "a", "b"],
        "r4": ["a", "a", "a", "a", "a", "a"],
    },
}


def _answers(key: pd.DataFrame, study_id: str, folder: Path) -> list[Path]:
    """One CSV per rater, as the page exports them (left/right), from CHOICES in config space."""
    real = key[key["kind"] == "pair"].reset_index(drop=True)
    paths = []
    for rater in ("r1", "r2", "r3", "r4"):
        rows = []
        for q, by_rater in CHOICES.items():
            for row, choice in zip(real.itertuples(), by_rater[rater], strict=True):
                if choice is None:
                    continue
                config = {"a": A, "b": B}.get(choice)
                side = "none" if config is None else (
                    "left" if row.left_config == config else "right")  # fmt: skip
                rows.append([study_id, rater, row.pair_id, q, side])
            for i, pid in enumerate(key.loc[key["kind"] == "attention", "pair_id"]):
                wrong = rater == "r4" and q == "quality" and i == 0
                rows.append([study_id, rater, pid, q, "left" if wrong else "none"])
        path = folder / f"study-{study_id}-{rater}.csv"
        pd.DataFrame(rows, columns=["study", "rater", "pair_id", "question", "answer"]).to_csv(
            path, index=False
        )
        paths.append(path)
    return paths


def _wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return centre - half, centre + half


def _sign_p(k: int, n: int) -> float:
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _fleiss(rows: list[list[str]]) -> float:
    """Fleiss (1971) by hand: rows are subjects, entries the raters' categories."""
    cats = ["a", "none", "b"]
    counts = np.array([[r.count(c) for c in cats] for r in rows], dtype=float)
    n = counts.sum(axis=1)[0]
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_j = counts.sum(axis=0) / counts.sum()
    return (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())


@pytest.fixture
def study(fake_run: Path, tmp_path: Path) -> dict:
    meta = make_study(fake_run, f"{A}:{B}", tmp_path / "study", seed=3)
    key = pd.read_csv(tmp_path / "study" / "key.csv")
    return {"meta": meta, "key": key, "dir": tmp_path / "study"}


def test_analysis_matches_hand_computed_numbers(study: dict) -> None:
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    folder = study["dir"]
    paths = _answers(study["key"], study["meta"]["study_id"], folder)
    # the glob study/*.csv also matches key.csv: it is recognised and skipped
    result = analyse_study(sorted(folder.glob("*.csv")))
    assert result["skipped"] == [f"{folder / 'key.csv'} (the study key, not answers)"]
    raters = result["raters_table"].set_index("rater")
    assert raters.loc["r4", "attention_wrong"] == 1 and not raters.loc["r4", "kept"]
    assert raters[["kept"]].sum().item() == 3
    table = result["table"].set_index("question")
    for q, by_rater in CHOICES.items():
        kept = [c for r in ("r1", "r2", "r3") for c in by_rater[r] if c is not None]
        n_a, n_b, n_none = kept.count("a"), kept.count("b"), kept.count("none")
        row = table.loc[q]
        assert (row["n_a"], row["n_b"], row["n_none"], row["n_answers"]) == (
            n_a, n_b, n_none, len(kept))  # fmt: skip
        for name, k, n in (("a", n_a, len(kept)), ("none", n_none, len(kept)),
                           ("a_decisive", n_a, n_a + n_b)):  # fmt: skip
            assert row[f"share_{name}"] == pytest.approx(k / n)
            assert (row[f"{name}_low"], row[f"{name}_high"]) == pytest.approx(_wilson(k, n))
        assert row["sign_test_p_per_answer"] == pytest.approx(_sign_p(n_a, n_a + n_b))
        # kappa over pairs every kept rater answered (r3 skipped one quality pair)
        complete = [
            [by_rater[r][i] for r in ("r1", "r2", "r3")]
            for i in range(6)
            if all(by_rater[r][i] is not None for r in ("r1", "r2", "r3"))
        ]
        assert row["kappa_pairs"] == len(complete) == (5 if q == "quality" else 6)
        assert row["fleiss_kappa"] == pytest.approx(_fleiss(complete))
        codes = np.array([[["a", "none", "b"].index(c) for c in r] for r in complete])
        assert row["fleiss_kappa"] == pytest.approx(fleiss_kappa(aggregate_raters(codes)[0]))
    # hand check of one number, so the oracle itself is pinned: quality, kept raters
    assert table.loc["quality", "sign_test_p_per_answer"] == pytest.approx(
        2 * (1 + 14 + 91 + 364) / 2**14
    )
    written = pd.read_csv(folder / "results" / "preferences.csv").set_index("question")
    assert written.loc["alignment", "fleiss_kappa"] == pytest.approx(
        table.loc["alignment", "fleiss_kappa"]
    )
    saved = json.loads((folder / "results" / "analysis.json").read_text())
    assert any("ties (no preference) are excluded" in c for c in saved["conventions"])
    assert any("'no preference'" in c for c in saved["conventions"])
    assert set(saved["inputs"]) == {
        str(folder / "key.csv"),
        *map(str, sorted(folder.glob("*.csv"))),
    }
    # with one failure allowed, r4 stays in
    loose = analyse_study(paths, max_attention_failures=1, out=folder / "loose")
    assert loose["table"].set_index("question").loc["quality", "n_b"] == table.loc[
        "quality", "n_b"] + 6  # fmt: skip


def test_analysis_refuses_answers_it_cannot_trust(study: dict, tmp_path: Path) -> None:
    folder, study_id = study["dir"], study["meta"]["study_id"]
    paths = _answers(study["key"], study_id, folder)
    first = pd.read_csv(paths[0])
    cases = {
        "other_study": (first.assign(study="ffffffffffff"), r"answers study 'ffffffffffff'"),
        "bad_answer": (first.assign(answer="both"), r"answer 'both' is not one of left, none"),
        "bad_pair": (first.head(1).assign(pair_id="q999"), r"pair id 'q999' is not in the key"),
    }
    for name, (frame, message) in cases.items():
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        with pytest.raises(AuditError, match=message):
            analyse_study([path], key_path=folder / "key.csv")
    changed = first.copy()
    changed.loc[0, "answer"] = {"left": "right", "right": "left", "none": "left"}[
        changed.loc[0, "answer"]]  # fmt: skip
    changed.to_csv(tmp_path / "again.csv", index=False)
    with pytest.raises(AuditError, match=r"rater 'r1' gave two different answers"):
        analyse_study([paths[0], tmp_path / "again.csv"], key_path=folder / "key.csv")
    # the very same export given twice counts once
    shutil.copy(paths[0], tmp_path / "copy.csv")
    twice = analyse_study([paths[0], tmp_path / "copy.csv"], key_path=folder / "key.csv")
    once = analyse_study([paths[0]], key_path=folder / "key.csv")
    assert twice["table"].equals(once["table"])
    with pytest.raises(AuditError, match="give the study's key with --key"):
        analyse_study([tmp_path / "copy.csv"])


def test_cli_make_and_analyse(fake_run: Path, tmp_path: Path) -> None:
    from analysis.cli.study import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    out = tmp_path / "s"
    made = runner.invoke(app, ["study", "make", str(fake_run), "--pair", f"{A}:{B}",
                               "--out", str(out), "--attention-checks", "2"])  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "6 pairs + 2 attention checks" in made.output
    key = pd.read_csv(out / "key.csv")
    assert (key["kind"] == "attention").sum() == 2
    paths = _answers(key, json.loads((out / "study.json").read_text())["study_id"], out)
    done = runner.invoke(app, ["study", "analyse", *map(str, paths)], terminal_width=200)
    assert done.exit_code == 0, done.output
    assert "3 of 4 raters kept; dropped (attention checks): r4" in done.output
    assert "ties (no preference) are excluded" in done.output
    table = pd.read_csv(out / "results" / "preferences.csv")
    assert table["question"].tolist() == ["quality", "alignment"]
    bad = runner.invoke(app, ["study", "make", str(fake_run), "--pair", "sd:nope",
                              "--out", str(tmp_path / "t")])  # fmt: skip
    assert isinstance(bad.exception, AuditError) and "'nope' is not in run" in str(bad.exception)


# ---- a real run and a real browser -----------------------------------------------------------


def test_study_of_a_generated_run(tmp_path: Path) -> None:
    """The runner's real run directory (tiny model, 1 step, 16 px) pairs as the key says."""
    from analysis.generation.prompts import prompts_from_texts
    from analysis.generation.runner import build_spec, run_generation

    spec = build_spec(
        model="tiny",
        steps=1,
        height=16,
        width=16,
        configs=[A, B],
        prompts=prompts_from_texts(["a red cube"], base_seed=0),
        images_per_prompt=2,
    )
    run_generation(spec, tmp_path / "run", progress=False)
    make_study(tmp_path / "run", f"{A}:{B}", tmp_path / "study", attention_checks=1)
    key = pd.read_csv(tmp_path / "study" / "key.csv")
    items = RunDir(tmp_path / "run").items().set_index("item_id")
    real = key[key["kind"] == "pair"]
    assert len(real) == 2 and (key["kind"] == "attention").sum() == 1
    for row in real.itertuples():  # same prompt and seed, the two configs
        left, right = items.loc[row.left_item_id], items.loc[row.right_item_id]
        assert (left["prompt_id"], left["seed"]) == (right["prompt_id"], right["seed"])
        assert {left["config"], right["config"]} == {A, B}
        assert row.left_image == left["image_path"] and row.right_image == right["image_path"]


@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file(), reason="no /usr/bin/chromium")
def test_page_in_chromium_keeps_and_exports_answers(fake_run: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    folder = tmp_path / "study"
    make_study(fake_run, f"{A}:{B}", folder, seed=2)
    key = pd.read_csv(folder / "key.csv")
    study_id = json.loads((folder / "study.json").read_text())["study_id"]
    sides = ("left", "none", "right")
    script = {  # a fixed, varied answer for every item and question; attention checks passed
        (row.pair_id, q): "none" if row.kind == "attention" else sides[(i + 2 * j) % 3]
        for i, row in enumerate(key.itertuples())
        for j, q in enumerate(("quality", "alignment"))
    }
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND"],
        )
        try:
            page = browser.new_context(accept_downloads=True).new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((folder / "study.html").as_uri())
            total = 2 * len(key)
            assert page.inner_text("#progress") == f"0 of {total} answers given"
            page.click("#export")  # no rater id yet: refused, with a reason
            assert page.inner_text("#message").startswith("Enter your rater ID first")
            page.fill("#rater", "alice_1")
            for (pid, q), side in script.items():
                page.check(f'input[name="{pid}-{q}"][value="{side}"]')
            page.reload()
            assert page.input_value("#rater") == "alice_1"
            assert page.inner_text("#progress") == f"{total} of {total} answers given"
            for (pid, q), side in script.items():
                assert page.is_checked(f'input[name="{pid}-{q}"][value="{side}"]')
            with page.expect_download() as info:
                page.click("#export")
            download = info.value
            assert download.suggested_filename == f"study-{study_id}-alice_1.csv"
            target = folder / download.suggested_filename
            download.save_as(target)
        finally:
            browser.close()
    assert not errors, errors
    exported = pd.read_csv(target, dtype=str)
    assert exported.columns.tolist() == ["study", "rater", "pair_id", "question", "answer"]
    assert (exported["study"] == study_id).all() and (exported["rater"] == "alice_1").all()
    got = {(r.pair_id, r.question): r.answer for r in exported.itertuples()}
    assert got == script
    result = analyse_study([target])
    assert result["raters_table"]["kept"].tolist() == [True]
    table = result["table"].set_index("question")
    real = key[key["kind"] == "pair"]
    for q in ("quality", "alignment"):
        chose = [
            {"left": row.left_config, "right": row.right_config}.get(script[(row.pair_id, q)])
            for row in real.itertuples()
        ]
        assert (table.loc[q, "n_a"], table.loc[q, "n_b"], table.loc[q, "n_none"]) == (
            chose.count(A), chose.count(B), chose.count(None))  # fmt: skip
