"""Dataset side of the probe: the k nearest index images to each country prompt, judged by NudeNet.

Writes RUN/knn/neighbours.parquet (every neighbour, its fetch outcome and verdict) and
RUN/results/dataset_nudity_rates.csv. Responses are cached per (back end, index, prompt, k), so a
re-run costs no queries; images are cached by URL hash. A neighbour that could not be fetched or
decoded is counted (k_returned - k_fetched) and never enters the rate's denominator silently.

Where a neighbour's pixels come from, first that works: the server's base64 `image` (decoded
with the same size cap and bomb checks as a download; stored by content hash, and dropped from
the cached answer so the cache stays small), a local index's `image_path`, then `url` through
the SSRF-safe fetcher. A server's `image_path` is a path on the server and is never read here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.classifiers.images import decode_image
from analysis.classifiers.rules import get_rule
from analysis.laion.backends import open_backend
from analysis.laion.fetch import MAX_BYTES, fetch_all
from analysis.probes.ethnic_bias import DEFAULT_TEMPLATE, probe_prompts
from analysis.stats import wilson_interval
from analysis.store import RunDir, atomic_write_bytes, atomic_write_parquet, atomic_write_text
from analysis.store.csvsafe import write_csv

RATE_COLUMNS = [
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
    "n_unreachable",
    "rule",
]
NSFW_COLUMNS = ("NSFW", "nsfw", "punsafe", "pwatermark")


def _cached_query(
    backend: Any, cache: Path, images: Path, prompt: str, k: int
) -> list[dict[str, Any]]:
    key = hashlib.sha256(json.dumps([backend.name, backend.indice_name, prompt, k]).encode())
    path = cache / f"{key.hexdigest()[:24]}.json"
    if path.is_file():  # an older cache may still hold base64: take it out the same way
        return [_take_inline(r, images) for r in json.loads(path.read_text())]
    rows = [_take_inline(r, images) for r in backend.query_text(prompt, k)]
    atomic_write_text(path, json.dumps(rows))
    return rows


def _take_inline(row: dict[str, Any], images: Path) -> dict[str, Any]:
    """Replace a row's base64 `image` by inline_path (a checked file) or inline_error."""
    if "image" not in row:
        return row
    row = dict(row)
    row["inline_path"], row["inline_error"] = save_inline(row.pop("image"), images)
    return row


def save_inline(
    encoded: Any, folder: Path, max_bytes: int = MAX_BYTES
) -> tuple[str | None, str | None]:
    """Decode a base64 image into folder/<sha256>.<ext> with the download's checks; never raises.

    The server is as untrusted as a URL: the size is capped before decoding, and the file must
    pass decode_image (format, truncation, decompression-bomb limits) or it is deleted.
    """
    if not isinstance(encoded, str) or not encoded:
        return None, "inline image: not a base64 string"
    if encoded.startswith("data:") and "," in encoded:  # tolerate a data: URL
        encoded = encoded.split(",", 1)[1]
    if len(encoded) > 4 * (max_bytes // 3 + 1) + 4:
        return None, f"inline image: too large: more than {max_bytes} bytes"
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None, "inline image: not valid base64"
    if not data or len(data) > max_bytes:
        return None, f"inline image: size {len(data)} bytes outside 1..{max_bytes}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:24]}{_suffix(data)}"
    if not path.is_file():
        atomic_write_bytes(path, data)
    decoded = decode_image(path)
    if decoded.error:
        path.unlink(missing_ok=True)
        return None, f"inline image: {decoded.error}"
    return str(path), None


def _suffix(data: bytes) -> str:
    """A file suffix from the magic bytes (the content, not the server, decides the format)."""
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:4] == b"GIF8":
        return ".gif"
    return ".jpg"


def _primary(row: Any, local_files: bool) -> tuple[str | None, str | None]:
    """The image the answer itself carries, or why it is unusable; (None, None) if none."""
    inline = getattr(row, "inline_path", None)
    if isinstance(inline, str):
        if Path(inline).is_file():
            return inline, None
        return None, "inline image: cached file is gone (delete knn/cache to re-query)"
    if isinstance(getattr(row, "inline_error", None), str):
        return None, row.inline_error
    if local_files and isinstance(row.image_path, str):
        if Path(row.image_path).is_file():
            return row.image_path, None
        return None, f"image_path not found: {row.image_path}"
    return None, None


def _resolve(
    url: Any, first: tuple[str | None, str | None], fetched: dict[str, Any]
) -> tuple[str | None, str | None]:
    """(path, None) of the image to judge, or (None, why not): the answer's own, else the url."""
    path, error = first
    if path is not None:
        return path, None
    if isinstance(url, str):
        res = fetched[url]
        if res.error is None:
            return res.path, None
        return None, f"{res.error} (after {error})" if error else res.error
    return None, error or "no image, no url and no local image_path (see columns_to_return)"


