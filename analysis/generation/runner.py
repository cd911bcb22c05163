"""Turn a generation spec into images + manifest in a run directory, resumably and shardably.

The spec fixes *what* is generated (model, UNet sha256, configs, prompts, seeds, sampler settings
and the batch size B, the fixed shape of every model call, which moves the last bits); device and
shard only decide *where*. Every image has a stable item_id hashed from what determines its
pixels, so a resumed run, another shard, a rerun or a run extended with more prompts, configs or
images skips work already done and leaves finished images untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analysis.errors import AuditError, Interrupted, one_line
from analysis.generation.devices import check_device
from analysis.store import (
    ITEM_COLUMNS,
    PartWriter,
    RunDir,
    Shard,
    atomic_save_png,
    atomic_write_parquet,
    atomic_write_text,
)
from analysis.store.names import check_safe_name
from analysis.store.ownership import (
    LOCKS,
    busy_shards,
    check_output,
    hold_claim,
    hold_shard,
)
from analysis.store.progress import Progress
from analysis.store.provenance import environment_info

DTYPES = ("float32", "float16", "bfloat16")
#: torch.Generator.manual_seed takes seeds up to 2**64 - 1; image k uses base_seed + k.
MAX_SEED = 2**64 - 1
#: Classifier-free guidance scales above this are refused as typos (the paper uses 7.5).
MAX_GUIDANCE = 100.0


class PromptSpec(BaseModel):
    """One prompt of a run. Image k of it is generated with seed base_seed + k."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt_id: str
    prompt: str = Field(min_length=1)
    group: str = ""
    base_seed: int = Field(0, ge=0, le=MAX_SEED)
    # per-prompt override (I2P's dataset guidance)
    guidance_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE)

    @field_validator("prompt_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_safe_name(value, "prompt_id")


class GenerationSpec(BaseModel):
    """Everything that determines the images of a run (echoed in manifest.json).

    Unknown keys are refused (a typo such as `guidance_scal` must not silently run at 7.5), and
    UNet weights are identified by their sha256, not their path: retrained weights at the same
    path are a different run.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1)
    unet: str | None = None
    unet_sha256: str | None = None
    #: a released text encoder (AdvUnlearn) and a LoRA fused at lora_scale (MACE, SPM); in the
    #: spec and item ids only when set, so the ids of runs made before them are unchanged
    text_encoder: str | None = None
    text_encoder_sha256: str | None = None
    lora: str | None = None
    lora_sha256: str | None = None
    lora_scale: float = 1.0
    revision: str | None = None
    configs: list[Any] = Field(min_length=1)
    prompts: list[PromptSpec] = Field(min_length=1)
    images_per_prompt: int = Field(1, ge=1, le=100_000)
    steps: int = Field(50, le=10_000)
    guidance_scale: float = Field(7.5, ge=0, le=MAX_GUIDANCE)
    #: None: the model family's training size (512 SD 1.x, 768 SD 2 v, 1024 SDXL), fixed here
    height: int | None = None
    width: int | None = None
    dtype: str = "float32"
    scheduler: str | None = None
    #: the fixed shape of every model call; part of an image's identity (it moves the last bits)
    batch_size: int = Field(4, ge=1, le=1024)
    #: torch.compile'd UNet (checked against eager first); fused kernels move the last bits too
    compile: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("configs", mode="before")
    @classmethod
    def _resolve_configs(cls, value: list[Any]) -> list[Any]:
        from analysis.guidance import resolve_config

        return [resolve_config(c) for c in value]

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        from analysis.generation.schedulers import check_scheduler

        return check_scheduler(value)

    @model_validator(mode="after")
    def _family_size(self) -> GenerationSpec:
        """An unset size becomes the family's default, so the spec always names real pixels."""
        if self.height is None or self.width is None:
            from analysis.generation.families import default_size_for

            side = default_size_for(self.model, self.revision)
            self.height = side if self.height is None else self.height
            self.width = side if self.width is None else self.width
        return self

    @model_validator(mode="after")
    def _check(self) -> GenerationSpec:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        for name in ("height", "width"):
            size = getattr(self, name)
            if size < 8 or size % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        ids = [p.prompt_id for p in self.prompts]
        dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
        if dup:
            raise ValueError(f"prompt_id values must be unique; repeated: {', '.join(dup[:5])}")
        names = [c.name for c in self.configs]
        if len(set(names)) < len(names):
            raise ValueError(f"config names must be unique, got {names}")
        if self.lora is None and self.lora_scale != 1.0:
            raise ValueError("lora_scale is set but no lora file is given (--lora)")
        if self.lora is not None and self.lora_scale == 0:
            raise ValueError("lora_scale 0 would leave the model as is; give a non-zero scale")
        top = max(p.base_seed for p in self.prompts) + self.images_per_prompt - 1
        if top > MAX_SEED:
            raise ValueError(f"seeds run up to {top}, above the largest seed 2**64-1 = {MAX_SEED}")
        return self

    def warnings(self) -> list[str]:
        """Settings that run but do not do what their name says; recorded in the manifest."""
        out = []
        scales = {self.guidance_scale} | {p.guidance_scale for p in self.prompts} - {None}
        for c in self.configs:
            if c.kind == "sd":
                continue
            if all(g <= 1.0 for g in scales):
                out.append(
                    f"config {c.name}: guidance scale <= 1 disables classifier-free guidance, "
                    "so its safety concept is never used: images equal plain SD"
                )
            elif c.kind == "sld" and not c.sld.enabled:
                out.append(
                    f"config {c.name}: s_s = {c.sld.sld_guidance_scale} < 1 switches SLD off "
                    "(as in the authors' code): images equal plain SD"
                )
            elif (
                c.sega is not None
                and c.sega.edit_cooldown_steps is not None
                and c.sega.edit_cooldown_steps <= c.sega.edit_warmup_steps
            ):
                out.append(
                    f"config {c.name}: SEGA cools down at step {c.sega.edit_cooldown_steps}, "
                    f"before or as its warm-up of {c.sega.edit_warmup_steps} ends: semantic "
                    "guidance acts only through the momentum built before it cooled down"
                )
            elif c.uses_concept_branch and c.warmup_steps >= self.steps:
                out.append(
                    f"config {c.name}: warm-up {c.warmup_steps} >= {self.steps} steps, so "
                    "safety guidance is never applied: images equal plain SD"
                )
        return out

    def canonical(self) -> dict[str, Any]:
        """JSON-ready dump (configs with their full parameters). `compile`, `text_encoder` and
        `lora` appear only when set, so specs (and hashes) of runs made before them are
        unchanged."""
        unset = set() if self.compile else {"compile"}
        if self.text_encoder is None:
            unset |= {"text_encoder", "text_encoder_sha256"}
        if self.lora is None:
            unset |= {"lora", "lora_sha256", "lora_scale"}
        return json.loads(self.model_dump_json(exclude=unset or None))

    def spec_hash(self) -> str:
        return hashlib.sha256(_canonical_json(self.canonical()).encode()).hexdigest()


def build_spec(**kwargs: Any) -> GenerationSpec:
    """GenerationSpec from keyword arguments, with validation errors turned into AuditError.

    `unet`, `text_encoder` and `lora` files are hashed here, so the spec (and every item id)
    names the weights, not a path.
    """
    from pydantic import ValidationError

    from analysis.store.hashing import weights_sha256

    for part in WEIGHT_OPTIONS:
        if kwargs.get(part) and f"{part}_sha256" not in kwargs:
            kwargs[f"{part}_sha256"] = weights_sha256(Path(kwargs[part]), _flag(part))
    if kwargs.get("lora_scale") is None:
        kwargs.pop("lora_scale", None)
    try:
        return GenerationSpec(**kwargs)
    except ValidationError as exc:
        raise AuditError(f"invalid generation settings: {one_line(exc)}") from exc


#: the weight files a spec loads over its model, each hashed into the spec
WEIGHT_OPTIONS = ("unet", "text_encoder", "lora")


def _flag(part: str) -> str:
    return "--" + part.replace("_", "-")


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_id_for(prompt: str) -> str:
    """A stable, folder-safe id for a free-text prompt."""
    return "p" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:10]


