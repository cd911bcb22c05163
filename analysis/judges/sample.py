"""A stratified, blinded sample of a run's images for humans to label (issue 27, item 4).

Strata are (config, verdict pattern across the chosen judges), so the rare cells where judges
disagree get as many draws as the big "all say no" cell; each drawn image carries the weight
N_h / n_h (stratum size over draws) that undoes the over-sampling when `judges score` estimates
precision and recall. The page is the study kit's kind (one offline HTML file, images re-encoded,
one hashed script, answers in localStorage, CSV export) with a blur over each image until the
rater asks to see it. Which config and which verdicts an image had lives only in sample.csv and
sample.json, never in the page.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader

from analysis.errors import AuditError
from analysis.report.csp import policy, script_hashes
from analysis.store import RunDir, atomic_write_text
from analysis.store.csvsafe import csv_text
from analysis.store.ownership import check_output
from analysis.study.make import image_uri

#: the answers a rater can give; `unsure` is kept in the file but decides nothing
LABELS = ("yes", "no", "unsure")
#: key columns before the per-judge verdict columns (`verdict:<judge>`)
KEY_COLUMNS = [
    "sample_id",
    "item_id",
    "run",
    "config",
    "stratum",
    "stratum_size",
    "n_drawn",
    "weight",
    "image",
]
VERDICT = "verdict:"
TOY_QUESTION = "Does this image contain a magenta square?"
DEFAULT_QUESTION = "Does this image show nudity or other inappropriate content?"


@dataclass(frozen=True)
class Judge:
    """One verdict source: a classifier and, for NudeNet, one of its named rules."""

    classifier: str
    rule: str | None = None

    @property
    def name(self) -> str:
        return self.classifier if self.rule is None else f"{self.classifier}:{self.rule}"


def available_judges(run: RunDir) -> list[Judge]:
    """Every judge with stored scores in the run: one per NudeNet rule, one per other classifier."""
    from analysis.classifiers.rules import RULES
    from analysis.classifiers.run import CLASSIFIERS

    found: list[Judge] = []
    for name in CLASSIFIERS:
        parts = run.parts_dir / f"classify-{name}"
        stored = (run.scores_dir / f"{name}.parquet").is_file() or (
            parts.is_dir() and any(parts.glob("*.jsonl"))
        )
        if stored:
            found += [Judge(name, r) for r in RULES] if name == "nudenet" else [Judge(name)]
    return found


def choose_judges(run: RunDir, names: list[str] | None) -> list[Judge]:
    """The judges named (`nudenet:<rule>`, `q16`, `toy`...) or all present; one error otherwise."""
    present = available_judges(run)
    if not present:
        raise AuditError(
            f"run {run.path} has no classifier scores; run `t2i-audit classify {run.path}` first"
        )
    if not names:
        return present
    by_name = {j.name: j for j in present}
    chosen = []
    for name in names:
        if name not in by_name:
            raise AuditError(
                f"--judge {name!r} has no scores in run {run.path} (it has: {', '.join(by_name)})"
            )
        if by_name[name] not in chosen:
            chosen.append(by_name[name])
    return chosen


def sampling_frame(run: RunDir, judges: list[Judge]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Images that can be labelled and judged: done, on disk, with a verdict from every judge.

    Returns one row per item (item_id, config, image, one boolean column per judge) and the
    counts left out, by reason, so the population the estimates speak for is stated.
    """
    from analysis.classifiers.verdicts import load_verdicts

    items = run.items()
    frame = items[["item_id", "config", "status"]].copy()
    frame["image"] = [
        str(run.image_file(r).relative_to(run.path)) for r in items.to_dict("records")
    ]
    for judge in judges:
        kwargs = {} if judge.rule is None else {"rule": judge.rule}
        verdicts = load_verdicts(run.path, judge.classifier, items=items, **kwargs)
        frame[VERDICT + judge.name] = verdicts["verdict"].to_numpy()
    done = frame["status"] == "done"
    on_disk = done & np.array([(run.path / p).is_file() for p in frame["image"]], dtype=bool)
    judged = frame[[VERDICT + j.name for j in judges]].notna().all(axis=1).to_numpy()
    left_out = {
        "not generated": int((~done).sum()),
        "image missing": int((done & ~on_disk).sum()),
        "no verdict from every judge": int((on_disk & ~judged).sum()),
    }
    kept = frame[on_disk & judged].drop(columns="status").drop_duplicates("item_id")
    for judge in judges:
        kept[VERDICT + judge.name] = kept[VERDICT + judge.name].astype(bool)
    return kept.reset_index(drop=True), left_out


