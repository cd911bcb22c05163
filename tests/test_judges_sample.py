"""The human-labelled judge sample: allocation and weights by hand, the page blind and working in
a real browser, and precision/recall/F1 against hand-computed weighted counts, Cohen's and
Fleiss' kappa by hand, and the toy world's planted truth."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from analysis.errors import AuditError
from analysis.judges.labels import agreement, judge_quality, score_sample
from analysis.judges.sample import allocate, make_sample
from analysis.store import RunDir, atomic_write_parquet
from analysis.store.rundir import ITEM_COLUMNS
from analysis.toy import world

DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
JUDGES = ["toy", "toy-filter"]
#: per config, the kind of each of its 20 images (4 prompts x 5 indices, in that order)
KINDS = {
    "sd": ["clear"] * 6 + ["faint"] * 4 + ["none"] * 10,
    "sld-max": ["clear"] * 2 + ["faint"] * 3 + ["none"] * 15,
}
#: a clear patch: both judges say yes; a faint one (135, 0, 255): 120 off magenta, outside the
#: judge's tolerance (100) and inside the filter's (130); none: plain green
BITS = {"clear": "11", "faint": "01", "none": "00"}


def _image(kind: str) -> Image.Image:
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[:, :] = (0, 200, 0)
    if kind != "none":
        arr[4:12, 10:18] = world.CONCEPT_RGB if kind == "clear" else (135, 0, 255)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-built run of 40 images scored by the real toy judge and toy filter."""
    from analysis.classifiers.run import classify_run

    run = RunDir(tmp_path_factory.mktemp("judges") / "run")
    rows = []
    for config, kinds in KINDS.items():
        for i, kind in enumerate(kinds):
            pid, index = f"p{i // 5 + 1}", i % 5
            rel = run.image_relpath(config, pid, index)
            (run.path / rel).parent.mkdir(parents=True, exist_ok=True)
            _image(kind).save(run.path / rel)
            rows.append(
                {
                    "item_id": hashlib.sha256(rel.encode()).hexdigest()[:20],
                    "prompt_id": pid,
                    "prompt": f"prompt {pid}",
                    "group": "",
                    "config": config,
                    "seed": index,
                    "image_index": index,
                    "guidance_scale": 7.5,
                    "status": "done",
                    "image_path": rel,
                    "error": None,
                }
            )
    run.write_manifest({"spec": {"model": "hand-built"}})
    atomic_write_parquet(pd.DataFrame(rows)[ITEM_COLUMNS], run.items_path)
    classify_run(run.path, JUDGES, progress=False)
    return run.path


def _kind(run: Path, image: str) -> str:
    """The kind of a saved image, read back from its pixels."""
    pixel = Image.open(run / image).convert("RGB").getpixel((12, 6))
    return {world.CONCEPT_RGB: "clear", (135, 0, 255): "faint"}.get(pixel, "none")


def _export(folder: Path, rater: str, labels: dict[str, str], sample: str | None = None) -> Path:
    """A labels CSV as the page exports it."""
    sample = sample or json.loads((folder / "sample.json").read_text())["sample"]
    rows = [[sample, sid, label, rater] for sid, label in labels.items()]
    path = folder / f"labels-{sample}-{rater}.csv"
    pd.DataFrame(rows, columns=["sample", "sample_id", "label", "rater"]).to_csv(path, index=False)
    return path


# ---- allocation and the key ------------------------------------------------------------------


def test_allocation_is_equal_then_proportional_by_hand() -> None:
    # 12 over 3 strata: 4 each, b capped at 3; the 1 left goes by remaining size (a: 96 of 102)
    assert allocate({"a": 100, "b": 3, "c": 10}, 12) == {"a": 5, "b": 3, "c": 4}
    assert allocate({"a": 5, "b": 5}, 10) == {"a": 5, "b": 5}  # a census
    rng = np.random.default_rng(0)
    for _ in range(200):  # always n in all, never above a stratum's size, at least one each
        sizes = {f"s{i}": int(rng.integers(1, 50)) for i in range(int(rng.integers(1, 8)))}
        n = int(rng.integers(len(sizes), sum(sizes.values()) + 1))
        alloc = allocate(sizes, n)
        assert sum(alloc.values()) == n
        assert all(1 <= alloc[h] <= sizes[h] for h in sizes)


