"""What an audit file asks for, per model and part, and how much of it is already on disk.

The generation specs are built exactly as the probe and I2P commands build them, so the item ids
planned here are the ones the run will skip or generate. Nothing here writes to disk.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.audit.spec import AuditSpec, ModelEntry
from analysis.errors import AuditError

#: the folder of each part under <out>/<model name>/
FOLDERS = {"probe": "ethnic-bias", "i2p": "i2p", "knn": "ethnic-bias"}
#: images one run (model x part) may plan: 2 million is ~3 GPU-weeks at 1 image/s, far past any
#: audit (the paper's I2P run is 4,703 prompts x 10 images x 5 configs = 235,150), and listing
#: that plan costs ~6 minutes and ~1.6 GB (170 us and 800 bytes an item, measured)
MAX_ITEMS_PER_RUN = 2_000_000


@dataclass
class PartPlan:
    """One model x part: planned images, those done, and what is left per config."""

    model: str
    part: str
    folder: Path
    planned: int = 0
    done: int = 0
    left_by_config: dict[str, int] = field(default_factory=dict)
    note: str | None = None

    @property
    def left(self) -> int:
        return sum(self.left_by_config.values())


def part_folder(out: Path, entry: ModelEntry, part: str) -> Path:
    return Path(out) / entry.name / FOLDERS[part]


def probe_spec(audit: AuditSpec, entry: ModelEntry) -> Any:
    """The probe's GenerationSpec, as `analysis.probes.ethnic_bias.run_probe` builds it."""
    from analysis.generation.runner import build_spec
    from analysis.probes.ethnic_bias import PROBE, probe_prompts

    probe, s = audit.probe, audit.sampler
    assert probe is not None
    return build_spec(
        model=entry.model,
        **entry.weights(),
        configs=audit.configs_for(entry),
        prompts=probe_prompts(probe.countries, probe.template, s.seed),
        images_per_prompt=probe.images_per_country,
        steps=s.steps,
        guidance_scale=s.guidance_scale,
        height=s.height,
        width=s.width,
        dtype=entry.dtype,
        batch_size=s.batch_size,
        compile=s.compile,
        extra={"probe": PROBE, "template": probe.template, "seed": s.seed},
    )


def i2p_spec(audit: AuditSpec, entry: ModelEntry) -> Any:
    """The I2P run's GenerationSpec, as `t2i-audit i2p run` builds it."""
    from analysis.i2p.benchmark import build_i2p_spec
    from analysis.i2p.loader import load_i2p

    i2p, s = audit.i2p, audit.sampler
    assert i2p is not None
    return build_i2p_spec(
        load_i2p(i2p.data),
        model=entry.model,
        configs=audit.configs_for(entry),
        images_per_prompt=i2p.images_per_prompt,
        steps=s.steps,
        guidance_scale=s.guidance_scale,
        dataset_guidance=i2p.dataset_guidance,
        height=s.height,
        width=s.width,
        dtype=entry.dtype,
        **entry.weights(),
        categories=i2p.categories or None,
        hard_only=i2p.hard_only,
        limit=i2p.limit,
        batch_size=s.batch_size,
        compile_unet=s.compile,
    )


def planned_items(spec: Any) -> int:
    """Images a GenerationSpec plans, counted (configs x prompts x images), never listed."""
    return len(spec.configs) * len(spec.prompts) * spec.images_per_prompt


def check_size(audit: AuditSpec, entry: ModelEntry, part: str, spec: Any) -> int:
    """The run's image count, or an AuditError above MAX_ITEMS_PER_RUN naming file and count.

    Checked before a run is listed item by item (which costs ~1 KB and a hash per image), so a
    typo such as images_per_prompt = 100000 is refused at once by --dry-run and the real run.
    """
    count = planned_items(spec)
    if count > MAX_ITEMS_PER_RUN:
        raise AuditError(
            f"{audit.path}: {entry.name}/{part} plans {count:,} images "
            f"({len(spec.configs)} configs x {len(spec.prompts):,} prompts x "
            f"{spec.images_per_prompt:,} images), over the limit of {MAX_ITEMS_PER_RUN:,} per run"
        )
    return count


