"""kNN back ends behind one small interface: a clip-retrieval HTTP server or a local index folder.

Both return the same rows: id, url, caption, similarity, plus whatever the index's metadata
carries (image_path, NSFW / punsafe columns); a server may add `image`, the picture as base64.
Server-side filters are always switched OFF: the safety model, violence detector and aesthetic
re-weighting remove exactly what an audit counts.

Against a real `clip-retrieval back` (2.45.0), whose protocol this client follows:

- `image_path` in a server's answer is a path on the *server*, so it is never read here. The
  server turns it into `image` (base64 JPEG) when that file exists on the server; the client uses
  `image` when sent, else downloads `url` through the SSRF-safe fetcher.
- Configure the server's `columns_to_return` with the columns your metadata really has, e.g.
  `["url", "caption", "NSFW"]` (add `punsafe` / `pwatermark` if present) for a URL-only LAION
  index. List `image_path` only if every row has one that exists on the server: with parquet or
  arrow metadata a null `image_path` crashes the server (HTTP 500 on every query that meets it);
  `--enable_hdf5 True` turns nulls into "" and avoids that crash. Images that cannot be saved as
  JPEG (RGBA, palette with transparency) also make the server answer 500.
- Leave `--provide_safety_model` / `--provide_violence_detector` off or not (we always send
  `use_safety_model=false`, `use_violence_detector=false`, `aesthetic_score=""`, and
  `deduplicate=false` unless asked), so nothing is filtered out of the count.
- An unknown `indice_name` is a bare HTTP 500 there; this client checks `/indices-list` first
  and names the indices that exist.
- The server does not normalise `embedding_input`; this client L2-normalises every query vector.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from analysis.errors import AuditError, require


class KnnBackend(Protocol):
    name: str
    indice_name: str
    local_files: bool  # may a row's image_path be read on this machine?

    def query_text(self, text: str, k: int) -> list[dict[str, Any]]: ...

    def query_embedding(self, embedding: np.ndarray, k: int) -> list[dict[str, Any]]: ...


def knn_request(
    *,
    k: int,
    indice_name: str,
    text: str | None = None,
    embedding: list[float] | None = None,
    modality: str = "image",
    deduplicate: bool = False,
) -> dict[str, Any]:
    """The JSON body clip-retrieval's /knn-service expects, with every filter off."""
    return {
        "text": text,
        "image": None,
        "image_url": None,
        "embedding_input": embedding,
        "modality": modality,
        "num_images": k,
        "indice_name": indice_name,
        "num_result_ids": k,
        "use_mclip": False,
        "deduplicate": deduplicate,
        "use_safety_model": False,
        "use_violence_detector": False,
        "aesthetic_score": "",
        "aesthetic_weight": "0",
    }


def unit_vector(embedding: Any) -> np.ndarray:
    """The query as a float32 unit vector: servers search by inner product and do not normalise."""
    vec = np.asarray(embedding, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(vec)) if vec.size else 0.0
    if not math.isfinite(norm) or norm == 0.0:
        raise AuditError(f"query embedding cannot be normalised (length {vec.size}, norm {norm})")
    return (vec / norm).astype(np.float32)


def check_rows(rows: Any, where: str) -> list[dict[str, Any]]:
    """A server answer must be a list of objects; anything else is a clear error, not a crash."""
    if rows is None:
        return []
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise AuditError(f"{where} did not answer a JSON list of objects: {str(rows)[:120]}")
    return rows


class ServerError(Exception):
    """An HTTP 5xx answer: maybe transient, or (on clip-retrieval) an unknown index name."""