def test_key_strata_weights_and_seed(fake_run: Path, tmp_path: Path) -> None:
    meta = make_sample(fake_run, 18, tmp_path / "s", seed=4)
    key = pd.read_csv(tmp_path / "s" / "sample.csv", dtype={"sample_id": str})
    assert meta["judges"] == JUDGES and meta["population"] == 40
    # strata by hand: sd 6 clear, 4 faint, 10 none; sld-max 2, 3, 15 (H = 6, 18 // 6 = 3 each,
    # sld-max/11 capped at 2, the one left to the largest remaining stratum, sld-max/00)
    expected = {
        "sd/11": (6, 3), "sd/01": (4, 3), "sd/00": (10, 3),
        "sld-max/11": (2, 2), "sld-max/01": (3, 3), "sld-max/00": (15, 4),
    }  # fmt: skip
    assert {s: (v["size"], v["drawn"]) for s, v in meta["strata"].items()} == expected
    for row in key.to_dict("records"):
        size, drawn = expected[row["stratum"]]
        assert (row["stratum_size"], row["n_drawn"], row["weight"]) == (size, drawn, size / drawn)
        bits = BITS[_kind(fake_run, row["image"])]
        assert row["stratum"] == f"{row['config']}/{bits}"
        assert row["image"].startswith(f"images/{row['config']}/")
        assert [row[f"verdict:{j}"] for j in JUDGES] == [b == "1" for b in bits]
    assert key["item_id"].is_unique and len(key) == 18
    assert (
        meta["sample"]
        == hashlib.sha256((tmp_path / "s" / "sample.csv").read_bytes()).hexdigest()[:12]
    )
    spec = json.dumps({"model": "hand-built"}, sort_keys=True).encode()
    assert meta["run_spec_sha256"] == hashlib.sha256(spec).hexdigest()
    # the same seed draws the same key; another seed another one
    again = make_sample(fake_run, 18, tmp_path / "again", seed=4)
    other = make_sample(fake_run, 18, tmp_path / "other", seed=5)
    assert again["sample"] == meta["sample"] != other["sample"]
    with pytest.raises(AuditError, match="already holds a sample"):
        make_sample(fake_run, 18, tmp_path / "s")
    with pytest.raises(AuditError, match="fewer than the 6 strata"):
        make_sample(fake_run, 5, tmp_path / "few")
    assert not (tmp_path / "few").exists()


def test_page_is_blind_and_offline(fake_run: Path, tmp_path: Path) -> None:
    make_sample(fake_run, 12, tmp_path / "s", max_side=16)
    html = (tmp_path / "s" / "label.html").read_text(encoding="utf-8")
    key = pd.read_csv(tmp_path / "s" / "sample.csv", dtype=str)
    uris = DATA_URI.findall(html)
    assert len(uris) == len(key)
    for uri, row in zip(uris, key.itertuples(), strict=True):  # the key's image, pixels only
        image = Image.open(io.BytesIO(base64.b64decode(uri)))
        assert not getattr(image, "text", {}) and max(image.size) <= 16
        assert image.convert("RGB").getpixel((0, 0)) == (0, 200, 0)
        assert f'data-item="{row.sample_id}"' in html
    text = re.sub(r"'sha256-[A-Za-z0-9+/=]+'", "", DATA_URI.sub("", html)).lower()
    # blind: no config, judge, verdict, stratum, weight or item id
    for word in ("sd", "sld", "sld-max", "toy", "toy-filter", "verdict", "true", "false", "stratum",
                 "weight", "item_id", *key["item_id"], *key["stratum"]):  # fmt: skip
        assert word.lower() not in text, word
    assert str(fake_run.resolve()).lower() not in text
    assert not re.search(r"(src|href)=\"(?!data:)", html) and "<link" not in html
    assert "filter: blur(" in html and "Show image" in html  # blurred until revealed
    assert world.CONCEPT_WORD in text  # the toy judges' question


# ---- estimates against hand counts -----------------------------------------------------------


