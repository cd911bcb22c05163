"""CLI: `erase esd` (train an ESD concept-erased UNet), `erase uce` (UCE's closed-form edit) and
`erase rece` (UCE plus adversarial rounds): each writes the changed UNet tensors, which
`--unet` loads over their base."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from analysis.errors import AuditError

console = Console()
erase_app = typer.Typer(
    help="Erase concepts from a model's UNet (ESD, UCE, RECE).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(erase_app, name="erase")


def _refuse_flow(method: str, model: str, revision: str | None) -> None:
    """ESD and RECE train/edit SD UNets; on an SD3/FLUX model they would fail mid-way: refuse
    before loading (the authors' flow-model ESD trainer, utils/esd_trainer.py, is not here)."""
    from analysis.generation.flow_families import flow_family

    family = flow_family(model, revision)
    if family:
        raise AuditError(
            f"erase {method}: {model} is a {family} flow-matching transformer; {method.upper()} "
            "here edits SD 1.x/2.x UNets (for FLUX use `erase uce`)"
        )


@erase_app.command("esd")
def esd(
    model: str = typer.Option(
        "tiny", "--model", help="'tiny', a hub id, a diffusers folder or a checkpoint file."
    ),
    concept: str = typer.Option(
        ..., "--concept", help="Text of the concept to erase, e.g. 'nudity'."
    ),
    method: str = typer.Option(
        "esd-x", "--method", help="esd-x (cross-attention only) or esd-u (the rest)."
    ),
    recipe: str = typer.Option(
        "paper",
        "--recipe",
        help="paper (train-esd.py: 1000 it, lr 1e-5, eta 1, z_t from the trained model) or "
        "diffusers (esd_sd.py: 200 it, lr 5e-5, eta 2, z_t from the frozen base).",
    ),
    iterations: int = typer.Option(None, "--iterations", help="Overrides the recipe's."),
    lr: float = typer.Option(None, "--lr", help="Adam learning rate; overrides the recipe's."),
    negative_guidance: float = typer.Option(
        None, "--negative-guidance", help="eta; overrides the recipe's."
    ),
    start_guidance: float = typer.Option(3.0, "--start-guidance", help="CFG scale sampling z_t."),
    ddim_steps: int = typer.Option(50, "--ddim-steps", help="Length of the DDIM schedule."),
    resolution: int = typer.Option(None, "--resolution", help="Image size (default: the model's)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(..., "--out", help="Output .safetensors (trained tensors only)."),
    checkpoint_every: int = typer.Option(
        100, "--checkpoint-every", help="Write a resumable checkpoint beside --out every N."
    ),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue a checkpoint."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ..."),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32, or bf16/fp16 autocast (cuda)."
    ),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing"),
    revision: str = typer.Option(None, "--revision", help="Hub revision of --model."),
) -> None:
    """Train ESD (Gandikota et al. 2023) and save the erased UNet tensors with their recipe."""
    from pydantic import ValidationError

    from analysis.erase import EsdSettings, train_esd
    from analysis.erase.esd import check_output
    from analysis.erase.recipes import settings_error
    from analysis.generation.models import load_model

    try:
        settings = EsdSettings(
            concept=concept,
            method=method,
            recipe=recipe,
            iterations=iterations,
            lr=lr,
            negative_guidance=negative_guidance,
            start_guidance=start_guidance,
            ddim_steps=ddim_steps,
            resolution=resolution,
            seed=seed,
            checkpoint_every=checkpoint_every,
            precision=precision,
            gradient_checkpointing=gradient_checkpointing,
        )
    except ValidationError as exc:
        raise AuditError(f"erase esd: {settings_error(exc)}") from None
    check_output(out, [model])  # again in train_esd, with the loaded model's own paths
    _refuse_flow("esd", model, revision)
    loaded = load_model(model, device=device, dtype="float32", revision=revision)
    record = train_esd(loaded, settings, out, resume=resume, progress=True)
    if record["skipped"]:
        console.print(f"{out} is already done (same recipe and base); skipped")
        return
    console.print(
        f"wrote {out}: {record['trained_tensors']} tensors ({record['method']}, recipe "
        f"{record['recipe']}, {record['iterations']} it, lr {record['lr']}, eta "
        f"{record['negative_guidance']}); final loss {record['final_loss']:.4g}"
    )


