"""The quality side (COCO FID, CLIP distance) against formulas computed another way, offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis.errors import AuditError
from analysis.quality import fid
from analysis.quality.captions import read_captions, sample_captions
from analysis.quality.clip_distance import check_clip_weights, clip_distances, mean_interval


class RandomFeatures(torch.nn.Module):
    """A stand-in for Inception: uint8 images -> 16 random linear features of 4x4 pooled pixels."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(48, 16, generator=gen, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.double() / 255, 4).flatten(1)
        return pooled @ self.proj


def _write_images(folder: Path, arrays: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(arrays):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _features(arrays: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2)
    with torch.no_grad():
        return RandomFeatures()(x).numpy()


def test_fid_equals_frechet_formula_on_the_same_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    # reference images are 40 px wide: center-cropped to the generated 32x32 (4 px each side)
    ref = rng.integers(0, 256, (60, 32, 40, 3), dtype=np.uint8)
    gen_a = rng.integers(30, 256, (50, 32, 32, 3), dtype=np.uint8)
    gen_b = (rng.beta(2, 5, (45, 32, 32, 3)) * 255).astype(np.uint8)
    ref_paths = _write_images(tmp_path / "ref", ref)
    a_paths = _write_images(tmp_path / "a", gen_a)
    b_paths = _write_images(tmp_path / "b", gen_b)

    metric = fid.build_fid(feature_extractor=RandomFeatures())
    n_ref = fid.add_images(metric, fid.image_batches(ref_paths, 16, (32, 32)), real=True)
    got_a = fid.fid_of(metric, a_paths, batch_size=7)
    got_b = fid.fid_of(metric, b_paths, batch_size=64)  # reference features kept across configs

    ref_feats = _features(ref[:, :, 4:36])
    assert n_ref == 60
    assert got_a == pytest.approx(_frechet(_features(gen_a), ref_feats), rel=1e-4)
    assert got_b == pytest.approx(_frechet(_features(gen_b), ref_feats), rel=1e-4)
    assert got_a != pytest.approx(got_b, rel=1e-2)

    same = fid.build_fid(feature_extractor=RandomFeatures())
    fid.add_images(same, fid.image_batches(a_paths, 16), real=True)
    assert abs(fid.fid_of(same, a_paths, batch_size=16)) < 1e-6


def test_clip_distance_equals_hand_computation_and_bootstrap_is_percentile(
    tmp_path: Path,
) -> None:
    from analysis.classifiers.clip import tiny_clip

    bundle = tiny_clip()
    rng = np.random.default_rng(2)
    paths = _write_images(tmp_path, rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    captions = ["a dog on a bench", "two cats", "a red bus", "a plate of food", "a tall tower"]
    got = clip_distances(bundle, paths, captions, batch_size=2)

    # oracle: CLIPModel's own forward pass, whose logits are scale * cosine
    pixels = bundle.image_processor(
        images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt"
    )["pixel_values"]
    tokens = bundle.tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = bundle.model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=pixels,
        )
    scale = bundle.model.logit_scale.detach().exp()
    cos = (out.logits_per_image.diag() / scale).double().numpy()
    np.testing.assert_allclose(got, 1 - cos, rtol=1e-5, atol=1e-6)
    img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(got, 1 - (img * txt).sum(-1).double().numpy(), atol=1e-6)

    values = np.random.default_rng(5).random(37)
    low, high = mean_interval(values, n_boot=2_500, seed=11)
    draws = np.random.default_rng(11)
    means = np.concatenate(
        [
            values[draws.integers(0, 37, size=(size, 37))].mean(axis=1)
            for size in (1_000, 1_000, 500)
        ]
    )
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), rel=1e-12)


def _coco_json(path: Path) -> Path:
    """COCO's captions format: 6 images, 1-3 captions each, annotation ids out of order."""
    annotations, ann_id = [], 900
    for image_id, k in [(42, 3), (7, 1), (13, 2), (99, 2), (5, 3), (61, 1)]:
        for j in range(k):
            ann_id -= 7
            annotations.append(
                {"image_id": image_id, "id": ann_id, "caption": f"image {image_id} caption {j}"}
            )
    path.write_text(json.dumps({"info": {}, "images": [], "annotations": annotations}))
    return path


def test_caption_sampling_is_reproducible_one_per_image_and_recorded(tmp_path: Path) -> None:
    captions = read_captions(_coco_json(tmp_path / "captions_val2014.json"))
    first = sample_captions(captions, 4, seed=7)
    assert first == sample_captions(captions, 4, seed=7)
    assert len({c.image_id for c in first}) == 4
    # oracle: the documented draw, by hand
    images = sorted({int(c.image_id) for c in captions})
    rng = np.random.default_rng(7)
    expected = []
    for idx in rng.choice(len(images), size=4, replace=False):
        group = sorted(
            (c for c in captions if int(c.image_id) == images[idx]), key=lambda c: int(c.caption_id)
        )
        expected.append(group[int(rng.integers(len(group)))])
    assert first == expected
    assert any(sample_captions(captions, 4, seed=s) != first for s in range(1, 6))
    with pytest.raises(AuditError, match="cover 6 images"):
        sample_captions(captions, 7, seed=0)

    table = tmp_path / "caps.csv"
    table.write_text('caption,other\n"a dog, running",x\na cat,y\n')
    rows = read_captions(table)
    assert [(c.image_id, c.caption_id, c.caption) for c in rows] == [
        ("1", "1", "a dog, running"),
        ("2", "2", "a cat"),
    ]
    (tmp_path / "bad.csv").write_text("text\nhello\n")
    with pytest.raises(AuditError, match="no 'caption' column"):
        read_captions(tmp_path / "bad.csv")


