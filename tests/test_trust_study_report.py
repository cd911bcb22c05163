"""Trust, round two (study and report): inert Markdown, CSV formula injection, study files that
cannot mislead the analysis, decompression bombs, and the user study's crossed-factor bootstrap
checked against a brute-force loop and scipy's one-way bootstrap."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.errors import AuditError
from analysis.store import RunDir, atomic_write_parquet
from analysis.store.rundir import ITEM_COLUMNS

A, B = "sd", "sld-strong"
EVIL = (
    "![t](http://host/track.png) [x](javascript:alert(1)) <script>alert(1)</script> "
    "<img src=x onerror=alert(1)> www.evil.com me@evil.com `tick` **bold** | pipe\n"
    "# heading\n[ref]: http://host/ref\n1. item <http://host/auto> &amp; =1+1"
)


def _hand_run(path: Path, prompts: dict[str, str], configs: tuple[str, ...] = (A, B)) -> Path:
    """A run built by hand (manifest, items, one 16 px PNG per prompt and config)."""
    run = RunDir(path)
    rows = []
    for c, config in enumerate(configs):
        for pid, prompt in prompts.items():
            rel = run.image_relpath(config, pid, 0)
            (run.path / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (30 * c, 90, 200)).save(run.path / rel)
            rows.append(
                {
                    "item_id": hashlib.sha256(rel.encode()).hexdigest()[:20],
                    "prompt_id": pid,
                    "prompt": prompt,
                    "group": prompt,
                    "config": config,
                    "seed": 7,
                    "image_index": 0,
                    "guidance_scale": 7.5,
                    "status": "done",
                    "image_path": rel,
                    "error": None,
                }
            )
    spec = {"model": "hand-built", "configs": [{"name": c} for c in configs]}
    run.write_manifest({"spec": {**spec, "prompts": list(prompts.values())}})
    atomic_write_parquet(pd.DataFrame(rows)[ITEM_COLUMNS], run.items_path)
    return run.path


# ---- 1. the Markdown report is inert ---------------------------------------------------------


class _Tags(HTMLParser):
    """Elements, text and table cells of rendered HTML (entities decoded, as a browser shows)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _renderers() -> dict[str, object]:
    from markdown_it import MarkdownIt

    found: dict[str, object] = {
        "markdown-it (commonmark, html on)": MarkdownIt("commonmark").render,
        # GFM tables: a pipe in a prompt must stay in its cell
        "markdown-it (gfm-like)": MarkdownIt("gfm-like", {"linkify": False}).render,
    }
    try:
        import mistune

        found["mistune (raw html on)"] = mistune.create_markdown(
            escape=False, plugins=["table", "strikethrough", "url"]
        )
    except ImportError:  # pragma: no cover
        pass
    return found


def test_markdown_report_renders_user_text_as_text(tmp_path: Path) -> None:
    from analysis.report import write_report

    run = _hand_run(tmp_path / "run`<b>x", {"p1": EVIL, "p2": "a quiet lake"})
    rates = pd.DataFrame(
        {"country": [EVIL], "config": [A], "rule": ["r"], "nude": [1], "n": [2], "rate": [0.5]}
    )
    (Path(run) / "results").mkdir()
    rates.to_csv(Path(run) / "results" / "nudity_rates.csv", index=False)
    out = write_report([run], tmp_path / "r.md", fmt="md", title=EVIL)
    text = out.read_text(encoding="utf-8")
    flat = " ".join(EVIL.split())
    for name, render in _renderers().items():
        parsed = _Tags()
        parsed.feed(render(text))
        tags = [t for t, _ in parsed.tags]
        assert "script" not in tags and "a" not in tags, (name, tags)
        images = [attrs.get("src") or "" for t, attrs in parsed.tags if t == "img"]
        assert images and all(src.startswith("r_files/") for src in images), (name, images)
        assert tags.count("h1") == 1 and not {"ol", "em", "strong", "b"} & set(tags), name
        shown = "".join(parsed.text)
        assert shown.count(flat) >= 3, (name, "title, sample captions and table cell")
        assert "run`<b>x" in shown, name  # the run path, verbatim
        if "table" in tags:  # GFM renderers: the prompt's pipe stays inside its cell
            assert flat in parsed.cells, (name, parsed.cells)


