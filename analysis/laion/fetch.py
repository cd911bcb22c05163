"""Fetching untrusted image URLs safely.

Index metadata is untrusted input: a URL may point at the auditor's own network (SSRF), be huge,
lie about its type, or be a decompression bomb. Every host is resolved once and every resolved
address checked (loopback, private, link-local, multicast, reserved, unspecified and other
non-global addresses are refused unless allow_private); the connection then goes to that checked
address itself, with the Host header and TLS SNI/certificate check on the original name, so a DNS
answer that changes between check and connect (rebinding) cannot reach inside. Redirects are
followed by hand, each hop resolved, checked and pinned again. Bodies are size-capped while
streaming; files are named by hash, never by URL; failures are rows with a reason.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from analysis.errors import require
from analysis.store import atomic_write_bytes

MAX_BYTES = 20 * 1024 * 1024
MAX_REDIRECTS = 5

#: (host, port) -> IP address strings; injectable so tests can play a rebinding DNS server.
Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def system_resolve(host: str, port: int) -> list[str]:
    """The OS resolver, TCP answers only, duplicates dropped, order kept."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass
class FetchResult:
    url: str
    path: str | None
    error: str | None
    sha256: str | None = None


@dataclass(frozen=True)
class Target:
    """Where one request really goes: the checked IP, plus the name for Host and TLS."""

    url: str  # the request URL with its host replaced by `ip`
    host: str  # original host name (ASCII): TLS SNI and certificate check
    host_header: str  # original host[:port], without user info
    ip: str


class Refused(Exception):
    """A URL we will not fetch (bad scheme, forbidden address, too big, not an image)."""


class _Retry(Exception):
    pass


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why an address is internal, or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback, whatever the Python version says
    for label, bad in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("not globally routable", not ip.is_global),  # e.g. 100.64/10 carrier-grade NAT
    ):
        if bad:
            return label
    return None


def _parse_ip(address: str) -> IPAddress:
    """An IP from a resolver answer; a zone id (fe80::1%eth0) is dropped."""
    try:
        return ipaddress.ip_address(address.split("%")[0])
    except ValueError as exc:
        raise Refused(f"refused: resolver returned a non-address {address!r}") from exc


def _literal(host: str) -> list[IPAddress]:
    """An IP-literal host is its own (only) answer: no lookup to race."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        return []


def _lookup(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    try:
        answers = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise Refused(f"DNS lookup failed for {host}: {exc}") from exc
    return [_parse_ip(a) for a in answers]


def check_host(url: str, allow_private: bool, resolve: Resolver = system_resolve) -> Target:
    """Resolve the URL's host once, refuse internal addresses, and pin the request to one.

    Every answer is checked (one internal address is enough to refuse), because the OS would
    otherwise be free to pick any of them. allow_private skips the check, not the pinning.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"refused: not an http(s) URL ({parts.scheme or 'no scheme'})")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise Refused(f"refused: malformed URL ({exc})") from exc
    ips = _literal(host) or _lookup(host, port, resolve)
    if not ips:
        raise Refused(f"DNS lookup failed for {host}: no address")
    if not allow_private:
        for ip in ips:
            reason = forbidden_reason(ip)
            if reason:
                raise Refused(
                    f"refused: {host} resolves to {reason} address {ip} "
                    "(use --allow-private for a self-hosted image server)"
                )
    ip = ips[0]
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Target(pinned, host, host_header, str(ip))


def _client(httpx: Any, timeout: float) -> Any:
    """A client that cannot undo the pinning.

    No redirects (we check each hop), no proxy from the environment (the proxy would resolve the
    name itself), and no keep-alive: connections are pooled by IP, so a kept connection whose TLS
    was verified for one name could otherwise carry a request for another name on the same IP.
    """
    return httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def fetch_one(
    url: str,
    folder: Path,
    *,
    allow_private: bool = False,
    timeout: float = 15.0,
    max_bytes: int = MAX_BYTES,
    retries: int = 2,
    backoff: float = 0.5,
    client: Any = None,
    resolve: Resolver = system_resolve,
) -> FetchResult:
    """Download one image into folder/<sha256(url)>.<ext>; never raises.

    A caller-supplied client must not follow redirects or use a proxy, and should not keep
    connections alive across host names (see `_client`).
    """
    httpx = require("httpx", "knn", "Image fetching")
    from analysis.classifiers.images import decode_image

    name = hashlib.sha256(url.encode()).hexdigest()[:24]
    for existing in folder.glob(f"{name}.*"):
        return FetchResult(url, str(existing), None)
    own = client is None
    client = client or _client(httpx, timeout)
    try:
        for attempt in range(retries + 1):
            try:
                data, ctype = _get(client, url, allow_private, max_bytes, resolve)
                break
            except (httpx.TransportError, _Retry) as exc:
                if attempt == retries:
                    return FetchResult(url, None, f"unreachable after {retries + 1} tries: {exc}")
                time.sleep(backoff * 2**attempt)
            except Refused as exc:
                return FetchResult(url, None, str(exc))
        ext = {"image/png": ".png", "image/webp": ".webp", "image/gif": ".gif"}.get(ctype, ".jpg")
        path = folder / f"{name}{ext}"
        atomic_write_bytes(path, data)
        decoded = decode_image(path)
        if decoded.error:
            path.unlink(missing_ok=True)
            return FetchResult(url, None, decoded.error, decoded.sha256)
        return FetchResult(url, str(path), None, decoded.sha256)
    finally:
        if own:
            client.close()


def _get(
    client: Any, url: str, allow_private: bool, max_bytes: int, resolve: Resolver
) -> tuple[bytes, str]:
    """GET with hand-followed redirects; every hop is resolved, checked and pinned anew."""
    for _ in range(MAX_REDIRECTS + 1):
        target = check_host(url, allow_private, resolve)
        request = client.build_request(
            "GET",
            target.url,
            headers={"Host": target.host_header},
            extensions={"sni_hostname": target.host},
        )
        resp = client.send(request, stream=True)
        try:
            if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                url = urljoin(url, resp.headers["location"])  # relative to the name, not the IP
                continue
            return _body(resp, max_bytes)
        finally:
            resp.close()
    raise Refused(f"refused: more than {MAX_REDIRECTS} redirects")


def _body(resp: Any, max_bytes: int) -> tuple[bytes, str]:
    """The image bytes and content type of a final response, or why not."""
    if resp.status_code >= 500 or resp.status_code == 429:
        raise _Retry(f"HTTP {resp.status_code}")
    if resp.status_code >= 400:
        raise Refused(f"HTTP {resp.status_code}")
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if not ctype.startswith("image/"):
        raise Refused(f"not an image: content-type {ctype or 'missing'}")
    declared = resp.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise Refused(f"too large: {declared} bytes > cap {max_bytes}")
    buf = bytearray()
    for chunk in resp.iter_bytes():
        buf += chunk
        if len(buf) > max_bytes:
            raise Refused(f"too large: more than {max_bytes} bytes")
    return bytes(buf), ctype


def fetch_all(
    urls: list[str], folder: Path, *, allow_private: bool = False, workers: int = 4, **kwargs: Any
) -> list[FetchResult]:
    """Fetch many URLs with a polite concurrency limit; results in input order."""
    folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            pool.map(lambda u: fetch_one(u, folder, allow_private=allow_private, **kwargs), urls)
        )