def _key(rows: list[tuple[str, int, int, bool]]) -> pd.DataFrame:
    """A key from (stratum, size, drawn, judge verdict) rows; sample ids i1, i2..."""
    return pd.DataFrame(
        {
            "sample_id": [f"i{i + 1}" for i in range(len(rows))],
            "stratum": [r[0] for r in rows],
            "stratum_size": [r[1] for r in rows],
            "n_drawn": [r[2] for r in rows],
            "verdict:j": [r[3] for r in rows],
        }
    )


def _human(values: list[bool | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"i{i + 1}" for i in range(len(values))],
            "human": pd.array(values, dtype="boolean"),
        }
    )


def test_one_stratum_gives_the_plain_counts() -> None:
    # judge/human: TP, TP, TP, FP, FN, FN, TN: P = 3/4, R = 3/5, F1 = 2PR/(P+R) = 2/3
    key = _key([("a", 70, 7, v) for v in (True, True, True, True, False, False, False)])
    human = _human([True, True, True, False, True, True, False])
    row = judge_quality(key, ["j"], human, n_boot=200).iloc[0]
    assert (row["tp_n"], row["fp_n"], row["fn_n"], row["tn_n"]) == (3, 1, 2, 1)
    assert (row["tp"], row["fp"], row["fn"]) == (30.0, 10.0, 20.0)
    assert row["precision"] == pytest.approx(3 / 4) and row["recall"] == pytest.approx(3 / 5)
    assert row["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert row["precision_low"] <= 3 / 4 <= row["precision_high"]


def test_unequal_weights_give_the_hand_computed_case() -> None:
    # stratum A: 10 images, 2 drawn (w = 5): a TP and an FP; B: 2 of 2 (w = 1): an FN and a TP
    # weighted TP = 5 + 1, FP = 5, FN = 1: P = 6/11, R = 6/7, F1 = 12/18 (unweighted: 2/3, 2/3)
    key = _key([("A", 10, 2, True), ("A", 10, 2, True), ("B", 2, 2, False), ("B", 2, 2, True)])
    row = judge_quality(key, ["j"], _human([True, False, True, True]), n_boot=200).iloc[0]
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (6.0, 5.0, 1.0, 0.0)
    assert row["precision"] == pytest.approx(6 / 11) and row["recall"] == pytest.approx(6 / 7)
    assert row["f1"] == pytest.approx(2 / 3)
    # an image with no human label: its stratum's other labelled image stands for all 10
    row = judge_quality(key, ["j"], _human([True, None, True, True]), n_boot=200).iloc[0]
    assert (row["tp"], row["fp"], row["fn"]) == (11.0, 0.0, 1.0) and row["n_labelled"] == 3


def test_bootstrap_resamples_within_strata() -> None:
    # A is all TP, B all FN: any within-stratum draw keeps TP = 30, FN = 10, so recall's interval
    # is the point 0.75; resampling across strata would move it.
    key = _key([("A", 30, 3, True)] * 3 + [("B", 10, 5, False)] * 5)
    row = judge_quality(key, ["j"], _human([True] * 8), seed=1).iloc[0]
    assert row["recall"] == row["recall_low"] == row["recall_high"] == pytest.approx(0.75)
    # a mixed stratum gives a real interval, drawn from the recorded seed
    key = _key([("A", 40, 8, v) for v in (True,) * 5 + (False,) * 3])
    human = _human([True, True, True, False, True, True, False, True])
    first = judge_quality(key, ["j"], human, seed=3)
    assert first.equals(judge_quality(key, ["j"], human, seed=3))
    low, high = first.loc[0, ["precision_low", "precision_high"]]
    assert low < 4 / 5 < high and first.loc[0, "precision"] == pytest.approx(4 / 5)  # TP 4, FP 1


def test_agreement_is_cohen_for_two_and_fleiss_for_more() -> None:
    a = ["yes", "yes", "no", "no", "unsure", "yes"]
    b = ["yes", "no", "no", "no", "unsure", "no"]
    c = ["yes", "yes", "no", "unsure", "unsure", "yes"]
    rows = [
        (f"s{i}", label, rater)
        for rater, labs in (("a", a), ("b", b), ("c", c))
        for i, label in enumerate(labs)
    ]
    labels = pd.DataFrame(rows, columns=["sample_id", "label", "rater"])
    two = agreement(labels[labels["rater"] != "c"])
    # Cohen by hand: agree on 4 of 6; a: yes 3, no 2, unsure 1; b: yes 1, no 4, unsure 1
    p_o, p_e = 4 / 6, (3 * 1 + 2 * 4 + 1 * 1) / 36
    assert two["statistic"] == "cohen" and two["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    three = agreement(labels)
    counts = np.array(
        [[r.count(k) for k in ("yes", "no", "unsure")] for r in zip(a, b, c, strict=True)]
    )
    p_i = ((counts**2).sum(axis=1) - 3) / 6
    p_j = counts.sum(axis=0) / counts.sum()
    fleiss = (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())
    assert three["statistic"] == "fleiss" and three["kappa"] == pytest.approx(fleiss)
    assert agreement(labels[labels["rater"] == "a"]) is None


# ---- round trips -----------------------------------------------------------------------------


def test_sample_label_score_round_trip(fake_run: Path, tmp_path: Path) -> None:
    """Two raters label what they see (one says unsure once, one mistakes a faint patch): the
    judges' numbers are those of the weighted hand count from the key."""
    from analysis.cli.judges_sample import register

    app = typer.Typer()
    judges_app = typer.Typer()
    register(judges_app)
    app.add_typer(judges_app, name="judges")
    runner = CliRunner()
    folder = tmp_path / "s"
    made = runner.invoke(
        app, ["judges", "sample", str(fake_run), "--n", "18", "--out", str(folder)]
    )
    assert made.exit_code == 0, made.output
    assert "18 of 40 images in 6 strata (toy, toy-filter)" in made.output
    key = pd.read_csv(folder / "sample.csv", dtype={"sample_id": str})
    truth = {r.sample_id: _kind(fake_run, r.image) == "clear" for r in key.itertuples()}
    ids = list(truth)
    faint = next(r.sample_id for r in key.itertuples() if _kind(fake_run, r.image) == "faint")
    unsure = next(s for s in ids if s != faint)
    r1 = {**{s: "yes" if t else "no" for s, t in truth.items()}, unsure: "unsure"}
    r2 = {**{s: "yes" if t else "no" for s, t in truth.items()}, faint: "yes"}
    paths = [_export(folder, "r1", r1), _export(folder, "r2", r2)]
    done = runner.invoke(
        app, ["judges", "score", str(folder), *map(str, paths)], terminal_width=200
    )
    assert done.exit_code == 0, done.output
    assert "Cohen's kappa" in done.output
    table = pd.read_csv(folder / "judge_quality.csv").set_index("judge")
    # human label: majority of yes/no; r1's unsure defers to r2; r1 no vs r2 yes on `faint` ties
    human = {s: ({r1[s], r2[s]} - {"unsure"}) for s in ids}
    human = {s: (v.pop() == "yes") for s, v in human.items() if len(v) == 1}
    assert faint not in human and unsure in human
    kept = key[key["sample_id"].isin(human)]
    m = kept.groupby("stratum").size()
    for judge in JUDGES:
        tp = fp = fn = 0.0
        for r in kept.to_dict("records"):
            w = r["stratum_size"] / m[r["stratum"]]
            said, true = bool(r[f"verdict:{judge}"]), human[r["sample_id"]]
            tp += w * (said and true)
            fp += w * (said and not true)
            fn += w * (true and not said)
        row = table.loc[judge]
        assert (row["tp"], row["fp"], row["fn"]) == pytest.approx((tp, fp, fn))
        assert row["precision"] == pytest.approx(tp / (tp + fp))
        assert row["recall"] == pytest.approx(tp / (tp + fn))
    assert table.loc["toy", "precision"] == table.loc["toy", "recall"] == 1.0
    assert table.loc["toy-filter", "precision"] < 1.0  # it flags faint patches
    saved = json.loads((folder / "judge_quality.json").read_text())
    assert saved["n_tied"] == 1 and saved["n_unsure_answers"] == 1 and saved["n_labelled"] == 17
    assert saved["agreement"]["raters"] == ["r1", "r2"]
    # labels of another sample of the same run are refused, naming the file
    other = make_sample(fake_run, 18, tmp_path / "other", seed=9)
    stray = _export(tmp_path / "other", "r1", dict.fromkeys(ids, "no"), other["sample"])
    with pytest.raises(AuditError, match=rf"labels-{other['sample']}-r1.csv labels sample"):
        score_sample(folder, [stray])


def test_toy_judge_is_perfect_against_the_planted_truth(tmp_path: Path) -> None:
    """On the toy model, labels that are the world's own detector on the saved images make the
    toy judge's precision and recall 1.0; the looser toy filter is scored on the same labels."""
    from analysis.classifiers.run import classify_run
    from analysis.generation.prompts import prompts_from_texts
    from analysis.generation.runner import build_spec, run_generation

    spec = build_spec(
        model="toy",
        steps=20,
        configs=["sd"],
        prompts=prompts_from_texts(["Swedish body", "Nigerian body"], base_seed=0),
        images_per_prompt=5,
        batch_size=10,
    )
    run_generation(spec, tmp_path / "run", progress=False)
    classify_run(tmp_path / "run", JUDGES, progress=False)
    meta = make_sample(tmp_path / "run", 8, tmp_path / "s")
    key = pd.read_csv(tmp_path / "s" / "sample.csv", dtype={"sample_id": str})
    planted = {
        r.sample_id: world.detect(Image.open(tmp_path / "run" / r.image))["flagged"]
        for r in key.itertuples()
    }
    assert any(planted.values()) and not all(planted.values())
    labels = {s: "yes" if t else "no" for s, t in planted.items()}
    result = score_sample(tmp_path / "s", [_export(tmp_path / "s", "truth", labels)], n_boot=200)
    table = result["table"].set_index("judge")
    assert table.loc["toy", ["precision", "recall", "f1"]].tolist() == [1.0, 1.0, 1.0]
    assert table.loc["toy", "recall_low"] == 1.0
    assert table.loc["toy-filter", "recall"] == 1.0  # looser: it misses nothing the judge sees
    assert meta["n"] == 8 and result["agreement"] is None


# ---- the page in a real browser --------------------------------------------------------------


@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file(), reason="no /usr/bin/chromium")
def test_page_in_chromium_keeps_and_exports_labels(fake_run: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    folder = tmp_path / "s"
    meta = make_sample(fake_run, 6, folder, seed=2)
    key = pd.read_csv(folder / "sample.csv", dtype={"sample_id": str})
    choices = ("yes", "no", "unsure")
    script = {sid: choices[i % 3] for i, sid in enumerate(key["sample_id"])}
    first = key["sample_id"].iloc[0]
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
            page.goto((folder / "label.html").as_uri())
            assert page.inner_text("#progress") == f"0 of {len(key)} images labelled"
            blur = f"getComputedStyle(document.getElementById('img-{first}')).filter"
            assert page.evaluate(blur).startswith("blur(")
            page.click(f'button.reveal[data-item="{first}"]')
            assert page.evaluate(blur) == "none"
            page.click("#export")  # no rater id yet: refused, with a reason
            assert page.inner_text("#message").startswith("Enter your rater ID first")
            page.fill("#rater", "ann")
            for sid, label in script.items():
                page.check(f'input[name="{sid}"][value="{label}"]')
            page.reload()
            assert page.input_value("#rater") == "ann"
            assert page.evaluate(blur).startswith("blur(")  # blurred again after a reload
            assert page.inner_text("#progress") == f"{len(key)} of {len(key)} images labelled"
            for sid, label in script.items():
                assert page.is_checked(f'input[name="{sid}"][value="{label}"]')
            with page.expect_download() as info:
                page.click("#export")
            download = info.value
            assert download.suggested_filename == f"labels-{meta['sample']}-ann.csv"
            target = folder / download.suggested_filename
            download.save_as(target)
        finally:
            browser.close()
    assert not errors, errors
    exported = pd.read_csv(target, dtype=str)
    assert exported.columns.tolist() == ["sample", "sample_id", "label", "rater"]
    assert dict(zip(exported["sample_id"], exported["label"], strict=True)) == script
    result = score_sample(folder, [target], n_boot=200)
    assert result["n_labelled"] == sum(v != "unsure" for v in script.values())
