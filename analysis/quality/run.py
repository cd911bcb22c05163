"""The quality side of the paper's Table 2: generate from COCO captions, then FID + CLIP distance.

Generation is an ordinary run of the engine (resume, shards, fixed-shape batches): prompts are
the sampled captions, one image each, caption i seeded with seed + i in every config, so SD vs
SLD is paired on identical noise. Scoring reads the run directory only and writes
results/quality.csv with a JSON echo of everything that produced it; configs whose inputs have
not changed since the last scoring are not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.errors import AuditError
from analysis.quality.captions import read_captions, sample_captions, sampling_record
from analysis.store import RunDir, Shard, atomic_write_parquet, atomic_write_text
from analysis.store.csvsafe import write_csv
from analysis.store.provenance import environment_info, package_versions

KIND = "coco-quality"
RESULT_COLUMNS = [
    "config",
    "n",
    "n_requested",
    "fid",
    "clip_distance",
    "ci_low",
    "ci_high",
    "clip_model",
    "fid_weights",
    "fid_resize",
    "fid_feature_layer",
    "fid_reference_preprocess",
    "n_reference",
]
VERSION_PACKAGES = ("torch", "torchmetrics", "torch-fidelity", "transformers", "numpy", "scipy")
MAX_SEED = 2**64 - 1  # the generation engine's largest seed (a torch.Generator seed)
MAX_SCORE_BATCH = 4096  # images per Inception/CLIP call; beyond this only memory runs out


def check_int(option: str, value: Any, low: int, high: int) -> int:
    """One guard for the quality commands' integer settings: a whole number in [low, high].

    Out-of-range values otherwise surfaced deep inside numpy or pydantic as tracebacks
    (a negative --sample-seed, a --seed whose last caption passes 2**64 - 1).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AuditError(f"{option} {value!r} is out of range: use a whole number {low} to {high}")
    return value


def generate_quality(
    *,
    out: str | Path,
    captions_file: str | Path,
    n: int,
    sample_seed: int = 0,
    seed: int = 0,
    model: str = "tiny",
    configs: list[Any] | None = None,
    steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    dtype: str = "float32",
    shard: Shard | None = None,
    progress: bool = True,
    loaded_model: Any = None,
) -> dict[str, Any]:
    """Sample n captions (recorded), then generate one image per caption and config."""
    from analysis.generation.runner import PromptSpec, build_spec, run_generation

    check_int("--sample-seed", sample_seed, 0, MAX_SEED)
    captions = sample_captions(read_captions(captions_file), n, sample_seed)  # checks --n
    check_int("--seed", seed, 0, MAX_SEED - (n - 1))  # caption i is seeded seed + i
    record = sampling_record(captions_file, captions, n, sample_seed)
    prompts = [
        PromptSpec(prompt_id=c.prompt_id, prompt=c.caption, group=c.image_id, base_seed=seed + i)
        for i, c in enumerate(captions)
    ]
    spec = build_spec(
        model=model,
        configs=configs or ["sd"],
        prompts=prompts,
        images_per_prompt=1,
        steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        dtype=dtype,
        batch_size=batch_size,
        extra={
            "kind": KIND,
            "seed": seed,
            "seeding": "caption i (in sampled order) uses seed + i in every config",
            **{k: v for k, v in record.items() if k != "captions"},
        },
    )
    out = Path(out)
    try:
        return run_generation(
            spec, out, shard=shard, device=device, progress=progress, model=loaded_model
        )
    finally:
        if RunDir(out).exists():
            _write_record(RunDir(out), record)


