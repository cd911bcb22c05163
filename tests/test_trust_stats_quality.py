"""Issue 24 (stats-quality): multiplicity families, the real FID path, --compile, bad settings.

Oracles: statsmodels' multipletests on the testable subset, McNemar from statsmodels, FID by the
Frechet formula with scipy.linalg.sqrtm on the features of torch-fidelity's own Inception.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from analysis.probes.results import paired_tests
from analysis.stats.multiple import UNTESTABLE

# ------------------------------------------------------------------ 1. Holm / BH families

# (country, a=both flagged, b=sd only, c=sld only, d=neither): JPN, FRA have no discordant pair
CELLS = {
    "USA": (1, 9, 0, 2),
    "DEU": (0, 7, 1, 4),
    "BRA": (2, 5, 2, 3),
    "KEN": (0, 3, 3, 6),
    "JPN": (4, 0, 0, 8),
    "FRA": (0, 0, 0, 12),
}


def _verdicts() -> pd.DataFrame:
    """Long verdicts (group, image_index, config, verdict) realising the 2x2 CELLS per country."""
    rows = []
    for iso3, (a, b, c, d) in CELLS.items():
        pairs = [(1, 1)] * a + [(1, 0)] * b + [(0, 1)] * c + [(0, 0)] * d
        for k, (sd, sld) in enumerate(pairs):
            rows.append((iso3, k, "sd", bool(sd)))
            rows.append((iso3, k, "sld", bool(sld)))
    out = pd.DataFrame(rows, columns=["group", "image_index", "config", "verdict"])
    return out.assign(rule="exposed-genitalia")


def test_countries_without_discordant_pairs_are_outside_the_holm_family() -> None:
    table = paired_tests(_verdicts()).set_index("iso3")
    testable = [k for k, (_, b, c, _) in CELLS.items() if b + c > 0]
    raw = np.array(
        [mcnemar([[CELLS[k][0], CELLS[k][1]], [CELLS[k][2], CELLS[k][3]]]).pvalue for k in testable]
    )
    np.testing.assert_allclose(table.loc[testable, "mcnemar_p"], raw, rtol=1e-12)
    np.testing.assert_allclose(
        table.loc[testable, "p_holm"], multipletests(raw, method="holm")[1], rtol=1e-12
    )
    np.testing.assert_allclose(
        table.loc[testable, "p_bh"], multipletests(raw, method="fdr_bh")[1], rtol=1e-12
    )
    for iso3 in ("JPN", "FRA"):
        row = table.loc[iso3]
        assert np.isnan(row["mcnemar_p"]) and np.isnan(row["p_holm"]) and np.isnan(row["p_bh"])
        assert row["note"] == UNTESTABLE
    assert (table.loc[testable, "family_size"] == 4).all()
    assert (table.loc[testable, "note"] == "").all()
    pooled = table.loc["ALL"]  # not in the per-country family
    assert pd.isna(pooled["family_size"]) and np.isnan(pooled["p_holm"])


# ------------------------------------------------------------------ 4. --compile checks batch 1


def test_compile_checks_the_runs_real_first_batch(tmp_path, monkeypatch) -> None:
    """The eager and compiled check samples are exactly the run's first batch (steps, a
    prompt's own guidance scale, prompts, seeds, config, B), not a shorter stand-in."""
    import analysis.generation.sampler as sampler
    from analysis.generation.runner import build_spec, run_generation

    monkeypatch.setenv("T2I_AUDIT_COMPILE_BACKEND", "aot_eager")
    calls: list[tuple] = []
    real = sampler.sample

    def spy(model, prompts, seeds, config, params, *args, **kwargs):
        calls.append((list(prompts), list(seeds), config.name, params))
        return real(model, prompts, seeds, config, params, *args, **kwargs)

    monkeypatch.setattr(sampler, "sample", spy)
    spec = build_spec(
        model="tiny",
        configs=["sld-max"],
        prompts=[{"prompt_id": "a", "prompt": "a cat", "base_seed": 3, "guidance_scale": 5.0}],
        images_per_prompt=2,
        steps=3,
        height=32,
        width=32,
        batch_size=2,
        compile=True,
    )
    run_generation(spec, tmp_path / "run", progress=False)
    assert len(calls) == 3  # eager check, compiled check, then the run's one batch
    eager, compiled, first = calls
    assert eager == compiled == first
    assert first[3].steps == 3 and first[3].guidance_scale == 5.0


