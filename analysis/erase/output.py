"""Writing an erased-weights file, shared by every erasure method (ESD, UCE).

Only the changed tensors are written, under diffusers UNet keys, with the method's recipe as JSON
in the safetensors metadata (`RECIPE_KEY`), so `--unet` loads the file over its base and an audit
can say which erased model it measured. The header is written byte-stable (equal tensors and
recipe give equal bytes: `--unet` files are identified by sha256), and the write is atomic.
A finished file is replaced only by its own recipe: `check_finished` keeps it or refuses.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from analysis.errors import AuditError
from analysis.store.weights import RECIPE_KEY


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def base_source(provenance: dict[str, Any]) -> dict[str, Any]:
    """The base model as an output file records it: kind, id, revision and sha256, plus the
    path of a folder or file model. A built-in model's install path is not part of what it is
    (the same package installed elsewhere trains byte-identical files), so it is left out."""
    keys = ("kind", "id", "revision", "sha256")
    if provenance.get("kind") != "builtin":
        keys = ("kind", "id", "path", "revision", "sha256")
    return {k: provenance[k] for k in keys if provenance.get(k)}


def record_fingerprint(record: dict[str, Any]) -> dict[str, Any]:
    """The parts of a record a resume must match: versions, device and where the base model
    lies may differ (its sha256 says which model it is)."""
    skip = {"toolkit_version", "torch_version", "diffusers_version", "device"}
    out = {k: v for k, v in record.items() if k not in skip}
    if isinstance(out.get("base_model_source"), dict):
        out["base_model_source"] = {
            k: v for k, v in out["base_model_source"].items() if k != "path"
        }
    return out


def stable_header(data: bytes) -> bytes:
    """safetensors bytes with the JSON header's keys sorted, so the file is byte-identical.

    safetensors writes its metadata map in hash order, which varies between calls; the audit
    identifies `--unet` weights by the file's sha256, so equal tensors must give equal bytes.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    if len(text) > size:  # cannot happen for serde's compact JSON; keep the original then
        return data
    return data[:8] + text.ljust(size) + data[8 + size :]


def check_output(out: Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse an --out that training could not write or must not replace, before training.

    It must be a .safetensors file path whose folder exists or can be created and is writable
    (probed with a temporary file, since root passes `os.access`), and never an input of the
    command: the base model's file, or a path inside its folder; nor a file a run owns (the
    store's one ownership guard).
    """
    from analysis.store.ownership import check_output as check_not_run_owned

    out = Path(out)
    if out.suffix != ".safetensors":
        raise AuditError(f"--out {out} must end in .safetensors")
    if out.is_dir():
        raise AuditError(f"--out {out} is a directory; give a file name ending in .safetensors")
    folder = out.parent.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise AuditError(f"--out {out}: {folder} is a file, so the folder cannot be created")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise AuditError(f"--out {out}: folder {folder} is not writable ({exc.strerror})") from None
    target = out.resolve()
    for given in inputs:
        if not given or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if target == source or (source.is_dir() and target.is_relative_to(source)):
            raise AuditError(f"--out {out} is an input of this command ({given}); choose another")
    check_not_run_owned(out)
    return out


def check_finished(out: Path, record: dict[str, Any]) -> bool:
    """True when `out` is already the finished result of this recipe (skip it); False when it
    does not exist. A finished artefact is replaced only by its own recipe, so any other file
    there is refused, naming the first recorded key that differs."""
    from analysis.store.weights import read_recipe

    if not out.exists():
        return False
    theirs, family = read_recipe(out), _family(record)
    if theirs is None:
        article = "an" if family[0] in "AEIO" else "a"  # an ESD, a UCE
        raise AuditError(
            f"--out {out} exists and is not {article} {family} file; refusing to replace it"
        )
    ours, there = record_fingerprint(record), record_fingerprint(theirs)
    for key in [*ours, *(k for k in there if k not in ours)]:
        if ours.get(key) != there.get(key):
            raise AuditError(
                f"--out {out} is a finished {_family(theirs)} file of another recipe: {key} is "
                f"{there.get(key)!r:.60} there, {ours.get(key)!r:.60} now; "
                "choose another --out or delete it"
            )
    return True


def _family(record: dict[str, Any]) -> str:
    """'ESD', 'UCE': the method a record names, for messages (files before UCE are ESD)."""
    return str(record.get("method_family") or "esd").upper()


def write_weights(out: Path, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """Write `tensors` to `out` atomically, with `record` as the recipe, byte-stable."""
    from safetensors.torch import save

    meta = {"format": "pt", RECIPE_KEY: json.dumps(record, sort_keys=True)}
    data = stable_header(save(tensors, metadata=meta))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: Path(p).write_bytes(data))
