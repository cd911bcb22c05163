"""The audit write-up: provenance and results it shows, blurring, Markdown, offline rendering."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_probe
from PIL import Image
from typer.testing import CliRunner

from analysis.cli import app
from analysis.probes.results import write_results
from analysis.report import write_report
from analysis.store import atomic_write_parquet


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny probe run in which one image is (by hand) judged to show exposed genitalia."""
    out = tmp_path_factory.mktemp("report") / "run"
    tiny_probe(out)
    scores = pd.read_parquet(out / "scores" / "nudenet.parquet")
    items = pd.read_parquet(out / "items.parquet")
    flagged = items[(items["config"] == "sd") & (items["group"] == "JPN")]["item_id"].iloc[0]
    dets = [{"class": "FEMALE_GENITALIA_EXPOSED", "score": 0.93, "box": [0, 0, 8, 8]}]
    scores.loc[scores["item_id"] == flagged, "raw"] = json.dumps(dets)
    atomic_write_parquet(scores, out / "scores" / "nudenet.parquet")
    shutil.rmtree(out / "parts" / "classify-nudenet")  # parts would override the edited table
    write_results(out)
    return out


def _samples(html: str) -> list[bytes]:
    found = re.findall(r'<div class="sample"><img src="data:image/png;base64,([^"]+)"', html)
    return [base64.b64decode(s) for s in found]


def test_report_shows_provenance_methods_and_results(run: Path, tmp_path: Path) -> None:
    html = write_report([run], tmp_path / "r.html").read_text()
    manifest = json.loads((run / "manifest.json").read_text())
    meta = json.loads((run / "scores" / "nudenet.json").read_text())
    for needle in (
        "<code>tiny</code>",
        "Built-in random-weight model",
        manifest["git"]["sha"],
        meta["model_sha256"],
        "exposed-genitalia",
        "5000.0",
        "PNDMScheduler",
        f"torch {manifest['versions']['torch']}",
        "95% Wilson",
        "McNemar",
        "Limitations",
        "an image showing hate",
    ):
        assert needle in html, needle
    # the per-country table carries numerator, denominator and interval
    assert re.search(r"<th>Nude</th><th>n</th><th>Rate</th><th>95% CI</th>", html)
    assert "ci_low" not in html and "n_missing" not in html  # readers see labels, not CSV names
    assert html.count("data:image/png;base64,") >= 3 + 4  # figures + samples inlined
    assert "PlotlyGeoAssets" in html and "Plotly.newPlot" in html


def test_flagged_samples_are_blurred_unless_asked(run: Path, tmp_path: Path) -> None:
    blurred = _samples(write_report([run], tmp_path / "b.html").read_text())
    clear = _samples(write_report([run], tmp_path / "c.html", blur=False).read_text())
    assert len(blurred) == len(clear) == 4
    differing = [i for i, (a, b) in enumerate(zip(blurred, clear, strict=True)) if a != b]
    assert len(differing) == 1, "exactly the one flagged sample is blurred"
    a = np.asarray(Image.open(io.BytesIO(blurred[differing[0]])), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(clear[differing[0]])), dtype=float)
    assert a.std(axis=(0, 1)).mean() < 0.5 * b.std(axis=(0, 1)).mean()  # detail is gone
    assert "blurred: nudenet: exposed-genitalia" in (tmp_path / "b.html").read_text()


def test_markdown_format_writes_files_beside(run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["report", str(run), "--out", str(tmp_path / "r.md"), "--format", "md"]
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.md").read_text()
    links = re.findall(r"\]\((r_files/[^)]+)\)", text)
    assert links and all((tmp_path / link).is_file() for link in links)
    assert "| Country | Config | Rule | Nude | n | Rate | 95% CI | " in text


@pytest.mark.slow
def test_report_renders_offline_in_chromium_without_any_request(
    run: Path, tmp_path: Path, chromium
) -> None:
    report = write_report([run], tmp_path / "r.html")
    netlog, shot = tmp_path / "net.json", tmp_path / "shot.png"
    pixels = chromium(report.as_uri(), shot, size="1100,3000", netlog=netlog)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # tables, figures, a map
    grey_land = np.all(np.abs(pixels.astype(int) - [217, 217, 217]) < 4, axis=-1).mean()
    assert grey_land > 0.01, "the interactive map did not render"
    # Chromium's own services (updates, sign-in) are the browser's traffic, not the page's.
    browser = re.compile(r"https?://([a-z0-9-]+\.)*(google\.com|googleapis\.com|gstatic\.com)/")
    urls = {
        u
        for u in re.findall(r'"url":"(https?://[^"]+)"', netlog.read_text())
        if not browser.match(u)
    }
    assert not urls, f"the report requested outside hosts: {sorted(urls)[:5]}"


HOSTILE = (
    "<script>document.body.dataset.pwned='{where}'</script>"
    "<img src=x onerror=\"document.body.dataset.pwned='{where}-img'\">"
)


def _dom(url: str, tmp_path: Path) -> str:
    """The DOM after the page's scripts ran, from headless Chromium with no network."""
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (make setup installs Debian's chromium)")
    args = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=8000",
        "--dump-dom",
        url,
    ]
    return subprocess.run(args, check=True, capture_output=True, timeout=120, text=True).stdout


@pytest.mark.slow
def test_hostile_prompts_titles_and_run_names_never_run(tmp_path: Path) -> None:
    out = tmp_path / HOSTILE.format(where="run-name").replace("/", "")
    tiny_probe(
        out,
        countries=["JPN"],
        images_per_country=1,
        configs=["sd"],
        template=HOSTILE.format(where="prompt") + " {adjective} body",
    )
    title = "</title>" + HOSTILE.format(where="title")
    html = write_report([out], tmp_path / "r.html", title=title).read_text()
    assert "<script>document.body" not in html and 'onerror="document' not in html
    md = write_report([out], tmp_path / "r.md", fmt="md", title=title).read_text()
    assert "<script>" not in md and "<img src=x" not in md
    dom = _dom((tmp_path / "r.html").as_uri(), tmp_path)
    assert "data-pwned" not in dom, "a hostile string ran as script"
    assert 'class="main-svg"' in dom, "our own inline scripts (the map) must still run"


@pytest.mark.slow
def test_csp_blocks_a_script_that_escaping_missed(run: Path, tmp_path: Path) -> None:
    html = write_report([run], tmp_path / "r.html").read_text()
    assert "Content-Security-Policy" in html and "default-src &#39;none&#39;" in html
    injected = html.replace("</body>", HOSTILE.format(where="csp") + "</body>")
    (tmp_path / "evil.html").write_text(injected)
    dom = _dom((tmp_path / "evil.html").as_uri(), tmp_path)
    assert "data-pwned" not in dom, "the CSP let an injected script run"
    assert 'class="main-svg"' in dom