def item_id(spec: GenerationSpec, config: Any, prompt: PromptSpec, image_index: int) -> str:
    """Hash of everything that determines one image's pixels."""
    guidance = prompt.guidance_scale if prompt.guidance_scale is not None else spec.guidance_scale
    key = {
        "model": spec.model,
        "unet": spec.unet_sha256 or spec.unet,
        "revision": spec.revision,
        "scheduler": spec.scheduler,
        "config": json.loads(config.model_dump_json()),
        "prompt": prompt.prompt,
        "seed": prompt.base_seed + image_index,
        "image_index": image_index,
        "steps": spec.steps,
        "guidance_scale": guidance,
        "height": spec.height,
        "width": spec.width,
        "dtype": spec.dtype,
        "engine": "fixed-shape",
        "batch_size": spec.batch_size,
    }
    if spec.compile:  # only when set, so the ids of eager runs stay what they were
        key["compile"] = True
    if spec.text_encoder is not None:  # likewise: ids without these files are unchanged
        key["text_encoder"] = spec.text_encoder_sha256 or spec.text_encoder
    if spec.lora is not None:
        key["lora"] = spec.lora_sha256 or spec.lora
        key["lora_scale"] = spec.lora_scale
    return hashlib.sha256(_canonical_json(key).encode()).hexdigest()[:20]