def _write_record(run: RunDir, record: dict[str, Any]) -> None:
    """quality/captions.json: the seed, the source's hash and every drawn caption id."""
    path = run.path / "quality" / "captions.json"
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def score_quality(
    run: str | Path,
    reference: str | Path,
    *,
    inception_weights: str | Path | None = None,
    clip_model: str = "openai/clip-vit-large-patch14",
    device: str = "cpu",
    batch_size: int = 32,
    reference_preprocess: str = "center-crop",
    n_boot: int = 10_000,
    boot_seed: int = 0,
    feature_extractor: Any = None,
    clip_bundle: Any = None,
) -> pd.DataFrame:
    """FID and CLIP distance per config; writes results/quality.csv and results/quality.json.

    Weights are checked before anything is computed. `feature_extractor` and `clip_bundle`
    replace Inception and CLIP (tests, notebooks).
    """
    from analysis.quality import fid
    from analysis.quality.clip_distance import check_clip_weights

    check_int("--batch-size", batch_size, 1, MAX_SCORE_BATCH)
    check_int("n_boot", n_boot, 1, 10**7)
    rundir = RunDir(run)
    manifest = rundir.read_manifest()
    spec = manifest.get("spec", {})
    if spec.get("extra", {}).get("kind") != KIND:
        raise AuditError(f"{run} is not a quality run (make one with `t2i-audit quality generate`)")
    if reference_preprocess not in ("center-crop", "none"):
        raise AuditError(
            f"--reference-preprocess {reference_preprocess!r}: use center-crop or none"
        )
    weights = (
        None if feature_extractor is not None else fid.resolve_inception_weights(inception_weights)
    )
    if clip_bundle is None:
        check_clip_weights(clip_model)
    reference = Path(reference)
    ref_files = fid.list_images(reference)
    size = (int(spec["width"]), int(spec["height"]))
    conv = fid.conventions(reference_preprocess, size)  # type: ignore[arg-type]
    weights_id = (
        {"sha256": _sha256(weights), "path": str(weights)}
        if weights is not None
        else {"custom": type(feature_extractor).__name__}
    )
    ref_info = {
        "folder": str(reference),
        "n_images": len(ref_files),
        "listing_sha256": fid.listing_sha256(reference, ref_files),
    }
    items = rundir.items()
    state: dict[str, Any] = {}

    def metric() -> Any:  # reference features: computed once, only if some config needs FID
        if "fid" not in state:
            state["fid"] = fid.build_fid(weights, feature_extractor, device)
            resize = size if reference_preprocess == "center-crop" else None
            fid.add_images(
                state["fid"], fid.image_batches(ref_files, batch_size, resize), real=True
            )
        return state["fid"]

    def clip() -> Any:
        if "clip" not in state:
            from analysis.quality.clip_distance import load_clip_for_quality

            state["clip"] = clip_bundle or load_clip_for_quality(clip_model, device)
        return state["clip"]

    rows, details = [], {}
    for config in [c["name"] for c in spec["configs"]]:
        mine = items[items["config"] == config]
        done = mine[mine["status"] == "done"].sort_values("prompt_id")
        key = {
            "items": hashlib.sha256("".join(done["item_id"]).encode()).hexdigest(),
            "reference": ref_info["listing_sha256"],
            "fid_weights": weights_id.get("sha256") or weights_id.get("custom"),
            "clip_model": clip_model if clip_bundle is None else "injected",
            "conventions": conv,
            "n_boot": n_boot,
            "boot_seed": boot_seed,
        }
        cached = _cached(rundir, config, key)
        if cached is None:
            cached = _score_config(rundir, done, metric, clip, batch_size, n_boot, boot_seed)
            cached["key"] = key
            atomic_write_text(_score_path(rundir, config), json.dumps(cached, indent=1) + "\n")
        details[config] = cached
        rows.append(
            {
                "config": config,
                "n": len(done),
                "n_requested": len(mine),
                **{k: cached[k] for k in ("fid", "clip_distance", "ci_low", "ci_high")},
                "clip_model": cached.get("clip_provenance", {}).get("id", clip_model),
                "fid_weights": weights_id.get("sha256", "custom feature extractor"),
                "fid_resize": conv["fid_resize"],
                "fid_feature_layer": conv["fid_feature_layer"],
                "fid_reference_preprocess": conv["fid_reference_preprocess"],
                "n_reference": len(ref_files),
            }
        )
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    _write_results(rundir, table, manifest, ref_info, conv, weights_id, details, n_boot, boot_seed)
    return table


def _score_config(
    rundir: RunDir,
    done: pd.DataFrame,
    metric: Any,
    clip: Any,
    batch_size: int,
    n_boot: int,
    boot_seed: int,
) -> dict[str, Any]:
    from analysis.quality.clip_distance import clip_distances, mean_interval
    from analysis.quality.fid import fid_of

    paths = [rundir.path / p for p in done["image_path"]]
    nan = float("nan")
    if len(paths) < 2:
        return {"fid": nan, "clip_distance": nan, "ci_low": nan, "ci_high": nan}
    bundle = clip()
    dist = clip_distances(bundle, paths, done["prompt"].tolist(), batch_size)
    config = str(done["config"].iloc[0])
    atomic_write_parquet(
        pd.DataFrame(
            {
                "item_id": done["item_id"].to_numpy(),
                "prompt_id": done["prompt_id"].to_numpy(),
                "clip_distance": dist,
            }
        ),
        rundir.path / "quality" / "clip_distance" / f"{config}.parquet",
    )
    low, high = mean_interval(dist, n_boot, boot_seed)
    return {
        "fid": fid_of(metric(), paths, batch_size),
        "clip_distance": float(dist.mean()),
        "ci_low": low,
        "ci_high": high,
        "clip_provenance": dict(getattr(bundle, "provenance", {})),
    }


def _score_path(rundir: RunDir, config: str) -> Path:
    return rundir.path / "quality" / "scores" / f"{config}.json"


def _cached(rundir: RunDir, config: str, key: dict[str, Any]) -> dict[str, Any] | None:
    path = _score_path(rundir, config)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if data.get("key") == json.loads(json.dumps(key)) else None


def _sha256(path: Path) -> str:
    from analysis.store.hashing import sha256_file

    return sha256_file(Path(path))


def _write_results(
    rundir: RunDir,
    table: pd.DataFrame,
    manifest: dict[str, Any],
    ref_info: dict[str, Any],
    conv: dict[str, str],
    weights_id: dict[str, Any],
    details: dict[str, Any],
    n_boot: int,
    boot_seed: int,
) -> None:
    """results/quality.csv and quality.json (the table plus everything that produced it)."""
    results = rundir.results_dir
    write_csv(table, results / "quality.csv")
    spec = manifest["spec"]
    echo = {
        "run": str(rundir.path),
        "generation": {k: v for k, v in spec.items() if k != "prompts"},
        "n_captions": len(spec["prompts"]),
        "captions_record": "quality/captions.json",
        "reference": ref_info,
        "conventions": conv,
        "fid_weights": weights_id,
        "clip_distance": {
            "definition": "1 - cosine(CLIP image embedding, CLIP caption embedding), mean over "
            "captions (one image each)",
            "interval": f"95% percentile bootstrap over captions, {n_boot} resamples, seed "
            f"{boot_seed} (analysis.stats.bootstrap.cluster_ratio_interval)",
        },
        "per_config": {
            c: {k: v for k, v in d.items() if k != "key"} | {"inputs": d.get("key")}
            for c, d in details.items()
        },
        "results": table.to_dict(orient="records"),
        "versions": package_versions(VERSION_PACKAGES),
        "environment": environment_info(),
    }
    text = json.dumps(_no_nan(echo), indent=2, default=str, allow_nan=False) + "\n"
    atomic_write_text(results / "quality.json", text)


def _no_nan(obj: Any) -> Any:
    """NaN (too few images) as null, so the JSON is strict."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    return obj
