"""`t2i-audit knn serve`: a local index folder over clip-retrieval's HTTP protocol.

Lets a team share one index and tests the HTTP client against a real protocol. Answers in the
shapes `clip-retrieval back` 2.45.0 uses, so either server works with either client:

- GET /indices-list: a JSON list of index names;
- POST /knn-service: a list of rows, each the index metadata plus `id`, `similarity` and, when
  the row's image_path is a file here, `image` (that file's bytes, base64); `num_result_ids`
  neighbours are searched and the first `num_images` carry metadata, as upstream does;
- POST /metadata {"ids": [...], "indice_name": ...}: `[{"id": i, "metadata": {...}}]`.

Unlike upstream, a null image_path is skipped (not a crash), the query vector is normalised, and
an unknown index or bad request is a 400 with a `message` naming the problem. Standard-library
threading HTTP server; binds to loopback unless told otherwise.
"""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from analysis.errors import AuditError
from analysis.laion.backends import LocalIndexBackend
from analysis.laion.fetch import MAX_BYTES


def with_image(row: dict[str, Any]) -> dict[str, Any]:
    """Add `image` (base64) when image_path is a readable file here, as clip-retrieval does."""
    path = row.get("image_path")
    if not isinstance(path, str) or not path:
        return row
    try:
        file = Path(path)
        if file.is_file() and file.stat().st_size <= MAX_BYTES:
            row["image"] = base64.b64encode(file.read_bytes()).decode("ascii")
    except OSError:
        pass  # the client falls back to the url
    return row


def _check_index(backend: LocalIndexBackend, body: dict[str, Any]) -> None:
    name = body.get("indice_name")
    if name not in (None, backend.indice_name):
        raise AuditError(f"unknown indice_name {name!r}; this server has {backend.indice_name!r}")


def _count(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AuditError(f"{key} must be a positive integer, got {value!r}")
    return value


def knn_service(backend: LocalIndexBackend, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Search num_result_ids neighbours; metadata (and image) for the first num_images."""
    _check_index(backend, body)
    if body.get("modality", "image") != "image":
        raise AuditError("this server has only an image index (modality must be 'image')")
    num_images = _count(body, "num_images", 10)
    num_ids = _count(body, "num_result_ids", num_images)
    if body.get("embedding_input") is not None:
        try:
            vec = np.asarray(body["embedding_input"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"embedding_input is not a list of numbers: {exc}") from None
        rows = backend.query_embedding(vec, num_ids)
    elif isinstance(body.get("text"), str) and body["text"]:
        rows = backend.query_text(body["text"], num_ids)
    else:
        raise AuditError("knn-service needs 'text' or 'embedding_input'")
    head = [with_image(r) for r in rows[:num_images]]
    return head + [{"id": r["id"], "similarity": r["similarity"]} for r in rows[num_images:]]


def metadata_service(backend: LocalIndexBackend, body: dict[str, Any]) -> list[dict[str, Any]]:
    """[{"id": i, "metadata": {...}}] for the POSTed ids, in their order."""
    _check_index(backend, body)
    ids = body.get("ids")
    total = int(backend.index.ntotal)
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < total for i in ids
    ):
        raise AuditError(f"ids must be a list of integers in [0, {total})")
    out = []
    for row in backend.metadata(ids):
        ident = row.pop("id")
        out.append({"id": ident, "metadata": with_image(row)})
    return out


def make_server(
    backend: LocalIndexBackend, host: str = "127.0.0.1", port: int = 1234
) -> ThreadingHTTPServer:
    """A server for `backend`; call serve_forever() (or run it in a thread)."""
    routes = {"/knn-service": knn_service, "/metadata": metadata_service}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet by default
            pass

        def _send(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/indices-list":
                self._send(200, [backend.indice_name])
            else:
                self._send(404, {"message": f"no such endpoint {self.path}"})

        def do_POST(self) -> None:
            route = routes.get(self.path.rstrip("/"))
            if route is None:
                self._send(404, {"message": f"no such endpoint {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise AuditError("the request body must be a JSON object")
                self._send(200, route(backend, body))
            except (AuditError, ValueError) as exc:
                self._send(400, {"message": " ".join(str(exc).split())})
            except Exception as exc:  # the client sees a message, the server keeps running
                self._send(500, {"message": f"{type(exc).__name__}: {exc}"})

    return ThreadingHTTPServer((host, port), Handler)