def knn_query(
    backend: str,
    out: str | Path,
    *,
    countries: list[str] | None = None,
    k: int = 100,
    indice_name: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    rule: str = "exposed-genitalia",
    allow_private: bool = False,
    clip_model: str | None = None,
    fetch_workers: int = 4,
) -> dict[str, Any]:
    """Query, fetch, judge and tabulate; returns paths and counts."""
    from analysis.classifiers.nudenet import NudeNetDetector

    run = RunDir(out)
    knn_dir = run.path / "knn"
    prompts = probe_prompts(countries, template)
    judge = get_rule(rule)
    be = open_backend(backend, indice_name, clip_model)
    rows: list[dict[str, Any]] = []
    for spec in prompts:  # query everything first: a back end failure keeps what is cached
        hits = _cached_query(be, knn_dir / "cache", knn_dir / "images", spec.prompt, k)
        for rank, hit in enumerate(hits):
            rows.append(
                {
                    "iso3": spec.group,
                    "prompt": spec.prompt,
                    "rank": rank,
                    "id": hit.get("id"),
                    "url": hit.get("url"),
                    "caption": hit.get("caption"),
                    "similarity": hit.get("similarity"),
                    "image_path": hit.get("image_path"),
                    "inline_path": hit.get("inline_path"),
                    "inline_error": hit.get("inline_error"),
                    **{c: hit.get(c) for c in NSFW_COLUMNS if c in hit},
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        raise_empty(be)
    primary = [_primary(row, be.local_files) for row in table.itertuples()]
    to_fetch = sorted(
        {
            u
            for u, (p, _) in zip(table["url"], primary, strict=True)
            if p is None and isinstance(u, str)
        }
    )
    fetched = {
        r.url: r
        for r in fetch_all(
            to_fetch, knn_dir / "images", allow_private=allow_private, workers=fetch_workers
        )
    }
    detector = NudeNetDetector()
    paths, errors, verdicts, raws = [], [], [], []
    for row, first in zip(table.itertuples(), primary, strict=True):
        path, error = _resolve(row.url, first, fetched)
        verdict = raw = None
        if path is not None:
            decoded = decode_image(Path(path))
            if decoded.error:
                error = decoded.error
            else:
                dets = detector.detect_one(decoded.image)
                raw, verdict = json.dumps(dets), judge.verdict(dets)
        paths.append(path)
        errors.append(error)
        verdicts.append(verdict)
        raws.append(raw)
    table["local_path"], table["error"] = paths, errors
    table["raw"], table["verdict"] = raws, pd.array(verdicts, dtype="boolean")
    table["rule"], table["index_name"] = judge.name, be.indice_name
    if table["verdict"].isna().all():
        raise_none_judged(table)
    atomic_write_parquet(table, knn_dir / "neighbours.parquet")
    rates = dataset_rates(table, k, prompts)
    path = run.results_dir / "dataset_nudity_rates.csv"
    write_csv(rates, path)
    atomic_write_text(
        knn_dir / "query.json",
        json.dumps(
            {
                "backend": be.name,
                "indice_name": be.indice_name,
                "k": k,
                "template": template,
                "rule": judge.name,
                "threshold": judge.threshold,
                "filters": "all server-side filters off",
                "image_sources": "local image_path, then url"
                if be.local_files
                else "server's base64 image, then url (server image_path never read)",
                "allow_private": allow_private,
                "nudenet": detector.provenance,
            },
            indent=2,
        ),
    )
    unjudged = rates.loc[rates["k_fetched"] == 0, "iso3"].tolist()
    return {
        "neighbours": str(knn_dir / "neighbours.parquet"),
        "rates": str(path),
        "returned": len(table),
        "fetched": int(table["verdict"].notna().sum()),
        "unreachable": int(table["verdict"].isna().sum()),
        **(
            {"no_rate": f"{len(unjudged)} countries, no neighbour judged: {', '.join(unjudged)}"}
            if unjudged
            else {}
        ),
    }


def raise_none_judged(table: pd.DataFrame) -> None:
    """Every neighbour was refused or unreadable: no rate exists, so nothing is tabulated or drawn
    (a table of NaN rates would reach the figures); the error gives the commonest reasons."""
    from analysis.errors import AuditError

    reasons = (
        table["error"].fillna("no image").map(lambda e: " ".join(str(e).split(":")[0].split()))
    )
    top = "; ".join(f"{n} {why}" for why, n in reasons.value_counts().head(3).items())
    hint = " (--allow-private for images on this machine's network)" if "refused" in top else ""
    raise AuditError(
        f"knn query: none of the {len(table)} neighbours could be judged ({top}): no dataset "
        f"rates written{hint}"
    )


def raise_empty(backend: Any) -> None:
    from analysis.errors import AuditError

    raise AuditError(f"the kNN back end {backend.name} returned no neighbours for any prompt")


def dataset_rates(table: pd.DataFrame, k: int, prompts: list) -> pd.DataFrame:
    """Per country: neighbours returned, judged, nude; Wilson interval over judged images."""
    from analysis.probes.countries import load_countries

    names = load_countries().set_index("iso3")["name"]
    out = []
    for spec in prompts:
        sub = table[table["iso3"] == spec.group]
        judged = sub["verdict"].dropna()
        n, nude = int(judged.size), int(judged.sum())
        low, high = wilson_interval(nude, n)
        out.append(
            {
                "country": names.get(spec.group, spec.group),
                "iso3": spec.group,
                "k_requested": k,
                "k_returned": len(sub),
                "k_fetched": n,
                "nude": nude,
                "rate": nude / n if n else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "index_name": sub["index_name"].iloc[0] if len(sub) else "",
                "n_unreachable": len(sub) - n,
                "rule": sub["rule"].iloc[0] if len(sub) else "",
            }
        )
    return pd.DataFrame(out, columns=RATE_COLUMNS)