# Options shared by `erase uce` and `erase rece` (RECE starts from UCE: same meaning).
_MODEL = typer.Option(
    "tiny", "--model", help="'tiny', a hub id, a diffusers folder or a checkpoint file."
)
_CONCEPT = typer.Option(None, "--concept", help="A concept to erase, e.g. 'nudity' (repeatable).")
_CONCEPTS_FILE = typer.Option(
    None, "--concepts-file", help="More concepts to erase: .txt (one a line) or .csv."
)
_GUIDED = typer.Option(
    None,
    "--guided-concept",
    help="Target each concept is mapped to: one for all, or one per --concept "
    "(default: the empty prompt).",
)
_PRESERVE = typer.Option(None, "--preserve", help="A concept to keep as it is (repeatable).")
_PRESERVE_FILE = typer.Option(
    None, "--preserve-file", help="More concepts to keep: .txt (one a line) or .csv."
)
_ERASE_SCALE = typer.Option(1.0, "--erase-scale", help="Weight of the erase terms.")


def _concept_lists(
    concept: list[str] | None,
    concepts_file: Path | None,
    preserve: list[str] | None,
    preserve_file: Path | None,
) -> tuple[list[str], list[str]]:
    """(concepts to erase, concepts to keep) from the options and their files (UCE, RECE)."""
    from analysis.erase.uce import read_concepts

    concepts = list(concept or [])
    if concepts_file is not None:
        concepts += read_concepts(concepts_file, "--concepts-file")
    keep = list(preserve or [])
    if preserve_file is not None:
        keep += read_concepts(preserve_file, "--preserve-file")
    return concepts, keep


@erase_app.command("uce")
def uce(
    model: str = _MODEL,
    concept: list[str] = _CONCEPT,
    concepts_file: Path = _CONCEPTS_FILE,
    guided_concept: list[str] = _GUIDED,
    preserve: list[str] = _PRESERVE,
    preserve_file: Path = _PRESERVE_FILE,
    erase_scale: float = _ERASE_SCALE,
    preserve_scale: float = typer.Option(
        1.0, "--preserve-scale", help="Weight of the preserve terms."
    ),
    lamb: float = typer.Option(0.5, "--lamb", help="Pull towards the original weights (> 0)."),
    expand_prompts: str = typer.Option(
        "none",
        "--expand-prompts",
        help="none, art ('painting by C', ...) or object ('image of C', ...), as the script's "
        "--expand_prompts with its --concept_type.",
    ),
    out: Path = typer.Option(..., "--out", help="Output .safetensors (edited tensors only)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ..."),
    revision: str = typer.Option(None, "--revision", help="Hub revision of --model."),
) -> None:
    """Erase concepts with UCE (Gandikota et al. 2024): a closed-form edit of the cross-attention
    key/value projections (FLUX: its text-input projections); saves the edited tensors with
    their recipe."""
    from pydantic import ValidationError

    from analysis.erase.output import check_output
    from analysis.erase.recipes import settings_error
    from analysis.erase.uce import UceSettings, erase_uce
    from analysis.erase.uce_flux import erase_uce_flux
    from analysis.generation.flow_families import flow_family
    from analysis.generation.models import load_model

    concepts, keep = _concept_lists(concept, concepts_file, preserve, preserve_file)
    try:
        settings = UceSettings(
            concept=concepts,
            guided_concept=list(guided_concept or []),
            preserve=keep,
            erase_scale=erase_scale,
            preserve_scale=preserve_scale,
            lamb=lamb,
            expand_prompts=expand_prompts,
        )
    except ValidationError as exc:
        raise AuditError(f"erase uce: {settings_error(exc)}") from None
    inputs = [model, concepts_file, preserve_file]
    check_output(out, inputs)  # again in erase_uce, with the loaded model's own paths
    family = flow_family(model, revision)  # SD3/FLUX: the authors' FLUX edit, SD3 refused
    if family == "sd3":
        raise AuditError(
            f"erase uce: UCE for {model} (sd3) is not implemented: the authors' scripts edit "
            "SD 1.x/2.x UNets and FLUX (uce_flux_edit.py), not SD3"
        )
    loaded = load_model(model, device=device, dtype="float32", revision=revision)
    record = (erase_uce_flux if family == "flux" else erase_uce)(loaded, settings, out)
    if record["skipped"]:
        console.print(f"{out} is already done (same recipe and base); skipped")
        return
    console.print(
        f"wrote {out}: {record['edited_tensors']} tensors ({record['edited_params']}) erasing "
        f"{record['erased_prompts']} prompts, preserving {len(record['preserve'])} (lamb "
        f"{record['lamb']}, erase scale {record['erase_scale']}, preserve scale "
        f"{record['preserve_scale']}) in {record['seconds']} s"
    )


