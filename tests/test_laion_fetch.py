"""Fetching pins each connection to the address that was checked (no DNS rebinding).

A scripted resolver stands in for DNS; requests go to an httpx.MockTransport that records
where they would connect, or to real servers on 127.0.0.1. Nothing leaves the machine.
"""

from __future__ import annotations

import io
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from PIL import Image

from analysis.laion import fetch as fetch_mod
from analysis.laion.fetch import fetch_all, fetch_one

PUBLIC = "93.184.216.34"  # a public address; only ever reached through a MockTransport
PNG = io.BytesIO()
Image.new("RGB", (40, 30), (200, 10, 10)).save(PNG, format="PNG")
PNG_BYTES = PNG.getvalue()


class ScriptedDNS:
    """Answers each name from a script, one answer per lookup (the last one repeats)."""

    def __init__(self, script: dict[str, list[list[str]]]) -> None:
        self.script, self.calls = script, []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answers = self.script[host]
        return answers[min(self.calls.count(host), len(answers)) - 1]


def _recording(routes: dict[str, Callable[[httpx.Request], httpx.Response]], log: list) -> Any:
    """A client whose transport records each request and answers by Host header + path."""

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request)
        return routes[request.headers["host"] + request.url.path](request)

    return httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)


def _png(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=PNG_BYTES, headers={"Content-Type": "image/png"})


def _redirect(location: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(302, headers={"Location": location})


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host", "")))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG_BYTES)))
        self.end_headers()
        self.wfile.write(PNG_BYTES)


def _serve(server: ThreadingHTTPServer) -> Iterator[int]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def loopback() -> Iterator[int]:
    yield from _serve(ThreadingHTTPServer(("127.0.0.1", 0), _Recorder))


def test_rebinding_answer_is_never_connected_to(tmp_path: Path) -> None:
    for i, second in enumerate(("127.0.0.1", "10.0.0.1")):
        (tmp_path / str(i)).mkdir()
        dns = ScriptedDNS({"img.test": [[PUBLIC], [second]]})
        log: list[httpx.Request] = []
        client = _recording({"img.test/a.png": _png}, log)
        res = fetch_one("http://img.test/a.png", tmp_path / str(i), client=client, resolve=dns)
        assert res.error is None and Image.open(res.path).size == (40, 30)
        assert [r.url.host for r in log] == [PUBLIC]  # the checked address, not the rebound one
        assert dns.calls == ["img.test"]  # one lookup: nothing left for a rebinding to change


def test_every_answer_is_checked(tmp_path: Path) -> None:
    log: list[httpx.Request] = []
    dns = ScriptedDNS({"mixed.test": [[PUBLIC, "169.254.169.254"]]})
    res = fetch_one("http://mixed.test/a.png", tmp_path, client=_recording({}, log), resolve=dns)
    assert res.error.startswith("refused: mixed.test resolves to link-local address 169.254")
    assert log == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("::ffff:127.0.0.1", "loopback"),
        ("100.64.0.1", "not globally routable"),
        ("0.0.0.0", "unspecified"),
        ("fe80::1%eth0", "link-local"),
        ("240.0.0.1", "reserved"),
        ("224.0.0.1", "multicast"),
        ("10.0.0.1", "private"),
    ],
)
def test_internal_answers_are_refused(tmp_path: Path, address: str, reason: str) -> None:
    log: list[httpx.Request] = []
    dns = ScriptedDNS({"in.test": [[address]]})
    res = fetch_one("http://in.test/a.png", tmp_path, client=_recording({}, log), resolve=dns)
    assert res.error.startswith(f"refused: in.test resolves to {reason} address"), res.error
    assert log == []


def test_redirects_are_resolved_checked_and_pinned_per_hop(tmp_path: Path) -> None:
    dns = ScriptedDNS(
        {
            "public.test": [[PUBLIC]],
            "inside.test": [["10.9.8.7"]],
            "cdn.test": [["93.184.216.35"]],
            "flip.test": [[PUBLIC], ["127.0.0.1"]],
        }
    )
    log: list[httpx.Request] = []
    client = _recording(
        {
            "public.test/to-inside": _redirect("http://inside.test/x.png"),
            "public.test/to-literal": _redirect("http://10.1.2.3/x.png"),
            "public.test/to-cdn": _redirect("https://cdn.test/img.png"),
            "public.test/to-flip": _redirect("/flip"),
            "public.test/flip": _redirect("http://flip.test/img.png"),
            "flip.test/img.png": _png,
            "cdn.test/img.png": _png,
        },
        log,
    )
    opts: dict[str, Any] = {"client": client, "resolve": dns}
    res = fetch_one("http://public.test/to-inside", tmp_path, **opts)
    assert res.error.startswith("refused: inside.test resolves to private address 10.9.8.7")
    res = fetch_one("http://public.test/to-literal", tmp_path, **opts)
    assert res.error.startswith("refused: 10.1.2.3 resolves to private address 10.1.2.3")
    assert {r.url.host for r in log} == {PUBLIC}  # neither internal hop was contacted
    res = fetch_one("http://public.test/to-cdn", tmp_path, **opts)
    assert res.error is None
    hop = log[-1]
    assert str(hop.url) == "https://93.184.216.35/img.png"  # pinned to cdn.test's checked address
    assert hop.headers["host"] == "cdn.test" and hop.extensions["sni_hostname"] == "cdn.test"
    # flip.test is looked up once, on its hop, and that (public) answer is the one used
    res = fetch_one("http://public.test/to-flip", tmp_path, **opts)
    assert res.error is None and log[-1].url.host == PUBLIC and dns.calls.count("flip.test") == 1