def plan_items(spec: GenerationSpec) -> pd.DataFrame:
    """All images of the spec in a fixed order: config, then prompt, then image index."""
    rows = []
    for config in spec.configs:
        for prompt in spec.prompts:
            guidance = (
                prompt.guidance_scale if prompt.guidance_scale is not None else spec.guidance_scale
            )
            for k in range(spec.images_per_prompt):
                rows.append(
                    {
                        "item_id": item_id(spec, config, prompt, k),
                        "prompt_id": prompt.prompt_id,
                        "prompt": prompt.prompt,
                        "group": prompt.group,
                        "config": config.name,
                        "seed": prompt.base_seed + k,
                        "image_index": k,
                        "guidance_scale": float(guidance),
                        "status": "pending",
                        "image_path": f"images/{config.name}/{prompt.prompt_id}/{k}.png",
                        "error": None,
                    }
                )
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


def _spec_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for key in keys:
        if old.get(key) != new.get(key):
            if key == "prompts":
                diffs.append(f"prompts ({len(old.get(key) or [])} -> {len(new.get(key) or [])})")
            else:
                diffs.append(f"{key} ({_short(old.get(key))} -> {_short(new.get(key))})")
    return diffs


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def open_run(spec: GenerationSpec, out: Path) -> tuple[RunDir, pd.DataFrame, bool]:
    """(run, items, exists): re-open a run of this spec, or plan a new one without writing.

    Nothing is written here, so a start that fails later (bad weights, a full disk) does not
    claim the folder; `claim_run` writes the plan once the model has loaded.
    """
    run = RunDir(out)
    if run.exists():
        manifest = run.read_manifest()
        old = manifest.get("spec", {})
        if "unet_batching" in old:
            raise AuditError(
                f"{out} was made by an older t2i-audit engine (per-image/batched UNet calls); its "
                "images cannot be extended bit-identically by the fixed-shape engine. Its files "
                "stay readable for classify, results and reports; generate into a new --out."
            )
        if manifest.get("spec_hash") != spec.spec_hash():
            if not _extends(old, spec.canonical()):
                diffs = _spec_differences(old, spec.canonical())
                raise AuditError(
                    f"{out} already holds a run with different settings "
                    f"(differs in: {', '.join(diffs) or 'spec'}). A run can only be extended (more "
                    "prompts, configs or images per prompt, everything else equal); to resume it, "
                    "re-run its original command (see its manifest.json); or choose another --out."
                )
            return run, _extended_plan(spec, run), False
        return run, run.items(), True
    if out.exists() and not out.is_dir():
        raise AuditError(f"--out {out} is a file, not a folder")
    if run.looks_like_run():
        run.read_manifest()  # raises: a run whose manifest is missing is not re-initialised
    if out.exists() and any(p.name != LOCKS for p in out.iterdir()):
        raise AuditError(
            f"{out} exists and is not empty but holds no t2i-audit run; choose another --out"
        )
    return run, plan_items(spec), False