def plan_part(audit: AuditSpec, entry: ModelEntry, part: str, out: Path) -> PartPlan:
    """Planned and done images of one part; a problem (missing unet file, a folder holding
    another run) becomes the plan's note instead of an exception; a run over the size limit is
    an exception. A folder without a run is counted, not listed, so a dry run takes seconds."""
    from analysis.generation.runner import open_run
    from analysis.store import RunDir

    folder = part_folder(out, entry, part)
    plan = PartPlan(entry.name, part, folder)
    if part == "knn":
        assert audit.knn is not None
        plan.note = f"dataset side: {audit.knn.k} nearest images per country (no generation)"
        return plan
    try:
        spec = probe_spec(audit, entry) if part == "probe" else i2p_spec(audit, entry)
    except AuditError as exc:
        plan.note = str(exc)
        return plan
    count = check_size(audit, entry, part, spec)
    try:
        if not RunDir(folder).exists():
            # the new-folder checks (a file, a non-empty or damaged folder) on one item
            one = spec.model_copy(update={"configs": spec.configs[:1], "prompts": spec.prompts[:1]})
            open_run(one.model_copy(update={"images_per_prompt": 1}), folder)
            plan.planned = count
            per_config = len(spec.prompts) * spec.images_per_prompt
            plan.left_by_config = {str(c.name): per_config for c in spec.configs}
            return plan
        run, items, _ = open_run(spec, folder)
    except AuditError as exc:
        plan.note = str(exc)
        return plan
    finished = items["status"].eq("done")
    on_disk = items["image_path"][finished].map(lambda p: (run.path / p).is_file())
    done = (finished & on_disk.reindex(items.index, fill_value=False)) | items["status"].eq("error")
    plan.planned, plan.done = len(items), int(done.sum())
    plan.left_by_config = {str(k): int(v) for k, v in items[~done]["config"].value_counts().items()}
    return plan


def plan_audit(audit: AuditSpec, out: Path) -> list[PartPlan]:
    """Every model x enabled part, in run order."""
    return [plan_part(audit, e, part, out) for e in audit.models for part in audit.parts()]


def batch_seconds(audit: AuditSpec, entry: ModelEntry) -> dict[str, float]:
    """Seconds per batch of B at the audit's steps, per guidance kind (sd, negative and sld differ
    in cost): one batch timed at 1 and 2 steps after a warm-up call, extrapolated linearly.

    Loads the model on the audit's device (instant for `tiny`, longer for a real model).
    """
    from analysis.generation.models import load_model
    from analysis.generation.sampler import SamplingParams, sample
    from analysis.guidance import resolve_config

    s = audit.sampler
    weights = {k: v for k, v in entry.weights().items() if v is not None}
    model = load_model(entry.model, **weights, device=s.device, dtype=entry.dtype)
    prompts, seeds = ["a photo"] * s.batch_size, list(range(s.batch_size))

    from analysis.generation.families import default_size_for

    size = default_size_for(entry.model)  # as the run will pick it (toy, SD3, FLUX: their own)
    height, width = s.height or size, s.width or size

    def timed(config: Any, steps: int) -> float:
        params = SamplingParams(
            steps=steps,
            guidance_scale=s.guidance_scale,
            height=height,
            width=width,
            batch_size=s.batch_size,
        )
        started = time.perf_counter()
        sample(model, prompts, seeds, config, params)
        return time.perf_counter() - started

    configs = [resolve_config(v) for v in audit.configs]
    timed(configs[0], 1)  # warm-up: first-call allocation and kernel selection
    per_kind: dict[str, float] = {}
    for config in configs:
        if config.kind not in per_kind:
            one, two = timed(config, 1), timed(config, 2)
            step = max(two - one, 0.0)
            per_kind[config.kind] = max(one - step, 0.0) + step * s.steps
    return per_kind


def estimate_seconds(audit: AuditSpec, plan: PartPlan, per_kind: dict[str, float]) -> float:
    """Generation seconds left for one part, from `batch_seconds` (classification not included)."""
    from analysis.guidance import resolve_config

    kinds = {c.name: c.kind for c in (resolve_config(v) for v in audit.configs)}
    return sum(
        math.ceil(left / audit.sampler.batch_size) * per_kind.get(kinds.get(name, "sd"), 0.0)
        for name, left in plan.left_by_config.items()
    )
