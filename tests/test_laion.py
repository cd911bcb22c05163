"""Dataset side: faiss index served over HTTP vs searched directly, safe fetching, faults."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from analysis.classifiers.clip import tiny_clip
from analysis.errors import AuditError
from analysis.laion import fetch as fetch_mod
from analysis.laion.backends import HttpBackend, LocalIndexBackend
from analysis.laion.fetch import fetch_one
from analysis.laion.query import knn_query
from analysis.laion.server import make_server
from analysis.probes.ethnic_bias import probe_prompts

COUNTRIES = ["JPN", "NGA", "FRA"]


class _Images(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, tuple[bytes, str]]] = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/redirect-private":
            self.send_response(302)
            self.send_header("Location", "http://10.1.2.3/secret.png")
            self.end_headers()
            return
        body, ctype = self.files.get(self.path, (b"missing", "text/plain"))
        self.send_response(200 if self.path in self.files else 404)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(server: ThreadingHTTPServer) -> str:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module")
def image_server(tmp_path_factory) -> str:
    import io

    def png(arr) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")
    _Images.files = {
        "/astronaut.png": (png(data.astronaut()), "image/png"),
        "/cat.png": (png(data.chelsea()), "image/png"),
        "/page.png": (b"<html>not an image</html>", "text/html"),
        "/bomb.png": (bomb.getvalue(), "image/png"),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    yield _serve(server)
    server.shutdown()


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory, image_server: str) -> Path:
    """40 vectors: 10 near each country prompt's tiny-CLIP text embedding, 10 random."""
    folder = tmp_path_factory.mktemp("index") / "laion-test"
    (folder / "metadata").mkdir(parents=True)
    clip = tiny_clip()
    texts = clip.embed_texts([p.prompt for p in probe_prompts(COUNTRIES)])
    rng = np.random.default_rng(0)
    vecs = [t + 0.05 * rng.standard_normal((10, t.size)) for t in texts]
    vecs.append(rng.standard_normal((10, texts.shape[1])))
    vecs = np.vstack(vecs).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    faiss.write_index(index, str(folder / "image.index"))
    Image.fromarray(data.astronaut()).save(folder / "local.png")
    urls = ["/astronaut.png", "/cat.png", "/page.png", "/bomb.png", "/gone.png"]
    meta = pd.DataFrame(
        {
            "url": [f"{image_server}{urls[i % 5]}" for i in range(40)],
            "caption": [f"caption {i}" for i in range(40)],
            "punsafe": np.linspace(0, 1, 40),
            "image_path": [("local.png" if i % 10 == 9 else None) for i in range(40)],
        }
    )
    meta.iloc[:25].to_parquet(folder / "metadata" / "0000.parquet")
    meta.iloc[25:].to_parquet(folder / "metadata" / "0001.parquet")
    return folder


@pytest.fixture(scope="module")
def knn_server(index_folder: Path) -> str:
    server = make_server(LocalIndexBackend(index_folder, "tiny"), "127.0.0.1", 0)
    yield _serve(server)
    server.shutdown()


def test_http_and_direct_search_give_the_same_neighbours(index_folder, knn_server) -> None:
    local = LocalIndexBackend(index_folder, "tiny")
    remote = HttpBackend(knn_server)
    assert remote.indice_name == "laion-test"
    for prompt in ("japanese body", "nigerian body"):
        a, b = local.query_text(prompt, 7), remote.query_text(prompt, 7)
        assert [r["id"] for r in a] == [r["id"] for r in b]
        assert [r["similarity"] for r in a] == pytest.approx([r["similarity"] for r in b])
        assert a[0]["punsafe"] is not None and "caption" in a[0]
    japanese = [r["id"] for r in local.query_text("japanese body", 10)]
    assert set(japanese) == set(range(10))  # the synthetic cluster around that prompt
    emb = local.embed_text("french body")
    assert [r["id"] for r in remote.query_embedding(emb, 5)] == [
        r["id"] for r in local.query_embedding(emb, 5)
    ]