def test_markdown_escaping_is_exact_for_every_character() -> None:
    """Every printable ASCII character alone and in context renders as itself (CommonMark)."""
    from markdown_it import MarkdownIt

    from analysis.report.markdown import md_text

    md = MarkdownIt("commonmark")
    samples = [chr(c) for c in range(33, 127)] + [
        "1. not a list",
        "- not a list",
        "> not a quote",
        "=== not a heading",
        "a_b_c *d* __e__",
        "[a]: http://x",
        "<http://x>",
        "&copy; &#65;",
        "-0.25",
        "3.14",
    ]
    for sample in samples:
        html = md.render(f"text: {md_text(sample)}")
        parsed = _Tags()
        parsed.feed(html)
        assert [t for t, _ in parsed.tags] == ["p"], (sample, html)
        assert "".join(parsed.text).strip() == f"text: {sample}", (sample, html)
    assert md_text("-0.25") == "-0.25" and md_text("1e-05") == "1e-05"  # numbers stay readable


def test_report_md_refuses_to_overwrite_a_run_file(tmp_path: Path) -> None:
    from analysis.report import write_report

    run = _hand_run(tmp_path / "run", {"p1": "a lake"})
    manifest = (Path(run) / "manifest.json").read_bytes()
    with pytest.raises(AuditError, match=r"manifest.json is an existing file of the input"):
        write_report([run], Path(run) / "manifest.json", fmt="md")
    assert (Path(run) / "manifest.json").read_bytes() == manifest
    (tmp_path / "r_files").write_text("x")
    with pytest.raises(AuditError, match=r"r_files \(for the figure files\) exists"):
        write_report([run], tmp_path / "r.md", fmt="md")
    assert not (tmp_path / "r.md").exists()


# ---- 2. CSV formula injection ------------------------------------------------------------------