def test_host_header_keeps_the_name_and_port(tmp_path: Path) -> None:
    dns = ScriptedDNS({"img.test": [[PUBLIC]], "v6.test": [["2606:2800:220:1::1"]]})
    log: list[httpx.Request] = []
    routes = {"img.test:8080/a.png": _png, "img.test/b.png": _png, "v6.test/c.png": _png}
    client = _recording(routes, log)
    for url in ("http://u:p@img.test:8080/a.png", "https://img.test/b.png", "http://v6.test/c.png"):
        assert fetch_one(url, tmp_path, client=client, resolve=dns).error is None
    assert [r.headers["host"] for r in log] == ["img.test:8080", "img.test", "v6.test"]
    assert [str(r.url) for r in log] == [
        f"http://{PUBLIC}:8080/a.png",  # user info is not forwarded
        f"https://{PUBLIC}/b.png",
        "http://[2606:2800:220:1::1]/c.png",
    ]
    assert log[1].extensions["sni_hostname"] == "img.test"


def test_allow_private_against_real_loopback(tmp_path: Path, loopback: int, monkeypatch) -> None:
    _Recorder.seen.clear()
    url = f"http://127.0.0.1:{loopback}/ok.png"
    refused = fetch_one(url, tmp_path)
    assert refused.error.startswith("refused: 127.0.0.1 resolves to loopback")
    assert _Recorder.seen == []  # refused before any connection
    ok = fetch_one(url, tmp_path, allow_private=True)
    assert ok.error is None and Image.open(ok.path).size == (40, 30)
    # a name: resolved once by our resolver, then httpx only ever looks up the IP literal
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def only_literals(host: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", only_literals)
    dns = ScriptedDNS({"images.test": [["127.0.0.1"], ["10.0.0.1"]]})
    named = f"http://images.test:{loopback}/named.png"
    res = fetch_all([named], tmp_path, allow_private=True, resolve=dns)[0]
    assert res.error is None and _Recorder.seen[-1] == ("/named.png", f"images.test:{loopback}")
    assert dns.calls == ["images.test"] and set(lookups) == {"127.0.0.1"}


@pytest.fixture(scope="module")
def tls_loopback(tmp_path_factory) -> Iterator[tuple[int, Path, list[str | None]]]:
    """An HTTPS server on 127.0.0.1 whose certificate names only images.test."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    sni: list[str | None] = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    for port in _serve(server):
        yield port, cert, sni


def test_tls_verifies_the_name_while_connecting_to_the_ip(tmp_path: Path, tls_loopback) -> None:
    port, cert, sni = tls_loopback
    dns = ScriptedDNS({"images.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    verify = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=verify, trust_env=False) as client:
        opts: dict[str, Any] = {"client": client, "resolve": dns, "allow_private": True}
        ok = fetch_one(f"https://images.test:{port}/tls.png", tmp_path, **opts)
        assert ok.error is None and sni[-1] == "images.test"
        assert _Recorder.seen[-1] == ("/tls.png", f"images.test:{port}")
        bad = fetch_one(f"https://other.test:{port}/tls.png", tmp_path, retries=0, **opts)
    assert bad.path is None and "unreachable" in bad.error  # certificate is not for other.test
    assert sni[-1] == "other.test"  # and the handshake did present the requested name


def test_pinning_survives_the_old_check_host_hook(tmp_path: Path, monkeypatch) -> None:
    """check_host stays the single place that decides; a wrapper sees every hop."""
    seen: list[str] = []
    real = fetch_mod.check_host

    def spy(url: str, allow_private: bool, resolve: Any = fetch_mod.system_resolve) -> Any:
        seen.append(url)
        return real(url, allow_private, resolve)

    monkeypatch.setattr(fetch_mod, "check_host", spy)
    dns = ScriptedDNS({"a.test": [[PUBLIC]], "b.test": [["10.0.0.1"]]})
    log: list[httpx.Request] = []
    client = _recording({"a.test/r": _redirect("http://b.test/x.png")}, log)
    res = fetch_one("http://a.test/r", tmp_path, client=client, resolve=dns)
    assert seen == ["http://a.test/r", "http://b.test/x.png"] and "10.0.0.1" in res.error