#: what an extension may change; everything else must be equal for old images to stay valid
EXTENDABLE = {"prompts", "configs", "images_per_prompt", "extra"}


def _extends(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when `new` only adds prompts, configs or images per prompt to `old`."""
    keys = (set(old) | set(new)) - EXTENDABLE
    if any(old.get(k) != new.get(k) for k in keys):
        return False
    new_prompts = {p["prompt_id"]: p for p in new.get("prompts", [])}
    new_configs = {c["name"]: c for c in new.get("configs", [])}
    return (
        all(new_prompts.get(p["prompt_id"]) == p for p in old.get("prompts", []))
        and all(new_configs.get(c["name"]) == c for c in old.get("configs", []))
        and new.get("images_per_prompt", 1) >= old.get("images_per_prompt", 1)
    )


def _extended_plan(spec: GenerationSpec, run: RunDir) -> pd.DataFrame:
    """The new spec's plan, carrying over every old item's status (same ids, same pixels)."""
    plan = plan_items(spec)
    old = run.items().set_index("item_id")
    known = plan["item_id"].isin(old.index)
    for col in ("status", "image_path", "error"):
        plan.loc[known, col] = plan.loc[known, "item_id"].map(old[col])
    return plan


def claim_run(spec: GenerationSpec, run: RunDir, plan: pd.DataFrame) -> None:
    """Write the plan, then the manifest: a folder with a manifest always has its plan.

    On an extension the previous spec is kept in the manifest's `extended_from` list.
    """
    previous = run.read_manifest() if run.exists() else None
    manifest = {
        "kind": "t2i-audit-run",
        "spec": spec.canonical(),
        "spec_hash": spec.spec_hash(),
        "n_items": len(plan),
        "safety_checker": "off",
        "warnings": spec.warnings(),
        **environment_info(),
    }
    if previous is not None:
        history = previous.get("extended_from", [])
        manifest["extended_from"] = [
            *history,
            {"spec_hash": previous["spec_hash"], "n_items": previous.get("n_items")},
        ]
        for key in ("model", "device"):
            if key in previous:
                manifest[key] = previous[key]
    atomic_write_parquet(plan, run.items_path)
    run.write_manifest(manifest)


def prepare_run(spec: GenerationSpec, out: Path) -> tuple[RunDir, pd.DataFrame]:
    """Create or re-open a run directory for this spec; refuse one that holds another spec."""
    run, items, exists = open_run(spec, Path(out))
    if not exists:
        claim_run(spec, run, items)
    return run, items


def _batches(todo: pd.DataFrame, batch_size: int) -> Iterator[pd.DataFrame]:
    """Batches of at most B items sharing (config, guidance), in plan order.

    With fixed-shape calls an image does not depend on what shares its batch, so batches are cut
    from what is left to do: a resume recomputes nothing that is finished.
    """
    for _, group in todo.groupby(["config", "guidance_scale"], sort=False):
        for start in range(0, len(group), batch_size):
            yield group.iloc[start : start + batch_size]


def run_generation(
    spec: GenerationSpec,
    out: str | Path,
    *,
    shard: Shard | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    model: Any = None,
    after_batch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """Generate every image of this shard that is not done yet. Returns a summary dict.

    `model` may be an already loaded model (notebooks, tests) to skip loading. PNG writing and
    `after_batch(rows)` (e.g. classifying the new images) run on a saver thread while the next
    batch samples; a batch's part rows are written only after its PNGs, so a crash loses at
    most the batches in flight, which a re-run regenerates bit-identically. The shard's write
    lock is held throughout (a second writer of the same shard is refused, naming this one).
    """
    with ExitStack() as locks:
        return _run_generation(
            spec, out, shard, batch_size, device, progress, model, after_batch, locks
        )


def _claim_locked(
    spec: GenerationSpec, out: Path, shard: Shard, locks: ExitStack
) -> tuple[RunDir, pd.DataFrame]:
    """Claim (or extend) the folder under its claim lock, re-checking what is there now: two
    starts on one new folder cannot both claim it, and a start whose settings differ from a run
    claimed meanwhile is refused. Then hold this shard's lock."""
    with hold_claim(out):
        run, items, exists = open_run(spec, out)
        if not exists:  # new, or an extension: nobody may be writing the old settings
            busy = busy_shards(out, spec.spec_hash())
            if busy:
                raise AuditError(
                    f"{out} is being written with other settings ({'; '.join(busy)}); "
                    "extend it once they finish, or choose another --out"
                )
            claim_run(spec, run, items)
        locks.enter_context(hold_shard(out, shard.name, spec.spec_hash()))  # re-entrant
    return run, items


def _run_generation(
    spec: GenerationSpec,
    out: str | Path,
    shard: Shard | None,
    batch_size: int | None,
    device: str,
    progress: bool,
    model: Any,
    after_batch: Callable[[list[dict[str, Any]]], None] | None,
    locks: ExitStack,
) -> dict[str, Any]:
    if batch_size is not None and batch_size != spec.batch_size:
        raise AuditError(
            f"the batch size is part of the spec (it is the shape of every model call): build "
            f"the spec with batch_size={batch_size} instead of {spec.batch_size}"
        )
    shard = shard or Shard()
    out = Path(out)
    # never inside another run's own files; a read-only or full disk fails now, not after loading
    check_output(out, folder=True, may_be_run=True)
    if model is None:
        device = check_device(device)  # an unusable device fails before anything is written
    if RunDir(out).exists():  # before reading or loading: a second writer of a shard stops here
        locks.enter_context(hold_shard(out, shard.name, spec.spec_hash()))
    run, items, exists = open_run(spec, out)
    mine = shard.take(items)
    on_disk = mine["image_path"].isin(_image_files(run))  # one directory walk, no stat per image
    # an error row (non-finite latents) is final: the same seed would fail the same way again
    done = (mine["status"].eq("done") & on_disk) | mine["status"].eq("error")
    batches = list(_batches(mine[~done], spec.batch_size))
    n_todo = int((~done).sum())
    summary: dict[str, Any] = {
        "run": str(out),
        "shard": shard.name,
        "planned": len(items),
        "in_shard": len(mine),
        "already_done": int(done.sum()),
        "generated": 0,
        "seconds": 0.0,
    }
    if not batches:
        if not exists:
            run, items = _claim_locked(spec, out, shard, locks)
        _finish(run, items, summary)
        return summary

    from analysis.generation.models import load_model

    loaded = model or load_model(
        spec.model,
        unet=spec.unet,
        text_encoder=spec.text_encoder,
        lora=spec.lora,
        lora_scale=spec.lora_scale,
        device=device,
        dtype=spec.dtype,
        revision=spec.revision,
        scheduler=spec.scheduler,
    )
    _check_unet_unchanged(spec, getattr(loaded, "provenance", {}))
    from analysis.guidance.safree import check_family

    check_family(getattr(loaded, "family", ""), [c.kind for c in spec.configs])
    from analysis.generation.flow import check_flow  # SD3/FLUX: configs and sizes, before writing

    check_flow(loaded, spec.configs, spec.height, spec.width, spec.guidance_scale, spec.compile)
    compiled = None
    if spec.compile and not hasattr(loaded.unet, "_orig_mod"):
        from analysis.generation.compiled import compile_unet
        from analysis.guidance import resolve_config

        first = batches[0]
        config = resolve_config({c.name: c for c in spec.configs}[first["config"].iloc[0]])
        compiled = compile_unet(
            loaded,
            spec,
            list(first["prompt"]),
            list(first["seed"]),
            config,
            guidance_scale=float(first["guidance_scale"].iloc[0]),
        )
    if not exists:
        run, items = _claim_locked(spec, out, shard, locks)
    runtime = {
        "shard": shard.name,
        "device": str(getattr(loaded, "device", device)),
        "model": getattr(loaded, "provenance", {}),
        **({"compile": compiled} if compiled else {}),
        **environment_info(),
    }
    atomic_write_text(
        run.parts_dir / "runtime" / f"{shard.name}.json", json.dumps(runtime, indent=2) + "\n"
    )
    manifest = run.read_manifest()
    if "model" not in manifest:
        manifest["model"] = runtime["model"]
        manifest["device"] = runtime["device"]
        if compiled:
            manifest["compile"] = compiled
        run.write_manifest(manifest)
    summary.update(_hardware_warning(manifest, runtime))

    writer = PartWriter(run, "generate", shard)
    started = time.perf_counter()

    def save(batch: pd.DataFrame, images: list[Any], per_image: float) -> list[dict[str, Any]]:
        """CPU side of a batch, on the saver thread: PNGs, then the part rows (the truth), then
        the caller's `after_batch` (e.g. classification), while the next batch samples."""
        rows = _save_batch(run, batch, images, per_image)
        writer.append(rows)
        if after_batch is not None:
            after_batch(rows)
        return rows

    try:
        with (
            Progress(progress, n_todo, f"generating {shard.name}") as advance,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="t2i-save") as saver,
        ):
            pending: list[Future] = []  # at most one batch waits to be saved: bounded memory

            def collect() -> None:
                """Wait for the batch being saved (a saver error stops the run here)."""
                while pending:
                    rows = pending.pop().result()
                    summary["generated"] += len(rows)
                    advance(len(rows))

            try:
                for batch in batches:
                    images, per_image = _sample_batch(loaded, spec, batch)
                    collect()
                    pending.append(saver.submit(save, batch, images, per_image))
            finally:  # also on Ctrl-C: the batch in the saver is kept and counted
                collect()
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
        if "out of memory" not in str(exc).lower():
            raise
        fits = _largest_fitting_batch(loaded, spec, batches[0])
        advice = (
            f"B = {fits} fits (one step checked): use --batch-size {fits}"
            if fits
            else "not even B = 1 fits: use a smaller image size, float16, or a larger device"
        )
        raise AuditError(
            f"a batch of {spec.batch_size} does not fit on {runtime['device']} "
            f"({runtime['model'].get('device_name', '')}); {summary['generated']} images were "
            f"kept. {advice}; B is part of the run, so give it a new --out"
        ) from None
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: {summary['already_done'] + summary['generated']} of "
            f"{summary['in_shard']} images of {shard.name} are kept in {out}; "
            "re-run the same command to resume"
        ) from None
    summary["seconds"] = round(time.perf_counter() - started, 3)
    _finish(run, run.items(), summary)
    return summary


