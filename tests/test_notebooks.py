"""The report notebooks run headless (papermill) on a tiny run and the bundled data."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from analysis.classifiers import classify_run
    from analysis.generation.runner import build_spec, run_generation
    from analysis.probes.ethnic_bias import probe_prompts
    from analysis.probes.results import write_results

    out = tmp_path_factory.mktemp("nb") / "run"
    spec = build_spec(
        model="tiny",
        configs=["sd", "sld-max"],
        prompts=probe_prompts(["JPN", "BRA"]),
        images_per_prompt=2,
        steps=2,
        height=32,
        width=32,
    )
    run_generation(spec, out, progress=False)
    classify_run(out, ["nudenet"], progress=False)
    write_results(out)
    return out


def _execute(name: str, tmp_path: Path, **params) -> str:
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(out),
        parameters=params,
        cwd=str(NOTEBOOKS),
        kernel_name="python3",
        progress_bar=False,
    )
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nbformat.read(out, as_version=4))
    return html


@pytest.mark.slow
def test_ethnic_bias_notebook(run: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in (run / "results").iterdir()}
    out_dir = tmp_path / "nb-results"
    html = _execute(
        "ethnic_bias", tmp_path, run_dir=str(run), rule="i2p-exposed", out_dir=str(out_dir)
    )
    assert "Japan" in html and "ci_low" in html
    # another rule goes to the notebook's own folder; the run's results are untouched
    assert {p.name: p.read_bytes() for p in (run / "results").iterdir()} == before
    assert "i2p-exposed" in (out_dir / "nudity_rates.csv").read_text()
    assert html.count("Plotly.newPlot") >= 2  # the map and the ranked intervals are in the export
    assert not re.search(r'<script[^>]+src="https?://cdn\.plot\.ly', html)


@pytest.mark.slow
def test_i2p_notebook_on_bundled_data(tmp_path: Path) -> None:
    html = _execute("i2p", tmp_path, n_boot=200)
    assert "inappropriate_percentage" in html and "Plotly.newPlot" in html
    assert re.search(r"0\.22\d", html)  # the paper's Spearman rho


@pytest.mark.slow
def test_dataset_side_notebook_without_knn_results(run: Path, tmp_path: Path) -> None:
    html = _execute("dataset_side", tmp_path, run_dir=str(run))
    assert "does not exist yet" in html and "knn query" in html