def _generate(out: Path, captions: Path) -> dict:
    from analysis.quality import generate_quality

    return generate_quality(
        out=out,
        captions_file=captions,
        n=3,
        sample_seed=4,
        seed=10,
        model="tiny",
        configs=["sd", "sld-max"],
        steps=2,
        height=32,
        width=32,
        batch_size=2,
        progress=False,
    )


def test_generation_reuses_the_engine_skips_existing_and_shares_seeds(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from analysis.cli.quality import register
    from analysis.store import RunDir

    captions = _coco_json(tmp_path / "captions_val2014.json")
    out = tmp_path / "run"
    first = _generate(out, captions)
    assert first["generated"] == 6 and first["complete"]
    items = RunDir(out).items()
    files = [out / p for p in items["image_path"]]
    assert all(f.is_file() for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]

    # the same run through the CLI: nothing is regenerated
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep `quality` a sub-command
    args = ["quality", "generate", "--out", str(out), "--captions", str(captions), "--n", "3"]
    args += ["--sample-seed", "4", "--seed", "10", "--model", "tiny", "--config", "sd"]
    args += ["--config", "sld-max", "--steps", "2", "--height", "32", "--width", "32"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert _generate(out, captions)["generated"] == 0

    seeds = items.pivot(index="prompt_id", columns="config", values="seed")
    assert (seeds["sd"] == seeds["sld-max"]).all()
    assert sorted(seeds["sd"]) == [10, 11, 12]
    record = json.loads((out / "quality" / "captions.json").read_text())
    drawn = sample_captions(read_captions(captions), 3, seed=4)
    assert record["sample_seed"] == 4 and record["n"] == 3
    assert [c["caption_id"] for c in record["captions"]] == [c.caption_id for c in drawn]
    assert set(items["prompt_id"]) == {c.prompt_id for c in drawn}
    assert items.set_index("prompt_id")["prompt"].to_dict() == {
        c.prompt_id: c.caption for c in drawn
    }


def test_score_writes_results_and_reuses_them(tmp_path: Path, monkeypatch) -> None:
    from analysis.classifiers.clip import tiny_clip
    from analysis.quality import run as quality_run
    from analysis.quality import score_quality

    out = tmp_path / "run"
    _generate(out, _coco_json(tmp_path / "captions_val2014.json"))
    ref = _write_images(
        tmp_path / "ref", np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), np.uint8)
    )
    kwargs = {"feature_extractor": RandomFeatures(), "clip_bundle": tiny_clip(), "n_boot": 500}
    table = score_quality(out, tmp_path / "ref", **kwargs)
    assert list(table["config"]) == ["sd", "sld-max"] and list(table["n"]) == [3, 3]
    on_disk = pd.read_csv(out / "results" / "quality.csv")
    assert {"fid", "clip_distance", "ci_low", "ci_high", "fid_resize"} <= set(on_disk.columns)
    echo = json.loads((out / "results" / "quality.json").read_text())
    assert echo["reference"]["n_images"] == 8 and "torchmetrics" in echo["versions"]

    items = quality_run.RunDir(out).items()
    sd = items[(items["config"] == "sd")].sort_values("prompt_id")
    gen = np.stack([np.asarray(Image.open(out / p).convert("RGB")) for p in sd["image_path"]])
    ref_arrays = np.stack([np.asarray(Image.open(p)) for p in ref])
    assert table["fid"].iloc[0] == pytest.approx(
        _frechet(_features(gen), _features(ref_arrays)), rel=1e-4
    )
    per_image = pd.read_parquet(out / "quality" / "clip_distance" / "sd.parquet")
    assert table["clip_distance"].iloc[0] == pytest.approx(per_image["clip_distance"].mean())

    def fail(*a, **k):
        raise AssertionError("recomputed a config whose inputs did not change")

    monkeypatch.setattr(quality_run, "_score_config", fail)
    again = score_quality(out, tmp_path / "ref", **kwargs)
    pd.testing.assert_frame_equal(again, table)


def test_missing_weights_name_what_to_download(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / fid.INCEPTION_FILE
    with pytest.raises(AuditError) as exc:
        fid.resolve_inception_weights()
    assert fid.INCEPTION_URL in str(exc.value) and str(hub_file) in str(exc.value)
    monkeypatch.setenv(fid.INCEPTION_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(AuditError, match=r"nowhere\.pth"):
        fid.resolve_inception_weights()
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"weights")
    assert fid.resolve_inception_weights(hub_file) == hub_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(AuditError, match="huggingface-cli download openai/clip-vit-large"):
        check_clip_weights("openai/clip-vit-large-patch14")
    with pytest.raises(AuditError, match="does not exist"):
        check_clip_weights(str(tmp_path / "no-clip"))

    # scoring checks both before computing anything
    from analysis.quality import score_quality

    out = tmp_path / "run"
    _generate(out, _coco_json(tmp_path / "captions_val2014.json"))
    ref = tmp_path / "ref"
    _write_images(ref, np.zeros((2, 8, 8, 3), np.uint8))
    monkeypatch.delenv(fid.INCEPTION_ENV)
    hub_file.unlink()
    with pytest.raises(AuditError, match="weights-inception-2015-12-05"):
        score_quality(out, tmp_path / "ref")
    assert not (out / "results").exists()

    import typer
    from typer.testing import CliRunner

    from analysis.cli.quality import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["quality", "score", str(out), "--reference", str(ref)])
    assert isinstance(result.exception, AuditError)
    assert fid.INCEPTION_URL in str(result.exception)
