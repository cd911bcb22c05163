"""A run whose model carries a notice (the toy model) has it on every figure and map drawn from
it: plotly HTML, the paper SVG/PNG, the report's interactive map, `figures --all`. A run without
a notice draws exactly the figures it drew before."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_probe
from PIL import Image
from typer.testing import CliRunner

import analysis.figures.notice as notice_module
from analysis.cli import app
from analysis.figures import draw_all
from analysis.report import write_report
from analysis.store import RunDir
from analysis.toy.world import NOTICE

RED = np.array([0xB2, 0x18, 0x2B])  # notice_module.NOTICE_COLOUR


def _set_notice(run: Path, notice: object) -> None:
    rundir = RunDir(run)
    manifest = rundir.read_manifest()
    manifest["model"]["notice"] = notice
    rundir.write_manifest(manifest)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny probe run (no notice; its figures drawn by the probe) and a copy with the toy
    model's notice, its figures redrawn by `t2i-audit figures`."""
    base = tmp_path_factory.mktemp("notice")
    plain, toy = base / "plain", base / "toy"
    tiny_probe(plain)
    shutil.copytree(plain, toy)
    _set_notice(toy, NOTICE)
    result = CliRunner().invoke(app, ["figures", str(toy)])
    assert result.exit_code == 0, result.output
    return plain, toy


def _notice_pixels(png: Path) -> int:
    """Pixels of the notice's colour in the bottom tenth of the image (where the footnote is)."""
    rgb = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("RGB"), dtype=int)
    bottom = rgb[-max(1, rgb.shape[0] // 10) :]
    return int((np.abs(bottom - RED).sum(axis=2) < 40).sum())


def test_every_figure_of_a_toy_run_carries_the_notice(runs: tuple[Path, Path]) -> None:
    _, toy = runs
    files = sorted((toy / "figures").glob("*.*"))
    texts = [p for p in files if p.suffix in (".svg", ".html") and p.name != "plotly.min.js"]
    pngs = [p for p in files if p.suffix == ".png"]
    # 3 interactive (map, ranked, dumbbell) + 4 paper figures (rates, dumbbell, 2 maps)
    assert len(texts) == 3 + 4 and len(pngs) == 4
    for path in texts:
        assert NOTICE in path.read_text(encoding="utf-8"), path.name
    for path in pngs:
        assert _notice_pixels(path) > 50, path.name


def test_figures_of_a_run_without_notice_do_not_change(
    runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, _ = runs
    before = {p.name: p.read_bytes() for p in (plain / "figures").iterdir()}
    assert not any(NOTICE.encode() in data for data in before.values())
    assert all(_notice_pixels(plain / "figures" / n) == 0 for n in before if n.endswith(".png"))
    # the probe drew them through the stamping savers: the same bytes as with no stamping
    monkeypatch.setattr(notice_module, "notice_for_output", lambda out_base: None)
    draw_all(plain)
    assert {p.name: p.read_bytes() for p in (plain / "figures").iterdir()} == before


def test_report_map_of_a_toy_run_carries_the_notice(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    plain, toy = runs
    html = write_report([toy], tmp_path / "toy.html").read_text()
    start = html.index('<div id="map-toy"')
    plot = html[start : html.index("</script>", html.index("Plotly.newPlot", start))]
    assert NOTICE in plot  # on the map itself, not only in the banner above
    html = write_report([plain], tmp_path / "plain.html").read_text()
    start = html.index('<div id="map-plain"')
    assert NOTICE not in html


def test_figures_all_redraws_the_demo_with_its_notice(
    runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import analysis.i2p
    from analysis.figures.regenerate import regenerate_all

    _, toy = runs
    # the I2P half of --all (bundled data, not a run) is not what this test is about
    monkeypatch.setattr(analysis.i2p, "correlate", lambda data, out, seed: out.mkdir())
    written = regenerate_all(tmp_path / "figures", demo_run=toy)
    svgs = [p for p in written if p.suffix == ".svg"]
    assert len(svgs) == 4 and all(p.name.startswith("demo_") for p in svgs)
    for path in svgs:
        assert NOTICE in path.read_text(encoding="utf-8"), path.name


def test_notice_stamp_is_idempotent_and_bounded_to_the_run(tmp_path: Path) -> None:
    """Saving one figure twice writes the notice once; a folder outside any run gets none."""
    import matplotlib

    matplotlib.use("Agg")
    from analysis.figures.static import new_figure, save_static

    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "manifest.json").write_text('{"model": {"notice": "planted"}}')
    fig = new_figure(2, 2)
    fig.add_subplot().plot([0, 1])
    save_static(fig, run / "figures" / "a", formats=("svg",))
    save_static(fig, run / "figures" / "b", formats=("svg",))
    assert (run / "figures" / "b.svg").read_text().count(">planted<") == 1
    other = run / "two" / "levels" / "down"  # too far below the run to be one of its figures
    save_static(new_figure(2, 2), other / "c", formats=("svg",))
    assert "planted" not in (other / "c.svg").read_text()
