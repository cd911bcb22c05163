"""The classify stage: real NudeNet detections offline, Q16 maths, rules, bad images, resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nudenet import NudeDetector
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from analysis.classifiers import RULES, classify_run, load_verdicts, read_scores
from analysis.classifiers.images import decode_image
from analysis.classifiers.q16 import Q16Classifier, q16_probabilities
from analysis.cli import app
from analysis.errors import AuditError


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos plus one of every kind of bad file."""
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(data.chelsea()).save(root / "cat.jpg", quality=90)
    Image.fromarray(data.coffee()).convert("L").save(root / "coffee_gray.png")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.png").write_text("this is not an image")
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    corrupt = bytearray(buf.getvalue())
    corrupt[200:400] = b"\x00" * 200
    (root / "corrupt.png").write_bytes(bytes(corrupt))
    Image.new("1", (20_000, 20_000)).save(root / "bomb.png")  # 400 Mpx in a few KB
    return root


def test_real_positive_detection_matches_nudenet_itself(folder: Path) -> None:
    summary = classify_run(folder, ["nudenet"], rule="any-exposed", progress=False)
    scores = read_scores(
        __import__("analysis.store", fromlist=["RunDir"]).RunDir(folder), "nudenet"
    )
    paths = {p.name: p for p in folder.iterdir()}
    by_item = load_verdicts(folder, "nudenet", "any-exposed").set_index("image_path")
    raw = scores.set_index("item_id")["raw"]
    astro = json.loads(raw[by_item.loc["astronaut.png", "item_id"]])
    assert any(d["class"] == "FACE_FEMALE" and d["score"] > 0.5 for d in astro)
    for name in ("astronaut.png", "cat.jpg", "coffee_gray.png"):
        ours = json.loads(raw[by_item.loc[name, "item_id"]])
        assert ours == NudeDetector().detect(str(paths[name])), name
    assert summary["nudenet"]["errors"] == 5 and summary["nudenet"]["scored"] == 3


def test_every_bad_image_is_an_error_row_with_its_reason(folder: Path) -> None:
    classify_run(folder, ["nudenet"], progress=False)
    v = load_verdicts(folder).set_index("image_path")
    reasons = v["error"].to_dict()
    assert reasons["empty.png"].startswith("empty file")
    assert reasons["notes.png"].startswith("not an image")
    assert reasons["truncated.png"].startswith("truncated or corrupt")
    assert reasons["corrupt.png"].startswith("truncated or corrupt")
    assert reasons["bomb.png"].startswith("decompression bomb")
    assert v.loc["astronaut.png", "error"] is None or pd.isna(v.loc["astronaut.png", "error"])
    assert v.loc[["empty.png", "bomb.png"], "verdict"].isna().all()  # NA, never False


def test_huge_valid_jpeg_is_decoded_at_bounded_size(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    Image.fromarray(np.tile(data.astronaut(), (16, 16, 1))).save(big, quality=70)  # 8192^2
    decoded = decode_image(big)
    assert decoded.error is None and decoded.original_size == (8192, 8192)
    assert max(decoded.image.size) <= 2048  # JPEG draft: never held at full size


def test_rules_rederive_verdicts_from_stored_detections(folder: Path) -> None:
    classify_run(folder, ["nudenet"], progress=False)
    dets = [
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]},
        {"class": "MALE_GENITALIA_EXPOSED", "score": 0.45, "box": [0, 0, 1, 1]},
    ]
    assert RULES["i2p-exposed"].verdict(dets) is True
    assert RULES["exposed-genitalia"].verdict(dets) is False
    assert RULES["exposed-genitalia"].verdict(dets, threshold=0.4) is True
    face = load_verdicts(folder, "nudenet", "any-exposed").set_index("image_path")
    assert face.loc["astronaut.png", "rule"] == "any-exposed"
    with pytest.raises(AuditError, match="valid rules"):
        load_verdicts(folder, "nudenet", "nsfw")


def test_q16_maths_against_hand_computation() -> None:
    rng = np.random.default_rng(0)
    img, prompts = rng.standard_normal((3, 8)), rng.standard_normal((2, 8))
    probs = q16_probabilities(img, prompts)
    for i in range(3):
        cos = [
            float(img[i] @ prompts[j] / (np.linalg.norm(img[i]) * np.linalg.norm(prompts[j])))
            for j in range(2)
        ]
        e = np.exp(100 * np.array(cos) - 100 * max(cos))
        assert probs[i] == pytest.approx(e / e.sum(), rel=1e-9)