TRIGGERS = ['=HYPERLINK("http://evil")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "=", "-"]


def test_write_csv_defuses_text_and_keeps_numbers(tmp_path: Path) -> None:
    from analysis.store.csvsafe import read_back, write_csv

    plain = ["a cat", "'already quoted", "-0.5", "1e-3", "", "x=1"]
    texts = TRIGGERS + plain
    df = pd.DataFrame(
        {
            "prompt": texts,
            "delta": np.linspace(-3.5, 2, len(texts)),
            "k": np.arange(-len(texts), 0),
            "mixed": [-1, "=cmd"] + ["ok"] * (len(texts) - 2),
        }
    )
    write_csv(df, tmp_path / "t.csv")
    raw = (tmp_path / "t.csv").read_bytes().decode("utf-8")
    rows = list(csv.reader(io.StringIO(raw, newline="")))
    assert rows[0] == ["prompt", "delta", "k", "mixed"]
    for text, row in zip(texts, rows[1:], strict=True):
        cell = row[0]
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or cell in ("-0.5",), cell
        if text in TRIGGERS or text.startswith("'"):
            assert cell == "'" + text
        else:
            assert cell == text
        assert read_back(cell) == text
    expected = [repr(float(v)) for v in df["delta"]]
    assert [r[1] for r in rows[1:]] == expected  # negative numbers untouched
    assert [int(r[2]) for r in rows[1:]] == list(range(-len(texts), 0))
    assert [r[3] for r in rows[1:3]] == ["-1", "'=cmd"]


def test_every_csv_the_package_writes_goes_through_write_csv() -> None:
    root = Path(__file__).parent.parent / "analysis"
    offenders = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*.py"))
        if p.name != "csvsafe.py"
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\.to_csv\(|csv\.writer\(|DictWriter\(", line)
    ]
    assert offenders == []


# ---- 3. study files --------------------------------------------------------------------------


@pytest.fixture
def study(tmp_path: Path) -> dict:
    """A study of 4 prompts (one starting with '=') and 1 attention check, answered by 3 raters."""
    from analysis.study import make_study

    prompts = {"p1": "=1+1 a cube", "p2": "two cats", "p3": "a house", "p4": "a tree"}
    run = _hand_run(tmp_path / "run", prompts)
    folder = tmp_path / "study"
    meta = make_study(run, f"{A}:{B}", folder, seed=2, attention_checks=1)
    return {"dir": folder, "meta": meta, "key": pd.read_csv(folder / "key.csv", dtype=str)}


def _answer_file(study: dict, name: str, rater: str, prefer: str, **extra: str) -> Path:
    """One rater's export: `prefer` ('a' or 'b') on every real pair, 'none' on the checks."""
    key = pd.read_csv(study["dir"] / "key.csv", dtype=str, keep_default_na=False)
    rows = []
    for row in key.itertuples():
        for q in ("quality", "alignment"):
            config = {"a": A, "b": B}[prefer]
            side = "none" if row.kind == "attention" else (
                "left" if row.left_config == config else "right")  # fmt: skip
            answer = {"pair_id": row.pair_id, "question": q, "answer": side}
            rows.append({"study": study["meta"]["study_id"], "rater": rater, **answer, **extra})
    path = study["dir"] / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_key_csv_defuses_prompts_and_analysis_reads_them_back(study: dict) -> None:
    from analysis.study import analyse_study
    from analysis.study.analyse import read_key

    raw = (study["dir"] / "key.csv").read_text(encoding="utf-8")
    cells = [c for row in csv.reader(io.StringIO(raw)) for c in row]
    assert "'=1+1 a cube" in cells and "=1+1 a cube" not in cells
    key, _ = read_key(study["dir"] / "key.csv")
    assert "=1+1 a cube" in set(key["prompt"])
    paths = [_answer_file(study, f"{r}.csv", r, "a") for r in ("=r1", "-r2", "r3")]
    result = analyse_study(paths)
    rows = list(csv.reader(io.StringIO((result["out"] / "raters.csv").read_text())))
    assert sorted(r[0] for r in rows[1:]) == ["'-r2", "'=r1", "r3"]


def test_pair_label_that_differs_from_the_key_is_refused(study: dict) -> None:
    """Before: b='sld-max' was not in the key, so every answer counted as b."""
    from analysis.study import analyse_study

    paths = [_answer_file(study, "r1.csv", "r1", "a"), _answer_file(study, "r2.csv", "r2", "a")]
    meta_path = study["dir"] / "study.json"
    meta = json.loads(meta_path.read_text())
    good = analyse_study(paths, out=study["dir"] / "good")["table"].set_index("question")
    assert good.loc["quality", "n_a"] == 8 and good.loc["quality", "n_b"] == 0
    meta_path.write_text(json.dumps({**meta, "pair": {"a": A, "b": "sld-max"}}))
    with pytest.raises(AuditError, match=r"study.json: pair a='sd', b='sld-max' does not match "
                       r"the configs in .*key.csv \(sd, sld-strong\)"):  # fmt: skip
        analyse_study(paths)
    # a and b swapped is a different, consistent question: the counts swap
    meta_path.write_text(json.dumps({**meta, "pair": {"a": B, "b": A}}))
    swapped = analyse_study(paths, out=study["dir"] / "s")["table"].set_index("question")
    assert swapped.loc["quality", "n_b"] == 8 and swapped.loc["quality", "n_a"] == 0


def test_rater_ids_are_stripped_and_case_clashes_refused(study: dict) -> None:
    from analysis.study import analyse_study

    first = _answer_file(study, "a.csv", "r1", "a")
    table = pd.read_csv(first)
    table.loc[table.index % 2 == 0, "rater"] = "  r1 "
    table.to_csv(first, index=False)
    second = _answer_file(study, "b.csv", "r2", "b")
    result = analyse_study([first, second])
    assert result["raters_table"]["rater"].tolist() == ["r1", "r2"]
    assert (result["table"]["n_raters"] == 2).all()
    third = _answer_file(study, "c.csv", "R1", "b")
    with pytest.raises(AuditError, match=r"rater ids 'R1' and 'r1' differ only in case"):
        analyse_study([first, second, third])


def test_unknown_key_kind_is_refused_not_dropped(study: dict) -> None:
    """Before: kind 'Attention' was neither pair nor attention, so the check vanished."""
    from analysis.study import analyse_study

    path = _answer_file(study, "r1.csv", "r1", "a")
    key_path = study["dir"] / "key.csv"
    key = pd.read_csv(key_path, dtype=str, keep_default_na=False)
    key.loc[key["kind"] == "attention", "kind"] = "Attention"
    key.to_csv(key_path, index=False)
    with pytest.raises(AuditError, match=r"key.csv: line \d+: kind 'Attention' is not one of "
                       r"pair, attention"):  # fmt: skip
        analyse_study([path])


BAD_META = {
    "not json": (b'{"study_id": ', r"study.json is not valid JSON"),
    "not utf-8": (b'{"run": "\xff"}', r"study.json is not UTF-8 text"),
    "a list": (b"[1, 2]", r"study.json must hold a JSON object, not a list"),
    "wrong type": ("seed", "3", r"study.json: field 'seed': input should be a valid integer"),
    "missing": ("pair", None, r"study.json: field 'pair' is missing"),
    "extra": ("pairs", {"a": A}, r"study.json: unknown field 'pairs'"),
    "nested": ("pair", {"a": A}, r"study.json: field 'pair.b' is missing"),
}


@pytest.mark.parametrize("case", list(BAD_META), ids=list(BAD_META))
def test_malformed_study_json_is_one_line(study: dict, case: str) -> None:
    from analysis.study import analyse_study

    path = _answer_file(study, "r1.csv", "r1", "a")
    meta_path = study["dir"] / "study.json"
    spec = BAD_META[case]
    if len(spec) == 2:
        meta_path.write_bytes(spec[0])
    else:
        meta = json.loads(meta_path.read_text())
        field, value, _ = spec
        meta.pop(field, None) if value is None else meta.update({field: value})
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(AuditError, match=spec[-1]) as info:
        analyse_study([path])
    assert "\n" not in str(info.value)


BAD_ANSWERS = {
    "extra column": ({"comment": "hi"}, r"r1.csv: line 2: unknown field 'comment'"),
    "bad question": ({"question": "beauty"}, r"question 'beauty' is not one of quality"),
    "blank rater": ({"rater": "   "}, r"r1.csv: line 2: field 'rater'"),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS), ids=list(BAD_ANSWERS))
def test_malformed_answers_are_one_line(study: dict, case: str) -> None:
    from analysis.study import analyse_study

    path = _answer_file(study, "r1.csv", "r1", "a")
    table = pd.read_csv(path, dtype=str)
    change, message = BAD_ANSWERS[case]
    for col, value in change.items():
        table[col] = value
    table.to_csv(path, index=False)
    with pytest.raises(AuditError, match=message):
        analyse_study([path])
    (study["dir"] / "bin.csv").write_bytes(b"study,rater\n\xff\xfe,1\n")
    with pytest.raises(AuditError, match=r"bin.csv is not a readable CSV file"):
        analyse_study([study["dir"] / "bin.csv"], key_path=study["dir"] / "key.csv")


# ---- 4. decompression bombs --------------------------------------------------------------------


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_bomb_image_is_one_error_in_study_make_and_skipped_in_the_report(tmp_path: Path) -> None:
    from analysis.report import write_report
    from analysis.study import make_study

    run = Path(_hand_run(tmp_path / "run", {"p1": "a lake", "p2": "a hill"}))
    target = run / RunDir(run).image_relpath(B, "p2", 0)
    target.write_bytes(bomb_png())
    with pytest.raises(AuditError, match=r"image .*p2/0.png cannot be used: decompression bomb"):
        make_study(run, f"{A}:{B}", tmp_path / "study")
    assert not (tmp_path / "study").exists()
    html = write_report([run], tmp_path / "r.html").read_text()
    assert html.count("a hill") == 1 and html.count("a lake") == 2  # the bomb is left out


# ---- 5. statistics: raters and pairs crossed ---------------------------------------------------


def _brute_force(a: np.ndarray, d: np.ndarray, n_boot: int, seed: int) -> tuple[float, ...]:
    """Owen's pigeonhole bootstrap as a plain loop over the resampled raters and items."""
    rng = np.random.default_rng(seed)
    n_r, n_i = d.shape
    raters = rng.integers(0, n_r, size=(n_boot, n_r))
    items = rng.integers(0, n_i, size=(n_boot, n_i))
    shares = []
    for rs, its in zip(raters, items, strict=True):
        num = den = 0.0
        for r in rs:
            for i in its:
                num += a[r, i]
                den += d[r, i]
        if den:
            shares.append(num / den)
    share = a.sum() / d.sum()
    boot = np.array(shares)
    low, high = np.percentile(boot, [2.5, 97.5])
    p = (1 + sum(abs(s - share) >= abs(share - 0.5) - 1e-12 for s in boot)) / (1 + len(boot))
    return float(low), float(high), float(p)


def test_crossed_bootstrap_matches_a_brute_force_loop() -> None:
    from analysis.study.crossed import crossed_bootstrap

    rng = np.random.default_rng(11)
    choice = rng.choice([0, 1, 2, 3], size=(4, 7), p=[0.45, 0.25, 0.2, 0.1])  # a, b, none, skip
    a = (choice == 0).astype(float)
    d = (choice <= 1).astype(float)
    got = crossed_bootstrap(a, d, n_boot=400, seed=5)
    low, high, p = _brute_force(a, d, 400, 5)
    assert got["share"] == pytest.approx(a.sum() / d.sum())
    assert (got["low"], got["high"], got["p"]) == pytest.approx((low, high, p), abs=1e-12)
    assert got["n_raters"] == 4 and got["n_items"] == 7


def test_identical_raters_give_the_item_bootstrap_and_a_wider_interval() -> None:
    """10 raters answering alike carry the information of one: the interval is that of a
    one-way bootstrap over the 20 pairs (scipy), far wider than a Wilson over 200 answers."""
    from scipy.stats import bootstrap

    from analysis.stats.rates import wilson_interval
    from analysis.study.crossed import crossed_bootstrap

    per_item = np.array([1] * 13 + [0] * 5 + [1, 0], dtype=float)  # 14 a, 6 b
    a = np.tile(per_item, (10, 1))
    d = np.ones_like(a)
    got = crossed_bootstrap(a, d, n_boot=10_000, seed=0)
    oracle = bootstrap(
        (per_item, np.ones_like(per_item)),
        lambda x, y, axis=-1: x.sum(axis=axis) / y.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    assert got["low"] == pytest.approx(oracle.low, abs=0.03)
    assert got["high"] == pytest.approx(oracle.high, abs=0.03)
    naive_low, naive_high = wilson_interval(140, 200)
    assert got["high"] - got["low"] > 2 * (naive_high - naive_low)


def test_one_rater_has_no_crossed_interval(study: dict) -> None:
    """One rater cannot show how raters differ: the interval and p are n/a, n_raters = 1,
    while the per-answer (labelled) sign test is still reported."""
    from analysis.study import analyse_study

    result = analyse_study([_answer_file(study, "r1.csv", "r1", "a")])
    row = result["table"].set_index("question").loc["quality"]
    assert row["n_raters"] == 1 and row["n_pairs"] == 4
    assert math.isnan(row["a_decisive_cluster_low"]) and math.isnan(row["cluster_p"])
    assert row["sign_test_p_per_answer"] == pytest.approx(2 / 2**4)
    saved = json.loads((result["out"] / "analysis.json").read_text())
    assert saved["preferences"][0]["a_decisive_cluster_low"] is None
    assert any("two-way cluster bootstrap" in c for c in saved["conventions"])
    assert any("per answer" in c and "sign_test_p_per_answer" in c for c in saved["conventions"])


def test_study_analysis_reports_the_crossed_interval(study: dict) -> None:
    """Four raters, each answering every pair one way (3 for a, 1 for b): per answer, 12 of 16
    looks convincing (sign test p = 0.077); with raters as the unit it is 3 of 4 people."""
    from analysis.study import analyse_study
    from analysis.study.crossed import crossed_bootstrap

    paths = [_answer_file(study, f"r{i}.csv", f"r{i}", p) for i, p in enumerate("aaab")]
    row = analyse_study(paths)["table"].set_index("question").loc["alignment"]
    a = np.array([[1.0] * 4] * 3 + [[0.0] * 4])
    expect = crossed_bootstrap(a, np.ones_like(a))
    assert (row["a_decisive_cluster_low"], row["a_decisive_cluster_high"], row["cluster_p"]) == (
        pytest.approx((expect["low"], expect["high"], expect["p"]))
    )
    assert row["share_a_decisive"] == pytest.approx(12 / 16)
    assert row["sign_test_p_per_answer"] == pytest.approx(2 * 2517 / 2**16)
    # p by hand: draws of 4 raters from (a, a, a, b) are as extreme as 0.5 away from 0.75 when
    # all four are a (0.75**4) or at most two are a (1 - 0.75**4 - 4 * 0.75**3 * 0.25)
    by_hand = 0.75**4 + 1 - 0.75**4 - 4 * 0.75**3 * 0.25
    assert row["cluster_p"] == pytest.approx(by_hand, abs=0.015)


@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file(), reason="no /usr/bin/chromium")
def test_page_exports_a_rater_id_no_spreadsheet_runs(study: dict) -> None:
    """The page's own CSV export quotes a rater id starting with '-'; the analysis reads it back."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from analysis.study import analyse_study

    folder = study["dir"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND"],
        )
        try:
            page = browser.new_context(accept_downloads=True).new_page()
            page.goto((folder / "study.html").as_uri())
            page.fill("#rater", "-r2")
            for row in study["key"].itertuples():
                for q in ("quality", "alignment"):
                    side = "none" if row.kind == "attention" else "left"
                    page.check(f'input[name="{row.pair_id}-{q}"][value="{side}"]')
            with page.expect_download() as info:
                page.click("#export")
            target = folder / "export.csv"
            info.value.save_as(target)
        finally:
            browser.close()
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert {r[1] for r in rows[1:]} == {"'-r2"}
    assert analyse_study([target])["raters_table"]["rater"].tolist() == ["-r2"]