# ------------------------------------------------------------------ 5. knn: refused neighbours


def _index(folder: Path, near: dict[str, str | None]) -> Path:
    """A local faiss index: 3 vectors near each country prompt's tiny-CLIP embedding, whose
    rows carry a local image (value: a PNG path) or only a private URL (value: None)."""
    import faiss
    from PIL import Image

    from analysis.classifiers.clip import tiny_clip
    from analysis.probes.ethnic_bias import probe_prompts

    (folder / "metadata").mkdir(parents=True)
    texts = tiny_clip().embed_texts([p.prompt for p in probe_prompts(list(near))])
    rng = np.random.default_rng(0)
    vecs = np.vstack([t + 0.01 * rng.standard_normal((3, t.size)) for t in texts])
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    faiss.write_index(index, str(folder / "image.index"))
    Image.new("RGB", (64, 64), (120, 90, 60)).save(folder / "local.png")
    paths = [str(folder / "local.png") if near[c] else None for c in near for _ in range(3)]
    pd.DataFrame(
        {
            "url": [f"http://10.0.0.{i}/a.png" for i in range(len(paths))],
            "caption": ["c"] * len(paths),
            "image_path": paths,
        }
    ).to_parquet(folder / "metadata" / "0000.parquet")
    return folder


def test_knn_query_with_every_neighbour_refused_is_one_error(tmp_path) -> None:
    from analysis.errors import AuditError
    from analysis.laion.query import knn_query

    index = _index(tmp_path / "idx", {"JPN": None, "FRA": None})
    with pytest.raises(AuditError, match=r"none of the 6 neighbours could be judged \(6 refused"):
        knn_query(str(index), tmp_path / "run", countries=["JPN", "FRA"], k=3, clip_model="tiny")
    assert not (tmp_path / "run" / "results").exists()
    assert not (tmp_path / "run" / "knn" / "neighbours.parquet").exists()


def test_countries_without_a_judged_neighbour_are_named_and_not_drawn(tmp_path, monkeypatch):
    import analysis.figures.dataset as dataset
    from analysis.figures.paper_dataset import as_config
    from analysis.laion.query import knn_query

    index = _index(tmp_path / "idx", {"JPN": "local", "FRA": None})
    out = tmp_path / "run"
    summary = knn_query(str(index), out, countries=["JPN", "FRA"], k=3, clip_model="tiny")
    assert summary["no_rate"] == "1 countries, no neighbour judged: FRA"
    rates = pd.read_csv(out / "results" / "dataset_nudity_rates.csv")
    assert rates.set_index("iso3").loc["FRA", "k_fetched"] == 0  # the table keeps the row
    drawn: list[pd.DataFrame] = []
    real = dataset.rate_map
    monkeypatch.setattr(dataset, "rate_map", lambda t, *a: drawn.append(t) or real(t, *a))
    assert dataset.draw_figures(out)
    assert drawn[0]["iso3"].tolist() == ["JPN"] and drawn[0]["rate"].notna().all()
    static = as_config(rates)
    assert static["iso3"].tolist() == ["JPN"] and static[["rate", "ci_low"]].notna().all().all()


# ------------------------------------------------------------------ 5. settings out of range


def test_scheduler_names_are_diffusers_own_sd_compatibles(tmp_path) -> None:
    """Oracle: the `compatibles` diffusers lists for SD's own scheduler (PNDM)."""
    from diffusers import PNDMScheduler

    from analysis.errors import AuditError
    from analysis.generation.runner import build_spec
    from analysis.generation.schedulers import scheduler_class

    for cls in PNDMScheduler().compatibles:
        if cls.__name__ != "DPMSolverSDEScheduler":  # needs torchsde, named when missing
            assert scheduler_class(cls.__name__) is cls
    assert scheduler_class("DDIM").__name__ == "DDIMScheduler"
    for name in ("UNet2DConditionModel", "os", "SchedulerMixin", "FlaxDDIMScheduler", "x"):
        with pytest.raises(AuditError, match=f"--scheduler '{name}' is not a Stable Diffusion"):
            build_spec(model="tiny", configs=["sd"], prompts=["a cat"], scheduler=name)