def test_q16_on_tiny_clip_stores_both_probabilities(folder: Path, tmp_path: Path) -> None:
    q = Q16Classifier("tiny")
    images = [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())]
    expected = q16_probabilities(q.bundle.embed_images(images), q.prompts)
    out = tmp_path / "scores"
    classify_run(folder, ["q16"], clip_model="tiny", out=out, progress=False)
    table = read_scores(__import__("analysis.store", fromlist=["RunDir"]).RunDir(out), "q16")
    assert table["error"].notna().sum() == 5
    v = load_verdicts(out, "q16").set_index("image_path")
    raw = json.loads(table.set_index("item_id").loc[v.loc["astronaut.png", "item_id"], "raw"])
    assert raw["p_inappropriate"] == pytest.approx(float(expected[0][1]), abs=1e-5)
    assert v.loc["astronaut.png", "verdict"] == bool(expected[0][1] > expected[0][0])
    with pytest.raises(AuditError, match="dimension"):
        Q16Classifier("tiny", prompts=np.ones((2, 768), dtype=np.float32))


def test_missing_clip_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(AuditError, match="not available: looked in the Hugging Face cache"):
        Q16Classifier()


def _tiny_run(tmp_path: Path) -> Path:
    """A finished 2-prompt x 2-image run of the tiny model (sd only)."""
    from analysis.generation.prompts import prompts_from_texts
    from analysis.generation.runner import build_spec, run_generation

    spec = build_spec(
        model="tiny",
        configs=["sd"],
        prompts=prompts_from_texts(["a", "b"]),
        images_per_prompt=2,
        steps=2,
        height=32,
        width=32,
    )
    run = tmp_path / "run"
    run_generation(spec, run, progress=False)
    return run


def test_resume_skips_scored_items_and_run_dirs_work(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path)
    first = classify_run(run, ["nudenet"], progress=False)
    assert first["nudenet"]["scored"] == 4
    again = classify_run(run, ["nudenet"], progress=False)
    assert again["nudenet"]["scored"] == 0 and again["nudenet"]["already_scored"] == 4
    assert len(pd.read_parquet(run / "scores" / "nudenet.parquet")) == 4
    meta = json.loads((run / "scores" / "nudenet.json").read_text())
    assert len(meta["model_sha256"]) == 64 and meta["rule"] == "exposed-genitalia"
    with pytest.raises(AuditError, match=r"no q16 scores yet.*t2i-audit classify"):
        load_verdicts(run, "q16")


def test_cli_classify_counts_errors(folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["classify", str(folder), "--out", str(tmp_path / "o"), "--rule", "i2p-exposed"]
    )
    assert result.exit_code == 0, result.output
    assert "nudenet: errors" in result.output and "5" in result.output
    bad = CliRunner().invoke(app, ["classify", str(tmp_path / "nothing")])
    assert isinstance(bad.exception, AuditError)


def test_prepared_blob_is_nudenets_own_preprocessing(folder: Path) -> None:
    """Our decode + prepare gives the exact network input NudeNet builds from cv2.imread."""
    import cv2
    from nudenet.nudenet import _read_image

    from analysis.classifiers.nudenet import NudeNetDetector

    detector = NudeNetDetector()
    for name in ("astronaut.png", "coffee_gray.png"):
        ours = detector.prepare(decode_image(folder / name).image)
        ref = _read_image(cv2.imread(str(folder / name)), detector.resolution)
        assert np.array_equal(ours.blob, ref[0]) and ours.meta == tuple(ref[1:]), name


def test_finished_run_reads_items_once_and_skips_needless_consolidation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis.classifiers import consolidate_scores, load_inappropriate
    from analysis.store import PartWriter, RunDir, Shard

    run = _tiny_run(tmp_path)
    classify_run(run, ["nudenet"], progress=False)
    ids = RunDir(run).items()["item_id"].tolist()
    q16 = [{"p_safe": 0.9, "p_inappropriate": 0.1}, {"p_safe": 0.2, "p_inappropriate": 0.8}]
    PartWriter(RunDir(run), "classify-q16", Shard()).append(
        [
            {"item_id": i, "model_sha256": "m", "raw": json.dumps(q16[k % 2]), "error": None}
            for k, i in enumerate(ids)
        ]
    )
    assert consolidate_scores(run, compact=True) == {"nudenet": 4, "q16": 4}
    table = run / "scores" / "nudenet.parquet"
    before = table.stat().st_mtime_ns
    assert consolidate_scores(run) == {"nudenet": 4, "q16": 4}  # no parts: counts from metadata
    assert table.stat().st_mtime_ns == before  # ... and nothing rewritten
    calls = []
    real = RunDir.items
    monkeypatch.setattr(RunDir, "items", lambda self: calls.append(1) or real(self))
    verdicts = load_inappropriate(run, "i2p-authors")
    assert len(calls) == 1
    assert verdicts["q16"].tolist() == [k % 2 == 1 for k in range(4)]
    assert verdicts["verdict"].tolist() == (verdicts["q16"] | verdicts["nudenet"]).tolist()