class HttpBackend:
    """Client of a `clip-retrieval back` (or `t2i-audit knn serve`) server, spoken with httpx.

    Its rows' `image_path` names a file on the server, so local_files is False.
    """

    local_files = False

    def __init__(
        self,
        url: str,
        indice_name: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        deduplicate: bool = False,
    ) -> None:
        httpx = require("httpx", "knn", "The clip-retrieval client")
        self.url = url.rstrip("/")
        self.client = httpx.Client(timeout=timeout)
        self.retries, self.backoff, self.deduplicate = retries, backoff, deduplicate
        available = self.indices()  # checked before any query: the real server 500s on a typo
        if indice_name is not None and indice_name not in available:
            raise self._unknown_index(indice_name, available)
        self.indice_name = indice_name or available[0]
        self.name = f"{self.url} [{self.indice_name}]"

    def _unknown_index(self, name: str, available: list[str]) -> AuditError:
        listed = ", ".join(repr(a) for a in available) or "none"
        return AuditError(
            f"kNN server {self.url} has no index {name!r}; it serves: {listed} "
            "(choose one with --indice-name)"
        )

    def _once(self, method: str, path: str, body: Any = None) -> Any:
        """One request; 5xx raises ServerError (retried), 4xx or a non-JSON answer AuditError."""
        resp = self.client.request(method, self.url + path, json=body)
        if resp.status_code >= 500:
            raise ServerError(f"HTTP {resp.status_code} {' '.join(resp.text[:120].split())}")
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            if resp.status_code < 400:
                raise AuditError(
                    f"kNN server {self.url}{path} answered non-JSON: {resp.text[:120]!r}"
                ) from None
            data = None
        message = data.get("message") if isinstance(data, dict) else None
        if resp.status_code >= 400 or message is not None:
            detail = message if message is not None else " ".join(resp.text[:200].split())
            raise AuditError(
                f"kNN server {self.url}{path} answered an error (HTTP {resp.status_code}): {detail}"
            )
        return data

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, path, body)
            except ServerError as exc:
                last = exc
                if attempt == 0 and path != "/indices-list":
                    self._check_index()  # raises at once if the index has gone
            except httpx.TransportError as exc:
                last = exc
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise AuditError(
            f"kNN back end {self.url} is unreachable or failing after {self.retries + 1} tries "
            f"({type(last).__name__}: {last}); results cached so far are kept, re-run to continue"
        )

    def _check_index(self) -> None:
        """After a 500: if the server no longer lists our index, say so instead of retrying."""
        try:
            available = self._once("GET", "/indices-list")
        except Exception:  # the listing failing too tells nothing more; keep retrying the query
            return
        if isinstance(available, list) and self.indice_name not in available:
            raise self._unknown_index(self.indice_name, [str(a) for a in available])

    def indices(self) -> list[str]:
        names = self._call("GET", "/indices-list")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AuditError(
                f"kNN server {self.url}/indices-list did not answer a list of names: "
                f"{str(names)[:120]}"
            )
        if not names:
            raise AuditError(f"kNN server {self.url} lists no indices")
        return names

    def _knn(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return check_rows(self._call("POST", "/knn-service", body), f"{self.url}/knn-service")

    def query_text(self, text: str, k: int) -> list[dict[str, Any]]:
        return self._knn(
            knn_request(k=k, indice_name=self.indice_name, text=text, deduplicate=self.deduplicate)
        )

    def query_embedding(self, embedding: np.ndarray, k: int) -> list[dict[str, Any]]:
        body = knn_request(
            k=k,
            indice_name=self.indice_name,
            embedding=[float(v) for v in unit_vector(embedding)],
            deduplicate=self.deduplicate,
        )
        return self._knn(body)

    def metadata(self, ids: list[int]) -> list[dict[str, Any]]:
        """Rows for ids, flattened from the server's [{"id": i, "metadata": {...}}]."""
        body = {"ids": [int(i) for i in ids], "indice_name": self.indice_name}
        answer = check_rows(self._call("POST", "/metadata", body), f"{self.url}/metadata")
        return [{**(r.get("metadata") or {}), "id": r.get("id")} for r in answer]


def _first_line(exc: BaseException) -> str:
    """A library's error as one short line (faiss prefixes its C++ location)."""
    text = " ".join(str(exc).split())
    return text.split(": ", 1)[-1][:200] if " at /" in text else text[:200]


def _read_metadata(path: Path) -> pd.DataFrame:
    """One metadata part; an unreadable file is named instead of pyarrow's traceback."""
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise AuditError(f"{path} is not a readable Parquet file: {_first_line(exc)}") from None


class LocalIndexBackend:
    """A clip-retrieval index folder: image.index (faiss), optional text.index, metadata/*.parquet.

    Metadata parquet files are concatenated in file-name order; row i describes index vector i.
    Relative image_path values are resolved against the folder and read locally (local_files).
    """

    local_files = True

    def __init__(self, folder: str | Path, clip_model: str | None = None) -> None:
        faiss = require("faiss", "knn", "Local kNN search")
        self.folder = Path(folder)
        index_file = self.folder / "image.index"
        if not index_file.is_file():
            raise AuditError(f"{self.folder} is not a clip-retrieval index folder (no image.index)")
        try:
            self.index = faiss.read_index(str(index_file))
        except RuntimeError as exc:  # faiss reports a bad file as a C++ exception
            raise AuditError(f"{index_file} is not a faiss index: {_first_line(exc)}") from None
        parts = sorted((self.folder / "metadata").glob("*.parquet"))
        if not parts:
            raise AuditError(f"{self.folder}/metadata holds no .parquet files")
        self.meta = pd.concat([_read_metadata(p) for p in parts], ignore_index=True)
        if len(self.meta) != self.index.ntotal:
            raise AuditError(
                f"{self.folder}: metadata has {len(self.meta)} rows but image.index holds "
                f"{self.index.ntotal} vectors; they must match row for row"
            )
        self.clip_model = clip_model
        self._clip = None
        self.indice_name = self.folder.name
        self.name = str(self.folder)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def embed_text(self, text: str) -> np.ndarray:
        if self._clip is None:
            from analysis.classifiers.clip import load_clip

            self._clip = load_clip(self.clip_model)
        return self._clip.embed_texts([text])[0]

    def query_text(self, text: str, k: int) -> list[dict[str, Any]]:
        return self.query_embedding(self.embed_text(text), k)

    def query_embedding(self, embedding: np.ndarray, k: int) -> list[dict[str, Any]]:
        size = np.asarray(embedding).size
        if size != self.dim:
            raise AuditError(
                f"query embedding has dimension {size} but the index {self.folder} has "
                f"{self.dim}: use the CLIP model the index was built with (--clip-model)"
            )
        vec = unit_vector(embedding).reshape(1, -1)
        scores, ids = self.index.search(vec, min(k, self.index.ntotal))
        return [
            self._row(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0
        ]

    def metadata(self, ids: list[int]) -> list[dict[str, Any]]:
        return [self._row(int(i), None) for i in ids]

    def _row(self, i: int, similarity: float | None) -> dict[str, Any]:
        row = {k: _plain(v) for k, v in self.meta.iloc[i].items()}
        row["id"] = i
        if similarity is not None:
            row["similarity"] = similarity
        if "image_path" in row and row["image_path"] and not Path(row["image_path"]).is_absolute():
            row["image_path"] = str(self.folder / row["image_path"])
        return row


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def open_backend(spec: str, indice_name: str | None = None, clip_model: str | None = None) -> Any:
    """An http(s):// URL is a clip-retrieval server; anything else a local index folder."""
    if spec.startswith(("http://", "https://")):
        return HttpBackend(spec, indice_name)
    if not Path(spec).exists():
        raise AuditError(f"--backend {spec} is neither an http(s) URL nor an existing index folder")
    return LocalIndexBackend(spec, clip_model)
