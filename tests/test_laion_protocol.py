"""The client against a stand-in for a real `clip-retrieval back` 2.45.0, and our server's shapes.

The stand-in reproduces what the real server does and our own server does not: image_path is a
path on the server (absent here) sent alongside a base64 JPEG `image`; an unknown index is an
HTTP 500; embedding_input is searched as sent, unnormalised. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from analysis.cli import main
from analysis.errors import AuditError
from analysis.laion.backends import HttpBackend, LocalIndexBackend
from analysis.laion.query import knn_query, save_inline
from analysis.laion.server import make_server

SERVER_PATH = "/srv/laion/images/000123.jpg"  # exists on the "server" only


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


JPEG = _encode(Image.fromarray(data.astronaut()), "JPEG")
PNG = _encode(Image.fromarray(data.chelsea()), "PNG")
BOMB = _encode(Image.new("1", (20_000, 20_000)), "PNG")


class CatalogueServer(BaseHTTPRequestHandler):
    """clip-retrieval back as flask-restful serves it, answers scripted per test."""

    indices: ClassVar[list[str]] = []
    rows: ClassVar[list[dict[str, Any]]] = []
    posted: ClassVar[list[dict[str, Any]]] = []
    bare_500: ClassVar[bool] = False  # werkzeug's HTML page instead of flask-restful's JSON
    images: ClassVar[dict[str, bytes]] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _crash(self) -> None:  # what an uncaught KeyError / TypeError looks like upstream
        if self.bare_500:
            self._send(500, b"<!doctype html><title>500 Internal Server Error</title>", "text/html")
        else:
            self._json(500, {"message": "Internal Server Error"})

    def do_GET(self) -> None:
        if self.path == "/indices-list":
            self._json(200, self.indices)
        elif self.path in self.images:
            self._send(200, self.images[self.path], "image/png")
        else:
            self._send(404, b"not found", "text/html")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posted.append(body)
        unknown = body["indice_name"] not in self.indices  # clip_resources[name]: KeyError
        null_path = any(isinstance(r, dict) and r.get("image_path", "") is None for r in self.rows)
        if unknown or null_path:  # null_path: os.path.exists(None) is a TypeError upstream
            self._crash()
        else:
            self._json(200, self.rows[: body["num_images"]])


@pytest.fixture
def catalogue() -> Iterator[str]:
    CatalogueServer.indices = ["laion5B-L-14", "laion_400m"]
    CatalogueServer.rows, CatalogueServer.posted = [], []
    CatalogueServer.bare_500 = False
    CatalogueServer.images = {"/cat.png": PNG}
    server = ThreadingHTTPServer(("127.0.0.1", 0), CatalogueServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _row(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": i, "similarity": 0.3 - i / 100, "caption": f"c{i}", "NSFW": "UNLIKELY", **extra}


def test_server_side_image_path_is_judged_from_base64_or_url(tmp_path, catalogue) -> None:
    assert not Path(SERVER_PATH).exists()
    CatalogueServer.rows = [
        _row(0, url="http://img.invalid/a.jpg", image_path=SERVER_PATH, image=_b64(JPEG)),
        _row(1, url=f"{catalogue}/cat.png"),  # url-only: fetched (allow_private for loopback)
        _row(2, url=f"{catalogue}/cat.png", image_path=SERVER_PATH),  # file missing on server
        _row(3, image_path=SERVER_PATH, image="not base64!"),
        _row(4, image_path=SERVER_PATH, image=_b64(BOMB)),
    ]
    out = tmp_path / "run"
    summary = knn_query(
        catalogue, out, countries=["JPN"], k=5, indice_name="laion_400m", allow_private=True
    )
    table = pd.read_parquet(out / "knn" / "neighbours.parquet").set_index("id")
    first = table.loc[0]
    assert pd.isna(first["error"]) and not pd.isna(first["verdict"])
    assert first["image_path"] == SERVER_PATH and first["local_path"] == first["inline_path"]
    assert Path(first["local_path"]).read_bytes() == JPEG
    assert Path(first["local_path"]).stem == hashlib.sha256(JPEG).hexdigest()[:24]
    for fetched in (1, 2):
        assert pd.isna(table.loc[fetched, "error"]) and not pd.isna(table.loc[fetched, "verdict"])
        assert Path(table.loc[fetched, "local_path"]).read_bytes() == PNG
    assert table.loc[3, "error"] == "inline image: not valid base64"
    assert table.loc[4, "error"].startswith("inline image: decompression bomb")
    assert pd.isna(table.loc[3, "verdict"]) and pd.isna(table.loc[4, "verdict"])
    assert summary["fetched"] == 3 and summary["unreachable"] == 2
    assert len(list((out / "knn" / "images").iterdir())) == 2  # bomb deleted, png once
    request = CatalogueServer.posted[-1]
    assert request["indice_name"] == "laion_400m" and request["use_safety_model"] is False
    assert request["use_violence_detector"] is False and request["aesthetic_score"] == ""


def test_inline_image_gets_the_download_caps(tmp_path) -> None:
    assert save_inline(_b64(PNG), tmp_path, max_bytes=1000)[1].startswith("inline image: too")
    assert save_inline(None, tmp_path) == (None, "inline image: not a base64 string")
    path, error = save_inline("data:image/png;base64," + _b64(PNG), tmp_path)
    assert error is None and path.endswith(".png") and Path(path).read_bytes() == PNG
    assert save_inline(_b64(b"<html>"), tmp_path)[1].startswith("inline image: not an image")


@pytest.mark.parametrize("bare", [False, True], ids=["flask-restful-json", "bare-html"])
def test_unknown_index_names_the_served_ones(catalogue, bare: bool) -> None:
    CatalogueServer.bare_500 = bare
    with pytest.raises(AuditError) as info:
        HttpBackend(catalogue, indice_name="laion5b")
    message = str(info.value)
    assert "\n" not in message and "'laion5b'" in message
    assert "'laion5B-L-14', 'laion_400m'" in message
    assert not CatalogueServer.posted  # refused before any query
    backend = HttpBackend(catalogue, indice_name="laion_400m", retries=3, backoff=0.01)
    CatalogueServer.indices = ["laion5B-L-14"]  # dropped while we run: the query gets a 500
    with pytest.raises(AuditError, match=r"has no index 'laion_400m'; it serves: 'laion5B-L-14'"):
        backend.query_text("a body", 3)
    assert len(CatalogueServer.posted) == 1  # answered at once, no retries on a missing index


def test_other_500s_are_retried_then_reported(catalogue) -> None:
    CatalogueServer.rows = [_row(0, url="http://x.invalid/a.jpg", image_path=None)]  # crashes
    backend = HttpBackend(catalogue, retries=2, backoff=0.01)
    assert backend.indice_name == "laion5B-L-14"  # the first listed, as upstream defaults
    with pytest.raises(AuditError, match=r"failing after 3 tries \(ServerError: HTTP 500"):
        backend.query_text("a body", 3)
    assert len(CatalogueServer.posted) == 3


def test_cli_unknown_index_is_one_line(tmp_path, catalogue, capsys) -> None:
    argv = ["knn", "query", "--backend", catalogue, "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--indice-name", "nope", "--countries", "JPN"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert "'nope'" in err and "'laion5B-L-14', 'laion_400m'" in err


def test_query_embedding_is_sent_normalised(catalogue) -> None:
    CatalogueServer.rows = [_row(0, url="http://x.invalid/a.jpg")]
    backend = HttpBackend(catalogue)
    rng = np.random.default_rng(1)
    raw = 7.5 * rng.standard_normal(768)
    rows = backend.query_embedding(raw, 1)
    sent = np.asarray(CatalogueServer.posted[-1]["embedding_input"])
    assert rows[0]["id"] == 0 and sent.shape == (768,)
    assert abs(np.linalg.norm(sent) - 1) < 1e-6
    assert np.allclose(sent, raw / np.linalg.norm(raw), atol=1e-6)
    for bad in (np.zeros(768), np.full(768, np.nan)):
        with pytest.raises(AuditError, match="cannot be normalised"):
            backend.query_embedding(bad, 1)


def test_answers_that_are_not_rows_are_clear_errors(catalogue) -> None:
    CatalogueServer.rows = ["just a string"]  # type: ignore[list-item]
    with pytest.raises(AuditError, match="did not answer a JSON list of objects"):
        HttpBackend(catalogue).query_text("x", 1)


@pytest.fixture
def own_server(tmp_path) -> Iterator[tuple[str, Path]]:
    """Our `knn serve` on a 6-vector index; rows 1 and 4 carry a local image_path."""
    folder = tmp_path / "mini"
    (folder / "metadata").mkdir(parents=True)
    vecs = np.eye(6, 8, dtype=np.float32)
    index = faiss.IndexFlatIP(8)
    index.add(vecs)
    faiss.write_index(index, str(folder / "image.index"))
    (folder / "one.png").write_bytes(PNG)
    pd.DataFrame(
        {
            "url": [f"http://example.org/{i}.jpg" for i in range(6)],
            "caption": [f"caption {i}" for i in range(6)],
            "NSFW": ["UNLIKELY"] * 6,
            "image_path": [None, "one.png", None, None, "missing.png", None],
        }
    ).to_parquet(folder / "metadata" / "0000.parquet")
    server = make_server(LocalIndexBackend(folder, "tiny"), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", folder
    server.shutdown()
    server.server_close()


def test_own_server_speaks_the_real_shapes(own_server) -> None:
    import httpx

    url, _ = own_server
    assert httpx.get(f"{url}/indices-list").json() == ["mini"]
    meta = httpx.post(f"{url}/metadata", json={"ids": [4, 1, 0], "indice_name": "mini"}).json()
    assert [m["id"] for m in meta] == [4, 1, 0] and set(meta[0]) == {"id", "metadata"}
    assert meta[2]["metadata"] == {
        "url": "http://example.org/0.jpg",
        "caption": "caption 0",
        "NSFW": "UNLIKELY",
        "image_path": None,
    }
    assert base64.b64decode(meta[1]["metadata"]["image"]) == PNG
    assert "image" not in meta[0]["metadata"]  # missing.png: no image, no crash
    bad = httpx.post(f"{url}/metadata", json={"ids": [99], "indice_name": "mini"})
    assert bad.status_code == 400 and "ids must be" in bad.json()["message"]
    query = {"embedding_input": [0.2, 3.0, 0.1, 0, 0, 0, 0, 0], "modality": "image"}
    rows = httpx.post(
        f"{url}/knn-service",
        json={**query, "num_images": 2, "num_result_ids": 3, "indice_name": "mini"},
    ).json()
    assert [r["id"] for r in rows] == [1, 0, 2] and rows[0]["similarity"] > rows[1][
        "similarity"
    ] > 0
    assert {"id", "similarity", "url", "caption", "NSFW", "image_path", "image"} <= set(rows[0])
    assert base64.b64decode(rows[0]["image"]) == PNG
    assert set(rows[2]) == {"id", "similarity"}  # beyond num_images: ids only, as upstream
    client = HttpBackend(url)
    flat = client.metadata([1])
    assert flat[0]["id"] == 1 and flat[0]["caption"] == "caption 1" and "image" in flat[0]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