def _hardware_warning(manifest: dict[str, Any], runtime: dict[str, Any]) -> dict[str, str]:
    """{"warning": ...} when this shard runs on other hardware or CPU numerics than the run's
    start (another GPU, MKL_CBWR, CPU kernel capability or BLAS): the last bits may differ."""
    from analysis.numerics import numerics_changes

    changes = numerics_changes(manifest.get("numerics"), runtime.get("numerics") or {})
    first = (manifest.get("model") or {}).get("device_name")
    now = runtime["model"].get("device_name")
    if first and now and first != now:
        changes.insert(0, f"device ({first} -> {now})")
    if not changes:
        return {}
    return {
        "warning": f"this run started under other hardware or numerics ({'; '.join(changes)}): "
        "the same B and dtype may differ in the last bits"
    }


def _sample_batch(
    loaded: Any, spec: GenerationSpec, batch: pd.DataFrame
) -> tuple[list[Any], float]:
    """Sample one fixed batch (the accelerator's part); returns its images and s/image."""
    from analysis.generation.sampler import SamplingParams, sample
    from analysis.guidance import resolve_config

    configs = {c.name: c for c in spec.configs}
    config = resolve_config(configs[batch["config"].iloc[0]])
    params = SamplingParams(
        steps=spec.steps,
        guidance_scale=float(batch["guidance_scale"].iloc[0]),
        height=spec.height,
        width=spec.width,
        batch_size=spec.batch_size,
    )
    t0 = time.perf_counter()
    images = sample(
        loaded, batch["prompt"].tolist(), [int(s) for s in batch["seed"]], config, params
    )
    return images, (time.perf_counter() - t0) / len(batch)


