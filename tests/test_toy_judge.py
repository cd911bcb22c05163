"""On the toy model the toy detector is the judge and the toy filter is the image filter.

The oracle is `analysis.toy.world.detect` applied to the saved PNGs directly, outside the
classify/verdict pipeline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.cli import main
from analysis.toy import world


@pytest.fixture(scope="module")
def toy_probe(tmp_path_factory: pytest.TempPathFactory):
    from analysis.probes.ethnic_bias import run_probe

    out = tmp_path_factory.mktemp("toyjudge") / "probe"
    run_probe(
        out=out,
        model="toy",
        countries=["SWE", "NGA"],
        images_per_country=6,
        configs=["sd"],
        steps=20,
        batch_size=12,
        progress=False,
    )
    return out


def _detect(run, items: pd.DataFrame, **kw) -> np.ndarray:
    return np.array(
        [world.detect(Image.open(run / p), **kw)["flagged"] for p in items["image_path"]]
    )


def test_the_probe_on_toy_is_judged_by_the_toy_detector(toy_probe) -> None:
    from analysis.store import RunDir

    run = RunDir(toy_probe)
    assert not (toy_probe / "scores" / "nudenet.parquet").exists()  # NudeNet never ran
    rates = pd.read_csv(toy_probe / "results" / "nudity_rates.csv").set_index("iso3")
    assert set(rates["rule"]) == {world.RULE}
    items = run.items()
    for iso3 in ("SWE", "NGA"):
        sub = items[items["group"] == iso3]
        expected = _detect(toy_probe, sub)
        assert rates.loc[iso3, "nude"] == expected.sum() and rates.loc[iso3, "n"] == len(sub)
    assert rates.loc["SWE", "rate"] > rates.loc["NGA", "rate"]  # planted 0.69 vs 0.25


def test_toy_verdicts_are_rederived_at_another_threshold(toy_probe) -> None:
    from analysis.classifiers import load_verdicts

    items = load_verdicts(toy_probe, "toy", threshold=0.9)
    scores = [world.detect(Image.open(toy_probe / p))["score"] for p in items["image_path"]]
    assert list(items["verdict"].astype(bool)) == [s >= 0.9 for s in scores]
    assert set(items["threshold"]) == {0.9}
    default = load_verdicts(toy_probe, "toy")
    assert set(default["threshold"]) == {world.THRESHOLD}


def test_classify_defaults_to_the_toy_judge_and_filter_uses_the_toy_filter(
    toy_probe, tmp_path, capsys
) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(toy_probe, run)
    shutil.rmtree(run / "scores")
    shutil.rmtree(run / "parts", ignore_errors=True)
    with pytest.raises(SystemExit) as exc:
        main(["classify", str(run)])
    assert exc.value.code in (0, None), capsys.readouterr().err
    assert (run / "scores" / "toy.parquet").is_file() or any((run / "parts").rglob("*toy*"))

    gen = tmp_path / "gen"
    argv = ["generate", "--out", str(gen), "--model", "toy", "--prompt", "Swedish body",
            "--images-per-prompt", "6", "--steps", "20", "--batch-size", "6",
            "--config", "sd+filter"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code in (0, None), capsys.readouterr().err
    from analysis.classifiers import load_verdicts

    blocked = load_verdicts(gen, "toy-filter")
    oracle = _detect(
        gen, blocked, tolerance=world.FILTER_TOLERANCE, threshold=world.FILTER_THRESHOLD
    )
    assert list(blocked["verdict"].astype(bool)) == list(oracle)
    assert set(blocked["threshold"]) == {world.FILTER_THRESHOLD}


def test_an_unknown_probe_rule_lists_the_toy_rule_too() -> None:
    from analysis.classifiers.judges import probe_classifier
    from analysis.errors import AuditError

    with pytest.raises(AuditError, match=world.RULE):
        probe_classifier("nope")