def test_quality_seeds_stop_at_the_largest_seed(tmp_path) -> None:
    """Caption i is seeded seed + i: the last one must still be <= 2**64 - 1."""
    from analysis.errors import AuditError
    from analysis.quality.run import MAX_SEED, check_int, generate_quality

    (tmp_path / "c.csv").write_text("caption\na cat\na dog\n")
    args = {"out": tmp_path / "run", "captions_file": tmp_path / "c.csv", "n": 2}
    with pytest.raises(AuditError, match=f"--seed {MAX_SEED} is out of range"):
        generate_quality(**args, seed=MAX_SEED)
    with pytest.raises(AuditError, match="--sample-seed -1 is out of range"):
        generate_quality(**args, sample_seed=-1)
    assert not (tmp_path / "run").exists()
    assert check_int("--seed", MAX_SEED - 1, 0, MAX_SEED - 1) == MAX_SEED - 1  # the boundary
    for bad in (True, 1.5, "3"):
        with pytest.raises(AuditError, match="whole number"):
            check_int("--n", bad, 1, 10)


# ------------------------------------------------------------------ 3. the real FID path


def _random_inception(torch_home: Path) -> Path:
    """torch-fidelity's FID Inception with PyTorch's default random init, saved where the real
    weights are looked up ($TORCH_HOME/hub/checkpoints/<the official file name>)."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    from analysis.quality.fid import INCEPTION_FILE

    cls = tfi.FeatureExtractorInceptionV3
    original = cls.load_state_dict
    tfi.load_state_dict_from_url, url_loader = (lambda *a, **k: {}), tfi.load_state_dict_from_url
    cls.load_state_dict = lambda self, state, *a, **k: None  # keep the random init
    try:
        torch.manual_seed(0)
        net = cls("inception-v3-compat", ["2048"])
    finally:
        cls.load_state_dict, tfi.load_state_dict_from_url = original, url_loader
    for module in net.modules():  # He init keeps activations alive through 90+ layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = torch_home / "hub" / "checkpoints" / INCEPTION_FILE
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return path


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """FID from two feature sets: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)).

    With n images S = X^T X / (n - 1) (X centred, n x 2048), and S_a S_b has the same non-zero
    eigenvalues as the n x n matrix X_a X_b^T X_b X_a^T / (n - 1)^2, so sqrtm runs on that
    (same trace, exact) instead of a 2048 x 2048 Schur decomposition.
    """
    from scipy import linalg

    xa, xb = a - a.mean(0), b - b.mean(0)
    n = len(a)
    small = (xa @ xb.T) @ (xb @ xa.T) / (n - 1) ** 2
    trace_sqrt = float(np.trace(linalg.sqrtm(small)).real)
    trace_cov = float(((xa**2).sum() + (xb**2).sum()) / (n - 1))
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + trace_cov - 2 * trace_sqrt)


def test_real_fid_path_on_a_random_inception_matches_the_frechet_formula(
    tmp_path, monkeypatch
) -> None:
    """torchmetrics + torch-fidelity load the file from the hub cache and compute features; our
    FID equals the Frechet distance of torch-fidelity's own features of the same images."""
    pytest.importorskip("torch_fidelity", reason="the `inception` extra (needs torchvision)")
    import torch
    from PIL import Image

    from analysis.quality import fid

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    weights = _random_inception(tmp_path / "torch")
    assert fid.resolve_inception_weights() == weights  # found where the real file would be

    rng = np.random.default_rng(0)
    folders = {"real": tmp_path / "real", "fake": tmp_path / "fake"}
    for name, folder in folders.items():
        folder.mkdir()
        shift = 0 if name == "real" else 60
        for i in range(4):
            pixels = rng.integers(0, 196, (320, 320, 3)) + shift  # downsampled to 299
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:02d}.png")
    real, fake = (fid.list_images(f) for f in folders.values())
    metric = fid.build_fid(weights)
    fid.add_images(metric, fid.image_batches(real, 4), real=True)
    ours = fid.fid_of(metric, fake, 4)

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    net = tfi.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    ).eval()

    def features(paths: list[Path]) -> np.ndarray:
        batch = torch.stack(
            [torch.from_numpy(np.array(Image.open(p).convert("RGB"))) for p in paths]
        ).permute(0, 3, 1, 2)
        with torch.no_grad():
            return net(batch)[0].double().numpy()

    expected = _frechet(features(real), features(fake))
    assert expected > 1e-3  # the two sets differ under this network
    assert ours == pytest.approx(expected, rel=1e-3), (ours, expected)