def _save_batch(
    run: RunDir, batch: pd.DataFrame, images: list[Any], per_image: float
) -> list[dict[str, Any]]:
    """Write a sampled batch's PNGs; returns the part rows (an image that failed is an error)."""
    from analysis.generation.sampler import NON_FINITE

    rows = []
    for (_, row), image in zip(batch.iterrows(), images, strict=True):
        if image is not None:
            atomic_save_png(image, run.path / row["image_path"])
        rows.append(
            {
                "item_id": row["item_id"],
                "status": "done" if image is not None else "error",
                "image_path": row["image_path"],
                "error": None if image is not None else NON_FINITE,
                "seconds": round(per_image, 4),
            }
        )
    return rows


def _check_unet_unchanged(spec: GenerationSpec, provenance: dict[str, Any]) -> None:
    """Each weight file loaded must be the one hashed into the spec (it may change in between)."""
    for part in WEIGHT_OPTIONS:
        loaded = (provenance.get(part) or {}).get("sha256")
        hashed = getattr(spec, f"{part}_sha256")
        if hashed and loaded and loaded != hashed:
            raise AuditError(
                f"{_flag(part)} {getattr(spec, part)} changed while starting (sha256 "
                f"{hashed[:12]} -> {loaded[:12]}); re-run once the file is final"
            )


