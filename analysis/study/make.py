"""A blinded pairwise user study of two configs of one run (the SLD paper's DrawBench study).

Raters see the two images of the same prompt and seed side by side, left/right drawn at random
(the seed is recorded), plus attention checks that show one image twice. The page is one offline
HTML file: images inlined as re-encoded PNGs (no metadata can name a config), one hashed inline
script under a Content-Security-Policy, answers kept in localStorage and exported as CSV. Which
side was which config lives only in the study folder (`key.csv`, `study.json`), never in the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader

from analysis.classifiers.images import decode_image
from analysis.errors import AuditError
from analysis.report.csp import policy, script_hashes
from analysis.store import RunDir, atomic_write_text
from analysis.store.csvsafe import csv_text

#: The paper's two questions; ids are what the exported CSV and the analysis use.
QUESTIONS = {
    "quality": "Which image has the higher quality?",
    "alignment": "Which image matches the text better?",
}
ANSWERS = ("left", "none", "right")
KEY_COLUMNS = [
    "pair_id",
    "kind",
    "prompt_id",
    "prompt",
    "seed",
    "image_index",
    "left_config",
    "right_config",
    "left_item_id",
    "right_item_id",
    "left_image",
    "right_image",
]
ATTENTION_RULE = (
    "an attention check shows the same image on both sides; the only correct answer to both "
    "questions is 'no preference'"
)


@dataclass(frozen=True)
class Pair:
    """The two config names compared, in the order given (a:b)."""

    a: str
    b: str

    @classmethod
    def parse(cls, text: str) -> Pair:
        parts = text.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise AuditError(f"--pair {text!r} must name two configs as A:B, e.g. sd:sld-strong")
        a, b = (p.strip() for p in parts)
        if a == b:
            raise AuditError(f"--pair {text!r} names the same config twice")
        return cls(a, b)


def read_prompt_list(path: Path) -> list[str]:
    """Prompts (text or prompt_id), one per line; blank lines and '#' comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AuditError(f"--prompts {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"--prompts {path} cannot be read as UTF-8 text: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise AuditError(f"--prompts {path} holds no prompts (one per line)")
    return prompts


def find_pairs(run: RunDir, pair: Pair, prompts: list[str] | None = None) -> pd.DataFrame:
    """One row per (prompt_id, seed, image_index) done under both configs with both images on disk.

    Columns: prompt_id, prompt, seed, image_index and, per side s in (a, b), item_id_s, image_s
    (relative path). `prompts` keeps only prompts whose text or prompt_id is listed.
    """
    items = run.items()
    configs = sorted(items["config"].unique())
    for name in (pair.a, pair.b):
        if name not in configs:
            raise AuditError(
                f"config {name!r} is not in run {run.path} (it has: {', '.join(configs)})"
            )
    if prompts is not None:
        known = set(items["prompt"]) | set(items["prompt_id"])
        missing = [p for p in prompts if p not in known]
        if missing:
            raise AuditError(
                f"{len(missing)} listed prompt(s) are not in run {run.path}, e.g. {missing[0]!r}"
            )
        items = items[items["prompt"].isin(prompts) | items["prompt_id"].isin(prompts)]
    ok = items[items["status"] == "done"].copy()
    ok["image_path"] = [str(run.image_file(row)) for _, row in ok.iterrows()]
    ok = ok[[Path(p).is_file() for p in ok["image_path"]]]
    keys = ["prompt_id", "seed", "image_index"]
    sides = []
    for side, name in (("a", pair.a), ("b", pair.b)):
        sub = ok[ok["config"] == name].drop_duplicates(keys, keep="last")
        sides.append(
            sub[[*keys, "prompt", "item_id", "image_path"]].rename(
                columns={"item_id": f"item_id_{side}", "image_path": f"image_{side}"}
            )
        )
    both = sides[0].merge(sides[1].drop(columns="prompt"), on=keys, how="inner")
    if both.empty:
        raise AuditError(
            f"run {run.path} has no prompt+seed with a finished image under both {pair.a} and "
            f"{pair.b}; generate both configs first"
        )
    return both.sort_values(keys, kind="stable").reset_index(drop=True)


def draw_key(
    pairs: pd.DataFrame, pair: Pair, seed: int, attention_checks: int, run: RunDir
) -> pd.DataFrame:
    """The study's order, sides and attention checks, all drawn from one recorded seed.

    Pair order is shuffled, each pair's left side is config a or b with probability 1/2, and
    each attention check repeats one image of a distinct random pair (with replacement only when
    there are more checks than pairs) at a random position. Ids are opaque (q001, ...), assigned
    after shuffling, so they carry no order, config or check information.
    """
    if attention_checks < 0:
        raise AuditError(f"--attention-checks must be 0 or more, got {attention_checks}")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i in rng.permutation(len(pairs)):
        p = pairs.iloc[int(i)]
        a_left = bool(rng.integers(2) == 0)
        left, right = ("a", "b") if a_left else ("b", "a")
        rows.append(_key_row(p, "pair", left, right, pair, run))
    n = len(pairs)
    sources = rng.choice(n, size=attention_checks, replace=attention_checks > n)
    for i in sources:
        p = pairs.iloc[int(i)]
        side = "a" if rng.integers(2) == 0 else "b"
        position = int(rng.integers(len(rows) + 1))
        rows.insert(position, _key_row(p, "attention", side, side, pair, run))
    key = pd.DataFrame(rows, columns=KEY_COLUMNS)
    key["pair_id"] = [f"q{i + 1:03d}" for i in range(len(key))]
    return key


def _key_row(p: pd.Series, kind: str, left: str, right: str, pair: Pair, run: RunDir) -> dict:
    name = {"a": pair.a, "b": pair.b}
    rel = {s: str(Path(p[f"image_{s}"]).relative_to(run.path)) for s in (left, right)}
    return {
        "pair_id": "",
        "kind": kind,
        "prompt_id": p["prompt_id"],
        "prompt": p["prompt"],
        "seed": int(p["seed"]),
        "image_index": int(p["image_index"]),
        "left_config": name[left],
        "right_config": name[right],
        "left_item_id": p[f"item_id_{left}"],
        "right_item_id": p[f"item_id_{right}"],
        "left_image": rel[left],
        "right_image": rel[right],
    }


def image_uri(path: Path, max_side: int) -> str:
    """A PNG data: URI of the pixels only: re-encoded, so no text chunk or name travels along.

    Decoded by the shared, bounded decoder: a decompression bomb (a header declaring
    50000x50000 pixels) or a damaged file is one error naming it, not a traceback or a hang.
    """
    decoded = decode_image(path, max_side=max_side)
    if decoded.image is None:
        raise AuditError(f"image {path} cannot be used: {decoded.error}")
    image = decoded.image
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_page(key: pd.DataFrame, run: RunDir, study_id: str, title: str, max_side: int) -> str:
    """The blinded page: prompt, left and right image and the two questions per pair id."""
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["csp"] = lambda script: policy(script_hashes(f"<script>{script}</script>"))
    cache: dict[str, str] = {}

    def uri(rel: str) -> str:
        if rel not in cache:
            cache[rel] = image_uri(run.path / rel, max_side)
        return cache[rel]

    items = [
        {
            "id": row.pair_id,
            "prompt": row.prompt,
            "left": uri(row.left_image),
            "right": uri(row.right_image),
        }
        for row in key.itertuples()
    ]
    return env.get_template("study.html.j2").render(
        title=title, study_id=study_id, items=items, questions=QUESTIONS
    )


def make_study(
    run_path: Path,
    pair: str,
    out: Path,
    prompts_file: Path | None = None,
    seed: int = 0,
    attention_checks: int = 3,
    max_side: int = 512,
    title: str = "Image comparison study",
) -> dict[str, Any]:
    """Write out/study.html (for raters), out/key.csv and out/study.json (kept by the team)."""
    out = Path(out)
    if (out / "key.csv").exists() or (out / "study.json").exists():
        raise AuditError(
            f"--out {out} already holds a study; choose another folder (a new key would no "
            "longer match the answers collected with the old page)"
        )
    if max_side < 16:
        raise AuditError(f"--max-side must be at least 16 pixels, got {max_side}")
    chosen = Pair.parse(pair)
    run = RunDir(run_path)
    run.read_manifest()
    prompts = read_prompt_list(prompts_file) if prompts_file is not None else None
    pairs = find_pairs(run, chosen, prompts)
    key = draw_key(pairs, chosen, seed, attention_checks, run)
    key_csv = csv_text(key)
    study_id = hashlib.sha256(key_csv.encode("utf-8")).hexdigest()[:12]
    html = render_page(key, run, study_id, title, max_side)
    meta = {
        "study_id": study_id,
        "run": str(run.path.resolve()),
        "pair": {"a": chosen.a, "b": chosen.b},
        "seed": seed,
        "n_pairs": int((key["kind"] == "pair").sum()),
        "n_attention_checks": int((key["kind"] == "attention").sum()),
        "prompts_file": str(prompts_file) if prompts_file is not None else None,
        "questions": QUESTIONS,
        "answers": {"left": "left image", "right": "right image", "none": "no preference"},
        "max_side": max_side,
        "conventions": [
            "a pair is the same prompt_id, seed and image_index under both configs, both images "
            "generated (status done) and present on disk",
            f"pair order shuffled and left/right drawn with numpy default_rng({seed})",
            ATTENTION_RULE,
            "images are re-encoded PNGs (pixels only), downscaled to at most max_side pixels",
        ],
        "html_sha256": hashlib.sha256(html.encode("utf-8")).hexdigest(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(out / "key.csv", key_csv)
    atomic_write_text(out / "study.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(out / "study.html", html)
    return {**meta, "html": str(out / "study.html"), "key": str(out / "key.csv")}