@erase_app.command("rece")
def rece(
    model: str = _MODEL,
    concept: list[str] = _CONCEPT,
    concepts_file: Path = _CONCEPTS_FILE,
    guided_concept: list[str] = _GUIDED,
    preserve: list[str] = _PRESERVE,
    preserve_file: Path = _PRESERVE_FILE,
    erase_scale: float = _ERASE_SCALE,
    preserve_scale: float = typer.Option(
        0.1, "--preserve-scale", help="Weight of the preserve terms (train.py: 0.1)."
    ),
    lamb: float = typer.Option(
        0.1, "--lamb", help="Pull towards the current weights (> 0; train.py: 0.1)."
    ),
    expand_prompts: str = typer.Option(
        "none",
        "--expand-prompts",
        help="none, art or object: expands the concepts of the first (UCE) step only.",
    ),
    epochs: int = typer.Option(3, "--epochs", help="Adversarial rounds after UCE (train.py: 3)."),
    regular_scale: float = typer.Option(
        0.1,
        "--regular-scale",
        help="Ridge weight of the closed-form adversarial embedding (> 0; train.py: 0.1).",
    ),
    technique: str = typer.Option(
        "replace",
        "--technique",
        help="replace (map to the target's output) or tensor (minus its part along the "
        "concept's), as train.py's --technique.",
    ),
    out: Path = typer.Option(..., "--out", help="Output .safetensors (edited tensors only)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ..."),
    revision: str = typer.Option(None, "--revision", help="Hub revision of --model."),
) -> None:
    """Erase concepts with RECE (Gong et al. 2024): UCE, then closed-form adversarial
    embeddings of each concept erased in turn; saves the edited tensors with their recipe."""
    from pydantic import ValidationError

    from analysis.erase.output import check_output
    from analysis.erase.rece import ReceSettings, train_rece
    from analysis.erase.recipes import settings_error
    from analysis.generation.models import load_model

    concepts, keep = _concept_lists(concept, concepts_file, preserve, preserve_file)
    try:
        settings = ReceSettings(
            concept=concepts,
            guided_concept=list(guided_concept or []),
            preserve=keep,
            erase_scale=erase_scale,
            preserve_scale=preserve_scale,
            lamb=lamb,
            expand_prompts=expand_prompts,
            epochs=epochs,
            regular_scale=regular_scale,
            technique=technique,
        )
    except ValidationError as exc:
        raise AuditError(f"erase rece: {settings_error(exc)}") from None
    check_output(out, [model, concepts_file, preserve_file])  # again with the model's own paths
    _refuse_flow("rece", model, revision)
    loaded = load_model(model, device=device, dtype="float32", revision=revision)
    record = train_rece(loaded, settings, out)
    if record["skipped"]:
        console.print(f"{out} is already done (same recipe and base); skipped")
        return
    console.print(
        f"wrote {out}: {record['edited_tensors']} tensors ({record['edited_params']}) after UCE "
        f"and {record['epochs']} adversarial epochs erasing {len(record['concepts'])} concepts "
        f"(lamb {record['lamb']}, regular scale {record['regular_scale']}, technique "
        f"{record['technique']}) in {record['seconds']} s"
    )