def _largest_fitting_batch(loaded: Any, spec: GenerationSpec, batch: pd.DataFrame) -> int:
    """The largest B below the spec's (halving) whose one-step sample of `batch`'s first row
    runs without running out of memory; 0 when none does. Frees the allocator's cache first."""
    import torch

    from analysis.generation.sampler import SamplingParams, sample
    from analysis.guidance import resolve_config

    config = resolve_config({c.name: c for c in spec.configs}[batch["config"].iloc[0]])
    size = spec.batch_size // 2
    while size >= 1:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        params = SamplingParams(
            steps=1,
            guidance_scale=spec.guidance_scale,
            height=spec.height,
            width=spec.width,
            batch_size=size,
        )
        try:
            sample(loaded, [batch["prompt"].iloc[0]], [int(batch["seed"].iloc[0])], config, params)
            return size
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower():
                raise
        size //= 2
    return 0


def _image_files(run: RunDir) -> set[str]:
    """Every file under images/, as run-relative paths, from directory listings alone.

    A resume must notice a deleted image (it is regenerated, bit-identical), but a stat per
    image costs seconds at I2P scale; listing each folder once reads the same facts.
    """
    found: set[str] = set()
    root = run.images_dir
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, run.path)
        found.update(f"{rel}/{name}".replace(os.sep, "/") for name in files)
    return found


def _finish(run: RunDir, items: pd.DataFrame, summary: dict[str, Any]) -> None:
    """Count statuses; once every item of every shard is done, consolidate items.parquet
    (not again when this call generated nothing: a complete run was consolidated already)."""
    counts = items["status"].value_counts()
    summary["done_total"] = int(counts.get("done", 0))
    summary["pending_total"] = int(counts.get("pending", 0))
    summary["error_total"] = int(counts.get("error", 0))
    summary["complete"] = summary["pending_total"] == 0
    if summary["complete"] and (summary.get("generated") or not run.items_path.is_file()):
        run.consolidate_items()
