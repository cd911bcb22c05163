"""`i2p run`: generate I2P prompts under several configs, classify with Q16 + NudeNet, tabulate.

Seeds follow the dataset: image k of a prompt uses sd_seed + k, identical for every config, so SD vs
a mitigation is paired on the same starting noise. The I2P authors evaluated at guidance 7.5 for
every prompt (not the per-prompt sd_guidance_scale scraped from lexica.art), so 7.5 is the default
and --dataset-guidance offers the per-prompt value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.errors import AuditError
from analysis.i2p.loader import CATEGORIES, I2PDataset, category_masks

PAPER_GUIDANCE = 7.5


def select_prompts(
    frame: pd.DataFrame,
    *,
    categories: list[str] | None = None,
    hard_only: bool = False,
    limit: int | None = None,
    skip_empty: bool = True,
) -> pd.DataFrame:
    """Prompts in file order that list any of `categories`, optionally hard ones, first `limit`.

    Empty prompts (text lost in some copies) are skipped: generating from "" would measure the
    unconditional model, not the prompt.
    """
    keep = pd.Series(True, index=frame.index)
    if categories:
        wanted = [c.strip().lower() for c in categories]
        unknown = [c for c in wanted if c not in CATEGORIES]
        if unknown:
            raise AuditError(
                f"unknown I2P category {unknown[0]!r}; choose from {', '.join(CATEGORIES)}"
            )
        masks = category_masks(frame["categories"])
        any_of = pd.Series(False, index=frame.index)
        for name in wanted:
            any_of |= masks[name]
        keep &= any_of
    if hard_only:
        keep &= frame["hard"].astype(bool)
    if skip_empty:
        keep &= frame["prompt"].str.strip() != ""
    if limit is not None and limit < 1:
        raise AuditError(f"--limit must be at least 1, got {limit}")
    selected = frame[keep]
    if limit is not None:
        selected = selected.head(limit)
    if selected.empty:
        raise AuditError("no I2P prompt matches the chosen --category/--hard-only filters")
    return selected


def prompt_specs(selected: pd.DataFrame, dataset_guidance: bool) -> list[Any]:
    """One PromptSpec per prompt: prompt_id = case_number or row index, group = categories."""
    from analysis.generation.runner import PromptSpec

    return [
        PromptSpec(
            prompt_id=str(row.prompt_id),
            prompt=str(row.prompt),
            group=str(row.categories),
            base_seed=int(row.sd_seed),
            guidance_scale=float(row.sd_guidance_scale) if dataset_guidance else None,
        )
        for row in selected.itertuples(index=False)
    ]


def build_i2p_spec(
    dataset: I2PDataset,
    *,
    model: str,
    configs: list[str],
    images_per_prompt: int = 10,
    steps: int = 50,
    guidance_scale: float = PAPER_GUIDANCE,
    dataset_guidance: bool = False,
    height: int | None = None,
    width: int | None = None,
    dtype: str = "float32",
    unet: str | None = None,
    text_encoder: str | None = None,
    lora: str | None = None,
    lora_scale: float | None = None,
    scheduler: str | None = None,
    categories: list[str] | None = None,
    hard_only: bool = False,
    limit: int | None = None,
    batch_size: int = 4,
    compile_unet: bool = False,
) -> Any:
    """The GenerationSpec of an I2P run (the selection and data provenance go into `extra`)."""
    from analysis.generation.runner import build_spec

    selected = select_prompts(
        dataset.frame, categories=categories, hard_only=hard_only, limit=limit
    )
    extra = {
        "benchmark": "i2p",
        # no local path: the spec hash must survive moving the checkout or the HF cache
        "i2p_data": {k: v for k, v in dataset.provenance().items() if k != "path"},
        "i2p_selection": {
            "categories": sorted(c.strip().lower() for c in categories) if categories else None,
            "hard_only": hard_only,
            "limit": limit,
            "n_prompts": len(selected),
        },
        "guidance": "dataset per-prompt sd_guidance_scale" if dataset_guidance else "fixed",
    }
    return build_spec(
        model=model,
        unet=unet,
        text_encoder=text_encoder,
        lora=lora,
        lora_scale=lora_scale,
        configs=configs,
        prompts=prompt_specs(selected, dataset_guidance),
        images_per_prompt=images_per_prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        dtype=dtype,
        scheduler=scheduler,
        batch_size=batch_size,
        compile=compile_unet,
        extra=extra,
    )


def run_benchmark(
    spec: Any,
    out: Path,
    *,
    shard: Any = None,
    batch_size: int | None = None,
    device: str = "cpu",
    clip_model: str | None = None,
    nudenet_rule: str = "i2p-authors",
    threshold: float | None = None,
    progress: bool = True,
    model: Any = None,
    n_draws: int = 10_000,
    protocol: str = "i2p-authors",
) -> dict[str, Any]:
    """Generate, classify (Q16 + NudeNet) and, once every image has a verdict, write Table 1
    (and, with several configs, i2p_paired.csv: each config vs SD on the shared seeds).

    The rule, threshold and protocol are checked before anything is generated, so a typo costs
    no GPU time. Every stage resumes from what is on disk. With shards, each shard generates and
    classifies its share; the tables are written by whichever shard finds the whole run generated
    and classified (or later by `t2i-audit i2p table --run RUN`).
    """
    from analysis.classifiers import classify_run
    from analysis.classifiers.rules import check_threshold, get_rule
    from analysis.generation.runner import run_generation
    from analysis.i2p.paired import run_paired, write_paired
    from analysis.i2p.table import check_protocol, run_table, run_verdicts, write_table
    from analysis.store import RunDir
    from analysis.store.csvsafe import write_csv

    rule = get_rule(nudenet_rule)
    check_threshold(rule.threshold if threshold is None else threshold, rule)
    check_protocol(protocol)
    from analysis.classifiers.clip import check_clip_available

    check_clip_available(clip_model)
    out = Path(out)
    summary: dict[str, Any] = {}
    gen = run_generation(
        spec,
        out,
        shard=shard,
        batch_size=batch_size,
        device=device,
        progress=progress,
        model=model,
    )
    summary["generation"] = gen
    summary["classification"] = classify_run(
        out,
        classifiers=("q16", "nudenet"),
        shard=shard,
        progress=progress,
        clip_model=clip_model,
    )
    rundir = RunDir(out)
    items = rundir.items()
    if not bool((items["status"] != "pending").all()):
        summary["table"] = summary["paired"] = None
        summary["note"] = (
            "other shards have images left to generate; when all are done run "
            f"`t2i-audit i2p table --run {out}`"
        )
        return summary
    verdicts = run_verdicts(out, nudenet_rule, threshold)
    opts = {"verdicts": verdicts, "n_draws": n_draws, "protocol": protocol}
    table = run_table(out, nudenet_rule, threshold, **opts)
    paths = write_table(table, rundir.results_dir)
    paired = run_paired(out, nudenet_rule, threshold, verdicts=verdicts)
    if paired is not None:
        paths.append(write_paired(paired, rundir.results_dir))
    from analysis.i2p.attack import attack_success

    attack = attack_success(verdicts)
    attack_path = rundir.results_dir / "attack_success.csv"
    write_csv(attack, attack_path)
    paths.append(attack_path)
    summary["attack"] = attack
    summary["table"] = table
    summary["paired"] = paired
    summary["table_files"] = [str(p) for p in paths]
    missing = int(table.loc[table["category"] == "all", "n_missing_images"].sum())
    if missing:
        summary["note"] = (
            f"{missing} images have no verdict yet (other shards still classifying, or "
            f"unreadable images); re-run `t2i-audit i2p table --run {out}` when all are done"
        )
    return summary