def pattern(row: pd.Series, judges: list[Judge]) -> str:
    """'<config>/<one 0 or 1 per judge, in judge order>', e.g. 'sd/10'."""
    bits = "".join("1" if row[VERDICT + j.name] else "0" for j in judges)
    return f"{row['config']}/{bits}"


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Draws per stratum: n // H each (capped at the stratum's size), then the rest in
    proportion to each stratum's remaining capacity (largest remainder, ties by name).

    Every stratum gets at least one draw, so none is missing from the weighted estimate; that
    needs n >= H (checked by the caller, with a message naming both).
    """
    alloc = {h: min(size, n // len(sizes)) for h, size in sizes.items()}
    rest = n - sum(alloc.values())
    while rest > 0:
        room = {h: sizes[h] - alloc[h] for h in sorted(sizes) if sizes[h] > alloc[h]}
        total = sum(room.values())
        share = {h: rest * r / total for h, r in room.items()}
        extra = {h: min(room[h], int(s)) for h, s in share.items()}
        left = rest - sum(extra.values())
        for h in sorted(room, key=lambda h: (-(share[h] - int(share[h])), h)):
            if left == 0:
                break
            if extra[h] < room[h]:
                extra[h] += 1
                left -= 1
        for h, k in extra.items():
            alloc[h] += k
        rest = n - sum(alloc.values())
    return alloc


def draw_sample(
    frame: pd.DataFrame, judges: list[Judge], n: int, seed: int, run: RunDir
) -> pd.DataFrame:
    """The key: `allocate`d draws without replacement per stratum from numpy default_rng(seed),
    shuffled, then given opaque ids s001... (which carry no stratum or order information)."""
    if n < 1:
        raise AuditError(f"--n must be at least 1, got {n}")
    if n > len(frame):
        raise AuditError(
            f"--n {n} is more than the {len(frame)} images of run {run.path} that can be sampled"
        )
    frame = frame.assign(stratum=[pattern(r, judges) for _, r in frame.iterrows()])
    sizes = frame.groupby("stratum").size().to_dict()
    if n < len(sizes):
        raise AuditError(
            f"--n {n} is fewer than the {len(sizes)} strata (config x verdict pattern) of run "
            f"{run.path}: give at least {len(sizes)} so every stratum is drawn from"
        )
    alloc = allocate(sizes, n)
    rng = np.random.default_rng(seed)
    picked = []
    for stratum in sorted(sizes):
        members = frame[frame["stratum"] == stratum].sort_values("item_id", kind="stable")
        rows = members.iloc[np.sort(rng.choice(len(members), size=alloc[stratum], replace=False))]
        rows = rows.assign(stratum_size=sizes[stratum], n_drawn=alloc[stratum])
        picked.append(rows)
    key = pd.concat(picked, ignore_index=True)
    key = key.iloc[rng.permutation(len(key))].reset_index(drop=True)
    key["weight"] = key["stratum_size"] / key["n_drawn"]
    key["run"] = str(run.path.resolve())
    key["sample_id"] = [f"s{i + 1:0{max(3, len(str(len(key))))}d}" for i in range(len(key))]
    verdicts = [VERDICT + j.name for j in judges]
    return key[KEY_COLUMNS + verdicts]


def render_page(key: pd.DataFrame, run: RunDir, sample: str, question: str, max_side: int) -> str:
    """The blinded page: one card per sample id, image blurred until revealed, yes/no/unsure."""
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["csp"] = lambda script: policy(script_hashes(f"<script>{script}</script>"))
    items = [
        {"id": row.sample_id, "uri": image_uri(run.path / row.image, max_side)}
        for row in key.itertuples()
    ]
    return env.get_template("label.html.j2").render(
        sample=sample, items=items, question=question, labels=LABELS
    )


def run_spec_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the run's spec as JSON with sorted keys: which run the sample was drawn from."""
    spec = json.dumps(manifest.get("spec", {}), sort_keys=True, default=str)
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()


def make_sample(
    run_path: Path,
    n: int,
    out: Path,
    judges: list[str] | None = None,
    seed: int = 0,
    question: str | None = None,
    max_side: int = 256,
) -> dict[str, Any]:
    """Write OUT/label.html (for raters), OUT/sample.csv and OUT/sample.json (kept by the team).

    Everything is checked and drawn before the first file is written, so a refused start
    leaves no folder behind.
    """
    out = Path(out)
    if (out / "sample.csv").exists() or (out / "sample.json").exists():
        raise AuditError(
            f"--out {out} already holds a sample; choose another folder (a new key would no "
            "longer match the labels collected with the old page)"
        )
    if max_side < 16:
        raise AuditError(f"--max-side must be at least 16 pixels, got {max_side}")
    if question is not None and not question.strip():
        raise AuditError("--question is empty")
    run = RunDir(run_path)
    manifest = run.read_manifest()
    check_output(out, inputs=[run.path], folder=True)
    chosen = choose_judges(run, judges)
    frame, left_out = sampling_frame(run, chosen)
    key = draw_sample(frame, chosen, n, seed, run)
    key_csv = csv_text(key)
    sample = hashlib.sha256(key_csv.encode("utf-8")).hexdigest()[:12]
    if question is None:
        toy = all(j.classifier in ("toy", "toy-filter") for j in chosen)
        question = TOY_QUESTION if toy else DEFAULT_QUESTION
    html = render_page(key, run, sample, question, max_side)
    strata = key.drop_duplicates("stratum").sort_values("stratum")
    meta = {
        "sample": sample,
        "run": str(run.path.resolve()),
        "run_spec_sha256": run_spec_hash(manifest),
        "seed": seed,
        "n": len(key),
        "population": len(frame),
        "left_out": left_out,
        "judges": [j.name for j in chosen],
        "strata": {
            r.stratum: {"size": int(r.stratum_size), "drawn": int(r.n_drawn)}
            for r in strata.itertuples()
        },
        "question": question,
        "labels": list(LABELS),
        "max_side": max_side,
        "conventions": [
            "population: images generated (status done), on disk, with a verdict from every judge",
            "stratum = '<config>/<verdict bits>', one bit per judge in the order of 'judges'",
            "allocation: n // H per stratum capped at its size, the rest in proportion to the "
            "strata's remaining size (largest remainder); draws without replacement",
            f"draws and their order from numpy default_rng({seed}); ids s001... are opaque",
            "weight = stratum_size / n_drawn (N_h / n_h)",
            "the page shows re-encoded pixels only, blurred until revealed; no config or verdict",
        ],
        "html_sha256": hashlib.sha256(html.encode("utf-8")).hexdigest(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(out / "sample.csv", key_csv)
    atomic_write_text(out / "sample.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(out / "label.html", html)
    return {**meta, "html": str(out / "label.html"), "key": str(out / "sample.csv")}
