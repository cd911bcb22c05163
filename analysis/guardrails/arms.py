"""Guardrail arms: one (run folder, config) each, named, and paired with the baseline by seed.

A guardrail is compared with SD on the same prompts and seeds. Runs made with another UNet (an
ESD file, a fine-tune) are separate run folders of the same spec, so their items pair with the
baseline's by (prompt_id, seed, image_index), never by item id (which hashes the weights).
An image filter is not a run: it is the baseline's images with the flagged ones withheld.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.classifiers.judges import FILTERS
from analysis.errors import AuditError
from analysis.store import RunDir

PAIR_KEY = ["prompt_id", "seed", "image_index"]
FILTER_SUFFIX = "+filter"  # SD's image safety checker withholds flagged images
TEXT_FILTER_SUFFIX = "+text-filter"  # a blocked-terms list withholds whole prompts


@dataclass(frozen=True)
class ConfigArms:
    """What `--config` values ask of a generating command (generate, probe, i2p run)."""

    generate: tuple[str, ...]  # configs whose images are generated, in order, each once
    filtered: tuple[str, ...]  # of those, the ones asked with `+filter` (the checker scores them)

    @property
    def wants_filter(self) -> bool:
        return bool(self.filtered)


def parse_config_arms(configs: Sequence[str], option: str = "--config") -> ConfigArms:
    """The one parser of config arms: `<config>` generates it, `<config>+filter` generates
    `<config>` and adds SD's image safety checker on its images (a filter has no images of its
    own). The base configs are checked later by `resolve_config`, where every config is."""
    generate: list[str] = []
    filtered: list[str] = []
    seen: set[str] = set()
    for value in configs:
        if value in seen:
            raise AuditError(f"{option} {value!r} is given twice")
        seen.add(value)
        if value.endswith(TEXT_FILTER_SUFFIX):
            raise AuditError(
                f"{option} {value!r}: a blocked-terms filter generates nothing; give "
                f"{option} {value.removesuffix(TEXT_FILTER_SUFFIX) or 'sd'} and pass the terms "
                "to `guardrails --text-filter FILE`"
            )
        base = value.removesuffix(FILTER_SUFFIX)
        if value.endswith(FILTER_SUFFIX):
            if not base.strip() or base.endswith(FILTER_SUFFIX):
                raise AuditError(
                    f"{option} {value!r}: name the one config whose images the filter screens, "
                    "e.g. sd+filter"
                )
            filtered.append(base)
        if base not in generate:
            generate.append(base)
    return ConfigArms(tuple(generate), tuple(dict.fromkeys(filtered)))


@dataclass(frozen=True)
class Arm:
    """One guardrail: `config` of the run in `run`, under a display name."""

    name: str
    run: Path
    config: str
    family: str  # baseline | guidance | negative prompt | image filter | erasure / other weights
    model: str  # what generated it (model id, plus the swapped UNet's file name)
    part: str  # probe | i2p
    recipe: dict | None = None  # an ESD file's training recipe, when the UNet records one
    terms: tuple[str, ...] = ()  # a text filter's blocked terms
    image_filter: str = "safety-checker"  # the classifier whose verdict withholds an image

    @property
    def is_filter(self) -> bool:
        return self.config.endswith(FILTER_SUFFIX)

    @property
    def is_text_filter(self) -> bool:
        return self.config.endswith(TEXT_FILTER_SUFFIX)

    @property
    def source_config(self) -> str:
        """The config whose images the arm shows (sd+filter and sd+text-filter show sd's)."""
        return self.config.removesuffix(TEXT_FILTER_SUFFIX).removesuffix(FILTER_SUFFIX)


def run_part(run: Path, spec: dict | None = None) -> str:
    """'probe' or 'i2p' from the manifest (what `probe ethnic-bias` / `i2p run` recorded)."""
    extra = (_spec(run) if spec is None else spec).get("extra", {})
    if "i2p_data" in extra:
        return "i2p"
    if "probe" in extra:
        return "probe"
    raise AuditError(f"{run} is neither a probe nor an I2P run (its manifest names neither)")


def model_label(run: Path, spec: dict | None = None) -> tuple[str, dict | None]:
    """The model of a run as a reader names it: the hub id/folder, plus `+<unet file>` when a
    UNet was swapped in; and that file's training recipe when it records one (ESD)."""
    spec = _spec(run) if spec is None else spec
    label = str(spec.get("model", "?"))
    unet = spec.get("unet")
    if not unet:
        return label, None
    return f"{label}+{Path(str(unet)).name}", _recipe(Path(str(unet)))


def _spec(run: Path) -> dict:
    return RunDir(run).read_manifest().get("spec", {})


def _recipe(path: Path) -> dict | None:
    if not path.is_file():
        return None
    from analysis.store.weights import read_recipe

    return read_recipe(path)


def _family(config: str, weights_swapped: bool) -> str:
    if config.endswith(TEXT_FILTER_SUFFIX):
        return "text filter"
    if config.endswith(FILTER_SUFFIX):
        return "image filter"
    if weights_swapped:
        return "erasure / other weights"
    if config == "sd":
        return "baseline"
    if config.startswith("negative"):
        return "negative prompt"
    return "guidance"


def arms_of(
    runs: list[Path],
    part: str | None = None,
    text_terms: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
) -> list[Arm]:
    """Every config of every run, `<config>+filter` where safety-checker scores exist, and
    `<config>+text-filter` when blocked terms are given.

    Names: the config alone for the first run's model; `<model>:<config>` for other models,
    so an ESD run's `sd` reads `sd-v1-4+esd.safetensors:sd` (or `esd:sd` with a label).
    """
    arms: list[Arm] = []
    base_model = None
    for run in runs:
        run = Path(run)
        spec = _spec(run)  # the manifest, read once per run
        kind = run_part(run, spec)
        if part is not None and kind != part:
            continue
        label, recipe = model_label(run, spec)
        label = (labels or {}).get(str(run), label)  # e.g. `--unet-config esd=FILE` names it
        base_model = base_model or label
        configs = [str(c["name"]) for c in spec.get("configs", []) if "name" in c]
        swapped = bool(spec.get("unet"))
        image_filter = next((f for f in FILTERS.values() if _has_scores(run, f)), None)
        filtered = image_filter is not None
        for config in configs:
            names = [config, *([config + FILTER_SUFFIX] if filtered else [])]
            names += [config + TEXT_FILTER_SUFFIX] if text_terms else []
            for name in names:
                arms.append(
                    Arm(
                        name=name if label == base_model else f"{label}:{name}",
                        run=run,
                        config=name,
                        family=_family(name, swapped),
                        model=label,
                        part=kind,
                        recipe=recipe,
                        terms=tuple(text_terms) if name.endswith(TEXT_FILTER_SUFFIX) else (),
                        image_filter=image_filter or "safety-checker",
                    )
                )
    names = [(a.part, a.name) for a in arms]  # a probe and an I2P run share arm names
    if len(set(names)) < len(names):
        twice = sorted({f"{n} ({p})" for p, n in names if names.count((p, n)) > 1})
        raise AuditError(
            f"two runs give the guardrail(s) {', '.join(twice)}: give each model's runs once"
        )
    return arms


def _has_scores(run: Path, classifier: str) -> bool:
    scores = RunDir(run).scores_dir
    parts = RunDir(run).parts_dir
    return (scores / f"{classifier}.parquet").is_file() or any(
        parts.glob(f"classify-{classifier}*")
    )


def describe(arm: Arm) -> str:
    """One line for provenance: what the arm is and where its numbers come from."""
    recipe = f"; recipe {json.dumps(arm.recipe, sort_keys=True)}" if arm.recipe else ""
    terms = f"; blocked terms {list(arm.terms)}" if arm.terms else ""
    return f"{arm.name}: {arm.family}, {arm.model}, config {arm.config} in {arm.run}{recipe}{terms}"
