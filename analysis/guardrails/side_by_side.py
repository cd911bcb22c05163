"""Several models in one probe or I2P command: `--unet-config NAME=FILE` and `--config sd+filter`.

Each swapped UNet is a run of its own in OUT/models/NAME on the same prompts and seeds (only the
`sd` config: the erasure is in the weights), so the guardrail table pairs it with OUT's `sd`.
An image filter needs no images of its own: `<config>+filter` generates `<config>` and scores it
with SD's safety checker as well.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from analysis.errors import AuditError
from analysis.guardrails.arms import parse_config_arms

MODELS_DIR = "models"


def parse_unet_configs(values: list[str]) -> dict[str, Path]:
    """`NAME=FILE` pairs, checked: a safe unique name and an existing weights file."""
    from analysis.store.names import check_safe_name

    out: dict[str, Path] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise AuditError(
                f"--unet-config {value!r}: expected NAME=FILE, e.g. esd=unets/esd.safetensors"
            )
        try:
            check_safe_name(name, "--unet-config name")
        except ValueError as exc:  # the store's rule, said as a user error
            raise AuditError(str(exc)) from None
        if name in out:
            raise AuditError(f"--unet-config: the name {name!r} is given twice")
        if not Path(file).exists():
            raise AuditError(f"--unet-config {name}: {file} does not exist")
        out[name] = Path(file)
    return out


def split_filters(configs: list[str]) -> tuple[list[str], bool]:
    """Configs to generate (a filter's base added once, in order); whether a filter is asked."""
    arms = parse_config_arms(configs)  # the parser `generate` uses too
    return list(arms.generate), arms.wants_filter


def arm_folder(out: Path, name: str) -> Path:
    return Path(out) / MODELS_DIR / name


def run_side_by_side(
    run_one: Callable[[Path, str | None, list[str]], dict[str, Any]],
    out: Path,
    configs: list[str],
    unet_configs: dict[str, Path],
    *,
    safety_checker_model: str | None = None,
    shard: Any = None,
    progress: bool = True,
    image_filter: str = "safety-checker",
) -> dict[str, Any]:
    """Run `run_one(folder, unet, configs)` for the base model and every swapped UNet, score
    filter arms with `image_filter` (SD's safety checker; the toy filter on the toy model), then
    write OUT/guardrails/ when anything is compared.

    Returns {'runs': {name: summary}, 'guardrails': compare_guardrails(...) or None}.
    """
    generate, wants_filter = split_filters(configs)
    if wants_filter and image_filter == "safety-checker":  # fail before a whole generation
        from analysis.classifiers.safety_checker import check_available

        check_available(safety_checker_model)
    runs: dict[str, dict[str, Any]] = {"": run_one(Path(out), None, generate)}
    folders = [Path(out)]
    labels: dict[str, str] = {}
    for name, file in unet_configs.items():
        folder = arm_folder(out, name)
        runs[name] = run_one(folder, str(file), ["sd"])
        folders.append(folder)
        labels[str(folder)] = name
    if wants_filter:
        from analysis.classifiers import classify_run

        for folder in folders:
            classify_run(
                folder,
                [image_filter],
                shard=shard,
                progress=progress,
                safety_checker_model=safety_checker_model,
            )
    complete = all(
        r.get("generate", r.get("generation", {})).get("complete", True) for r in runs.values()
    )
    if not (wants_filter or unet_configs) or not complete or "sd" not in generate:
        return {"runs": runs, "guardrails": None}
    from analysis.guardrails import compare_guardrails

    guardrails = compare_guardrails(folders, Path(out) / "guardrails", labels=labels)
    return {"runs": runs, "guardrails": guardrails}
