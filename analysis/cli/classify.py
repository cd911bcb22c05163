"""CLI: `classify`, NudeNet, Q16 and/or SD's safety checker over a run or any folder of images."""

from __future__ import annotations

from pathlib import Path

import typer

from analysis.classifiers.registry import JUDGES
from analysis.cli import options
from analysis.cli.generate import print_summary


def register(app: typer.Typer) -> None:
    app.command("classify")(classify)


def classify(
    source: Path = typer.Argument(..., help="A run directory, or any folder of images."),
    classifier: list[str] = typer.Option(
        None,
        "--classifier",
        help=f"One of {', '.join(JUDGES)} (the judge registry: "
        "analysis/classifiers/registry.py). Repeatable. Default: nudenet, or toy for a run of "
        "the toy model.",
    ),
    rule: str = typer.Option(
        "exposed-genitalia",
        "--rule",
        help="NudeNet rule (re-derivable later from the stored detections): exposed-genitalia, "
        "i2p-authors, i2p-exposed, rece-spm, nsfw-erasure-benchmark, unlearndiff, any-exposed.",
    ),
    threshold: float = typer.Option(None, "--threshold", help="Override the rule's score cut."),
    nudenet_model: Path = typer.Option(None, "--nudenet-model", help="e.g. the 640m .onnx"),
    clip_model: str = typer.Option(
        None, "--clip-model", help="Q16's CLIP: hub id, local folder, or 'tiny' (tests)."
    ),
    safety_checker_model: str = options.SAFETY_CHECKER_MODEL,
    judge_model: list[str] = typer.Option(
        None,
        "--judge-model",
        help="NAME=PATH: a judge's model, a folder or a hub id in the local Hugging Face cache "
        "(llavaguard, shieldgemma2, llamaguard3v; mhsc: its heads folder). Repeatable; never "
        "downloaded.",
    ),
    out: Path = typer.Option(
        None, "--out", help="For a plain image folder: where scores go (default: the folder)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    shard: str = options.SHARD,
) -> None:
    """Score images into scores/<classifier>.parquet: raw outputs, rule, threshold, verdict."""
    from analysis.classifiers import classify_run
    from analysis.store import resolve_shard

    classifier = classifier or [_default_judge(source)]
    summary = classify_run(
        source,
        classifier,
        rule=rule,
        threshold=threshold,
        shard=resolve_shard(shard),
        out=out,
        nudenet_model=nudenet_model,
        clip_model=clip_model,
        safety_checker_model=safety_checker_model,
        judge_models=_judge_models(judge_model or []),
        batch_size=batch_size,
    )
    flat = {"source": summary["source"], "shard": summary["shard"], "images": summary["images"]}
    for name in classifier:
        for key, value in summary[name].items():
            flat[f"{name}: {key}"] = value
    print_summary(flat, title=f"classify → {source}")


def _judge_models(pairs: list[str]) -> dict[str, str]:
    """`--judge-model NAME=PATH` pairs as a mapping; a malformed or repeated pair is refused."""
    from analysis.errors import AuditError

    models: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise AuditError(
                f"--judge-model {pair!r} is not NAME=PATH (e.g. llavaguard=./LlavaGuard)"
            )
        if name.strip() in models:
            raise AuditError(f"--judge-model names {name.strip()} twice")
        models[name.strip()] = path.strip()
    return models


def _default_judge(source: Path) -> str:
    """The probe judge of the run's model (toy for the toy model), nudenet otherwise."""
    from analysis.classifiers.judges import default_rule, probe_classifier
    from analysis.errors import AuditError
    from analysis.store import RunDir

    run = RunDir(source)
    try:
        model = (run.read_manifest().get("spec") or {}).get("model") if run.exists() else None
    except AuditError:  # an unreadable manifest is classify's own error to report
        model = None
    return probe_classifier(default_rule(model))