def test_query_fetch_judge_and_count_unreachable(tmp_path, index_folder, knn_server) -> None:
    out = tmp_path / "run"
    summary = knn_query(knn_server, out, countries=COUNTRIES, k=10, allow_private=True)
    rates = pd.read_csv(out / "results" / "dataset_nudity_rates.csv")
    assert list(rates.columns[:10]) == [
        "country",
        "iso3",
        "k_requested",
        "k_returned",
        "k_fetched",
        "nude",
        "rate",
        "ci_low",
        "ci_high",
        "index_name",
    ]
    assert (rates["k_returned"] == 10).all() and (rates["index_name"] == "laion-test").all()
    neighbours = pd.read_parquet(out / "knn" / "neighbours.parquet")
    assert len(neighbours) == 30 and summary["returned"] == 30
    bad = neighbours[neighbours["verdict"].isna()]
    reasons = set(bad["error"].str.split(":").str[0])
    assert {"not an image", "decompression bomb", "HTTP 404"} <= reasons
    assert (rates["k_fetched"] + rates["n_unreachable"] == rates["k_returned"]).all()
    assert rates["k_fetched"].sum() == neighbours["verdict"].notna().sum()
    inline_rows = neighbours[neighbours["image_path"].notna()]
    assert len(inline_rows) and inline_rows["verdict"].notna().all()
    assert (inline_rows["local_path"] == inline_rows["inline_path"]).all()  # the server's base64
    local_png = (index_folder / "local.png").read_bytes()
    assert all(Path(p).read_bytes() == local_png for p in inline_rows["local_path"])
    cached = [json.loads(f.read_text()) for f in (out / "knn" / "cache").glob("*.json")]
    assert not any("image" in r for rows in cached for r in rows)  # no base64 kept in the cache
    files = list((out / "knn" / "images").iterdir())
    assert all(len(f.stem) == 24 and "astronaut" not in f.name for f in files)  # hashed names
    from analysis.figures.dataset import draw_figures

    names = {p.name for p in draw_figures(out)}
    assert {"dataset_nudity_map.html", "paper_map_dataset.pdf", "paper_map_dataset.png"} <= names


def test_local_index_reads_image_path_without_fetching(tmp_path, index_folder) -> None:
    out = tmp_path / "run"
    knn_query(
        str(index_folder), out, countries=["JPN"], k=10, allow_private=True, clip_model="tiny"
    )
    neighbours = pd.read_parquet(out / "knn" / "neighbours.parquet")
    local_rows = neighbours[neighbours["image_path"].notna()]
    assert len(local_rows) == 1 and local_rows["verdict"].notna().all()
    assert local_rows["local_path"].iloc[0] == str(index_folder / "local.png")


def test_ssrf_refusals_without_allow_private(tmp_path, image_server, monkeypatch) -> None:
    for url in (
        f"{image_server}/astronaut.png",
        "http://10.0.0.8/a.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x.png",
        "http://224.0.0.1/x.png",
        "file:///etc/passwd",
    ):
        res = fetch_one(url, tmp_path)
        assert res.path is None and res.error.startswith("refused"), (url, res.error)
    real = fetch_mod.check_host

    def loopback_ok(url: str, allow_private: bool, resolve=fetch_mod.system_resolve):
        return real(url, allow_private or url.startswith(image_server), resolve)  # trust ours

    monkeypatch.setattr(fetch_mod, "check_host", loopback_ok)
    res = fetch_one(f"{image_server}/redirect-private", tmp_path)
    assert res.path is None and "10.1.2.3" in res.error  # checked again on the redirect


def test_size_cap_and_content_type(tmp_path, image_server) -> None:
    res = fetch_one(f"{image_server}/astronaut.png", tmp_path, allow_private=True, max_bytes=1000)
    assert res.error.startswith("too large")
    res = fetch_one(f"{image_server}/page.png", tmp_path, allow_private=True)
    assert res.error == "not an image: content-type text/html"
    ok = fetch_one(f"{image_server}/cat.png", tmp_path, allow_private=True)
    assert ok.error is None and Image.open(ok.path).size == (451, 300)


def test_faults_are_clear_errors(tmp_path, index_folder, knn_server) -> None:
    local = LocalIndexBackend(index_folder, "tiny")
    with pytest.raises(AuditError, match="dimension 5 but the index"):
        local.query_embedding(np.ones(5), 3)
    broken = tmp_path / "broken"
    (broken / "metadata").mkdir(parents=True)
    (broken / "image.index").write_bytes((index_folder / "image.index").read_bytes())
    pd.read_parquet(index_folder / "metadata" / "0000.parquet").to_parquet(
        broken / "metadata" / "0000.parquet"
    )
    with pytest.raises(AuditError, match=r"metadata has 25 rows but image\.index holds 40"):
        LocalIndexBackend(broken)
    with pytest.raises(AuditError, match=r"has no index 'nope'; it serves: 'laion-test'"):
        HttpBackend(knn_server, indice_name="nope")
    remote = HttpBackend(knn_server)
    remote.indice_name = "gone"  # an index dropped after start-up: our server says 400
    with pytest.raises(AuditError, match="answered an error \\(HTTP 400\\): unknown indice_name"):
        remote.query_text("x", 3)


def test_backend_down_keeps_cached_results(tmp_path, index_folder) -> None:
    server = make_server(LocalIndexBackend(index_folder, "tiny"), "127.0.0.1", 0)
    url = _serve(server)
    out = tmp_path / "run"
    knn_query(url, out, countries=["JPN"], k=3, allow_private=True)
    server.shutdown()
    server.server_close()
    cached = list((out / "knn" / "cache").glob("*.json"))
    # the cached country needs no server at all (HttpBackend only asks for the index list)
    with pytest.raises(AuditError, match="unreachable or failing after"):
        HttpBackend(url, retries=1, backoff=0.01)
    assert cached and json.loads(cached[0].read_text())
    assert (out / "results" / "dataset_nudity_rates.csv").is_file()
