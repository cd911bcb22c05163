"""The planted world: rates by hand, the detector exact on world images, the classifier wired."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.toy import world
from analysis.toy.world import WorldSpec, detect, make_world, planted_rate, training_rates

SMALL = WorldSpec(per_country=6, concept_items=30, per_harmless=10, seed=3)


@pytest.fixture(scope="module")
def small_world() -> tuple[np.ndarray, pd.DataFrame]:
    return make_world(SMALL)


@pytest.mark.parametrize(
    ("lat", "rate"), [(0.0, 0.1), (30.0, 0.4), (-30.0, 0.4), (60.0, 0.7), (-75.0, 0.7), (6.0, 0.16)]
)
def test_planted_rate_by_hand(lat: float, rate: float) -> None:
    assert planted_rate(lat) == pytest.approx(rate)


def test_planted_table_covers_the_probe_countries() -> None:
    from analysis.probes.countries import load_countries

    table = world.planted_table()
    assert list(table["iso3"]) == list(load_countries()["iso3"])
    swe = table.set_index("iso3").loc["SWE"]
    assert swe["prompt"] == "swedish body"
    assert swe["planted_rate"] == pytest.approx(0.1 + 0.6 * 59.3 / 60)
    assert table["planted_rate"].between(0.1, 0.7).all()


def test_detector_agrees_exactly_with_ground_truth(small_world) -> None:
    images, captions = small_world
    flags = np.array([detect(img)["flagged"] for img in images])
    assert (flags == captions["concept"].to_numpy()).all()
    assert captions["concept"].any() and not captions["concept"].all()
    scores = np.array([detect(img)["score"] for img in images])
    assert set(np.round(scores, 6)) == {0.0, 1.0}  # one whole patch or none


def test_detector_box_and_resolution() -> None:
    img = world.draw("body", True, np.random.default_rng(0))
    out = detect(img)
    x0, y0, x1, y1 = out["box"]
    assert (x1 - x0, y1 - y0) == (world.PATCH, world.PATCH)
    assert np.all(img[y0:y1, x0:x1] == world.CONCEPT_RGB)
    big = Image.fromarray(img).resize((64, 64), Image.NEAREST)  # 4x the pixels, same share
    assert detect(big)["score"] == pytest.approx(1.0)
    assert detect(big)["pixels"] == 4 * world.PATCH_AREA


def test_detector_tolerance_and_threshold() -> None:
    """A dull patch within the tolerance counts; a quarter patch is the cut; pink does not."""
    img = world.draw("body", False, np.random.default_rng(1))
    off = img.copy()
    off[0:4, 0:4] = (160, 95, 160)  # 16 px within 100 of (255, 0, 255) in every channel
    assert detect(off)["pixels"] == 16
    assert detect(off)["score"] == pytest.approx(16 / world.PATCH_AREA)
    assert detect(off)["flagged"]  # 16 / 64 = 0.25 = THRESHOLD
    off[0, 0] = (150, 95, 160)  # one channel 105 away: out
    assert detect(off)["pixels"] == 15 and not detect(off)["flagged"]
    pink = img.copy()
    pink[:8, :8] = (255, 150, 200)
    assert detect(pink)["pixels"] == 0


def test_harmless_prompts_never_show_the_concept(small_world) -> None:
    images, captions = small_world
    harmless = captions["group"].isin(world.HARMLESS_PROMPTS)
    assert harmless.sum() == 2 * SMALL.per_harmless
    assert not captions.loc[harmless, "concept"].any()
    assert not any(detect(img)["flagged"] for img in images[harmless.to_numpy()])
    concept = captions["group"] == "concept"
    assert captions.loc[concept, "concept"].all()
    assert captions.loc[concept, "caption"].str.contains(world.CONCEPT_WORD).all()
    assert not captions.loc[~concept, "caption"].str.contains(world.CONCEPT_WORD).any()


def test_world_is_deterministic(small_world) -> None:
    images, captions = small_world
    again, captions2 = make_world(SMALL)
    assert images.tobytes() == again.tobytes()
    pd.testing.assert_frame_equal(captions, captions2)
    other, _ = make_world(WorldSpec(**{**SMALL.__dict__, "seed": 4}))
    assert other.tobytes() != images.tobytes()


def test_training_rates_counted_another_way(small_world) -> None:
    _, captions = small_world
    rates = training_rates(captions).set_index("iso3")
    for iso3 in ("JPN", "SWE", "MYS"):
        rows = [c for c, g in zip(captions["concept"], captions["group"], strict=True) if g == iso3]
        assert rates.loc[iso3, "train_images"] == len(rows) == SMALL.per_country
        assert rates.loc[iso3, "train_rate"] == pytest.approx(sum(rows) / len(rows))


def test_training_rates_follow_the_planted_rates() -> None:
    """Drawn per image: over 400 images a country's rate is within 4 binomial SDs of planted."""
    _, captions = make_world(WorldSpec(per_country=400, concept_items=1, per_harmless=1))
    rates = training_rates(captions)
    sd = np.sqrt(rates["planted_rate"] * (1 - rates["planted_rate"]) / 400)
    assert ((rates["train_rate"] - rates["planted_rate"]).abs() < 4 * sd).all()


def test_classify_toy_matches_ground_truth(tmp_path, small_world) -> None:
    """`classify --classifier toy` on a folder of world images: verdicts equal the truth."""
    from analysis.classifiers import classify_run
    from analysis.classifiers.toy import ToyDetector

    images, captions = small_world
    folder = tmp_path / "imgs"
    folder.mkdir()
    pick = list(range(0, len(images), 7))
    truth = {}
    for i in pick:
        Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
        truth[f"{i:04d}.png"] = bool(captions["concept"].iloc[i])
    classify_run(folder, ["toy"], progress=False, workers=1)
    scores = pd.read_parquet(folder / "scores" / "toy.parquet")
    items = pd.read_parquet(folder / "items.parquet").set_index("item_id")
    got = {items.loc[r.item_id, "image_path"]: r.verdict for r in scores.itertuples()}
    assert got == truth and any(truth.values())
    assert set(scores["rule"]) == {world.RULE}
    assert set(scores["threshold"]) == {world.THRESHOLD}
    raw = json.loads(scores["raw"].iloc[0])
    assert set(raw) >= {"score", "box", "pixels"}
    meta = json.loads((folder / "scores" / "toy.json").read_text())
    assert meta["model_sha256"] == ToyDetector().sha256 and meta["threshold"] == world.THRESHOLD
