"""Content hashes that identify weights and files in provenance and item ids (never paths)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from analysis.errors import AuditError

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".onnx"}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (checkpoints are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: Path, what: str) -> str:
    """sha256 of a weights file, or of a folder's weight files (relative names + contents)."""
    path = Path(path)
    try:
        if path.is_file():
            return sha256_file(path)
        if path.is_dir():
            digest = hashlib.sha256()
            files = sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
            if not files:
                raise AuditError(
                    f"{what} {path} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})"
                )
            for file in files:
                digest.update(f"{file.relative_to(path)}:{sha256_file(file)}\n".encode())
            return digest.hexdigest()
    except OSError as exc:
        raise AuditError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
    raise AuditError(f"{what} {path} does not exist")
