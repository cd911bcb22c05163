"""The classify stage: score every image of a run (or any folder of images) into scores/*.parquet.

Decoding runs in a thread pool ahead of inference (PIL and cv2 release the GIL, so both cores
work); rows are appended durably per batch, so a crash loses at most the batch in flight, and a
re-run skips every (item, classifier, model hash) already scored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.classifiers.images import Decoded, decode_image, list_image_files
from analysis.classifiers.registry import Judge, JudgeOptions, get_judge, judge_names
from analysis.errors import AuditError
from analysis.store import (
    PartWriter,
    RunDir,
    Shard,
    atomic_write_parquet,
    atomic_write_text,
    read_parts,
)
from analysis.store.atomic import read_parquet
from analysis.store.ownership import check_output, hold_shard
from analysis.store.parts import part_sizes, retire_parts
from analysis.store.progress import Progress
from analysis.store.provenance import environment_info

CLASSIFIERS = judge_names()
SCORE_COLUMNS = [
    "item_id",
    "classifier",
    "model",
    "model_sha256",
    "image_sha256",
    "raw",
    "rule",
    "threshold",
    "verdict",
    "error",
]
DEFAULT_RULE = "exposed-genitalia"


def folder_items(folder: Path) -> pd.DataFrame:
    """Items for a plain folder of images: item_id is a hash of the relative path."""
    rows = []
    for path in list_image_files(folder):
        rel = str(path.relative_to(folder))
        rows.append(
            {
                "item_id": hashlib.sha256(rel.encode()).hexdigest()[:20],
                "prompt_id": "",
                "prompt": "",
                "group": str(Path(rel).parent) if Path(rel).parent != Path(".") else "",
                "config": "",
                "seed": -1,
                "image_index": -1,
                "status": "done",
                "image_path": rel,
                "error": None,
            }
        )
    if not rows:
        raise AuditError(f"{folder} holds no image files to classify")
    return pd.DataFrame(rows)


def _target(source: Path, out: Path | None) -> tuple[RunDir, pd.DataFrame, Path]:
    """(where scores go, items to score, folder the image paths are relative to).

    A folder with any run file (plan, parts, scores) is a run, even when its manifest is missing
    or damaged: it is never re-listed as a plain folder (that would replace its plan). Scores of a
    plain folder go to the folder itself or to a new --out, never into another run.
    """
    source = Path(source)
    if not source.is_dir():
        raise AuditError(f"{source} is not a folder: give a run directory or a folder of images")
    run = RunDir(source)
    manifest = run.read_manifest() if run.looks_like_run() else {}
    if manifest and manifest.get("kind") != "image-folder":
        if out is not None and Path(out).resolve() != source.resolve():
            raise AuditError("--out is only for plain image folders; a run keeps its scores inside")
        items = run.items()
        return run, items[items["status"] == "done"], source
    # A plain folder: list it afresh (new files get scored) and record the list as items.
    root = Path(manifest.get("images_root", source))
    target = RunDir(out or source)
    if out is not None and Path(out).resolve() != source.resolve():
        check_output(Path(out), inputs=[source], folder=True, may_be_run=True)
        if target.looks_like_run():
            theirs = target.read_manifest()
            if (
                theirs.get("kind") != "image-folder"
                or Path(theirs.get("images_root", "")) != Path(root).resolve()
            ):
                what = theirs.get("kind", "a run")
                raise AuditError(
                    f"--out {out} already holds another run ({what}); its files are kept: "
                    f"choose a new --out for the scores of {source}"
                )
    items = folder_items(root)
    atomic_write_parquet(items, target.items_path)
    if not target.exists():
        target.write_manifest(
            {"kind": "image-folder", "images_root": str(root.resolve()), **environment_info()}
        )
    return target, items, root


def scored_keys(run: RunDir, classifier: str) -> set[tuple[str, str]]:
    """(item_id, model_sha256) pairs already scored: consolidated table plus parts."""
    table = read_scores(run, classifier)
    if table.empty:
        return set()
    return set(zip(table["item_id"], table["model_sha256"], strict=True))


def read_scores(run: RunDir, classifier: str) -> pd.DataFrame:
    """All score rows of a classifier, consolidated + parts, latest row per (item, model)."""
    frames = []
    path = run.scores_dir / f"{classifier}.parquet"
    if path.is_file():
        frames.append(read_parquet(path))
    parts = read_parts(run, f"classify-{classifier}")
    if not parts.empty:
        frames.append(parts.reindex(columns=SCORE_COLUMNS))
    if not frames:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    return table.drop_duplicates(["item_id", "model_sha256"], keep="last").reset_index(drop=True)


def consolidate_scores(run: Path | RunDir, compact: bool = False) -> dict[str, int]:
    """Write scores/<classifier>.parquet from all shards' parts; returns row counts.

    compact=True retires the part files the tables now cover (see store.parts.retire_parts).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    counts = {}
    for name in CLASSIFIERS:
        covered = part_sizes(run, f"classify-{name}")
        path = run.scores_dir / f"{name}.parquet"
        if not covered:  # no parts: the table on disk (if any) is already complete
            if path.is_file():
                import pyarrow.parquet as pq

                counts[name] = pq.read_metadata(path).num_rows
            continue
        table = read_scores(run, name)
        if not table.empty:
            atomic_write_parquet(table[SCORE_COLUMNS], path)
            counts[name] = len(table)
            if compact:
                retire_parts(run, f"classify-{name}", covered)
    return counts


def _decoded_stream(
    paths: list[Path], prepare: Any, workers: int, ahead: int
) -> Iterator[tuple[Decoded, Any]]:
    """Decode (and prepare) images in worker threads, yielding them in order, `ahead` in flight."""

    def work(path: Path) -> tuple[Decoded, Any]:
        decoded = decode_image(path)
        if decoded.image is None or prepare is None:
            return decoded, None
        try:
            return decoded, prepare(decoded.image)
        except Exception as exc:  # any failure is this image's error row
            return Decoded(None, f"preprocessing failed: {exc}", decoded.sha256), None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = []
        for path in paths:
            futures.append(pool.submit(work, path))
            if len(futures) > ahead:
                yield futures.pop(0).result()
        for fut in futures:
            yield fut.result()


def classify_run(
    source: str | Path,
    classifiers: tuple[str, ...] | list[str] = ("nudenet",),
    *,
    rule: str | None = None,
    threshold: float | None = None,
    shard: Shard | None = None,
    out: str | Path | None = None,
    nudenet_model: str | Path | None = None,
    clip_model: str | None = None,
    safety_checker_model: str | None = None,
    judge_models: dict[str, str] | None = None,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
    every_shard: bool = False,
) -> dict[str, Any]:
    """Score every done image of a run (or a plain folder) with each classifier; resumable.

    Each shard scores its share of the images done *now*; re-running (or `every_shard=True`,
    which the last shard of a probe uses) scores whatever other shards finished since.
    """
    shard = shard or Shard()
    judges = [get_judge(c) for c in classifiers]  # an unknown name fails here, listing them
    if batch_size < 1:
        raise AuditError(f"--batch-size must be at least 1, got {batch_size}")
    if threshold is not None and not any(j.takes_classify_rule for j in judges):
        raise AuditError(
            f"--threshold {threshold} sets NudeNet's cut at scoring time; "
            f"{', '.join(j.name for j in judges)} score under their own rule (other cuts are "
            "re-derived later from the stored raw outputs: `t2i-audit judges`)"
        )
    cuts = {j.name: _cut(j, rule, threshold) for j in judges}  # checked before any work
    if nudenet_model is not None and not Path(nudenet_model).is_file():
        raise AuditError(f"--nudenet-model {nudenet_model} does not exist")
    options = JudgeOptions(
        str(nudenet_model) if nudenet_model else None,
        clip_model,
        safety_checker_model,
        workers,
        models=dict(judge_models or {}),
    )
    for name in options.models:  # each named model belongs to a judge being run
        if name not in classifiers:
            get_judge(name)  # an unknown name fails here, listing the judges
            raise AuditError(f"--judge-model {name}=...: {name} is not a --classifier of this run")
    for judge in judges:  # a missing or wrong model fails before any file is written
        judge.preflight(options)
    run, items, base = _target(Path(source), Path(out) if out else None)
    mine = items.reset_index(drop=True) if every_shard else shard.take(items.reset_index(drop=True))
    summary: dict[str, Any] = {"source": str(source), "shard": shard.name, "images": len(mine)}
    with hold_shard(run.path, shard.name):
        _classify_each(
            run, mine, base, judges, cuts, options, summary, shard, batch_size, workers, progress
        )
        if shard.count == 1 or _all_shards_done(run, items, classifiers):
            consolidate_scores(run)  # reads nothing when no classifier has parts
    return summary


def _cut(judge: type[Judge], rule: str | None, threshold: float | None) -> tuple[str, Any]:
    """(rule, threshold) a judge scores under: `--rule/--threshold` for a judge that takes them
    (NudeNet), else the judge's own rule and cut."""
    if judge.takes_classify_rule:
        name = judge.resolve_rule(rule or DEFAULT_RULE)
        return name, judge.check_threshold(threshold, name)
    return judge.rule, None


def _classify_each(
    run: RunDir,
    mine: pd.DataFrame,
    base: Path,
    judges: list[type[Judge]],
    cuts: dict[str, tuple[str, Any]],
    options: JudgeOptions,
    summary: dict[str, Any],
    shard: Shard,
    batch_size: int,
    workers: int,
    progress: bool,
) -> None:
    """Score this shard's images with each judge (the run's shard lock is held)."""
    for judge_class in judges:
        name = judge_class.name
        judge = judge_class(options)
        rule, threshold = cuts[name]
        done = scored_keys(run, name)
        todo = mine[[(i, judge.sha256) not in done for i in mine["item_id"]]]
        writer = PartWriter(run, f"classify-{name}", shard)
        _write_meta(run, judge, rule, threshold)
        started = time.perf_counter()
        counts = _score(judge, todo, base, writer, rule, threshold, batch_size, workers, progress)
        counts["seconds"] = round(time.perf_counter() - started, 3)
        counts["already_scored"] = len(mine) - len(todo)
        summary[name] = counts


def _recorded(judge: Judge, rule: str, threshold: float | None) -> dict[str, Any]:
    """The rule, cut and comparison stored with a judge's scores."""
    takes = judge.takes_classify_rule
    return {
        "comparison": judge.comparison_of(rule) if takes else None,
        "rule": rule,
        "threshold": threshold if takes else judge.threshold,  # the toy detector's fixed cut
    }


def _write_meta(run: RunDir, judge: Judge, rule: str, threshold: float | None) -> None:
    """scores/<classifier>.json: the model, rule and threshold behind every verdict."""
    meta = {**judge.provenance, **_recorded(judge, rule, threshold)}
    path = run.scores_dir / f"{judge.name}.json"
    try:  # the same recipe again: the record stays as written (a finished file is not churned)
        old = json.loads(path.read_text(encoding="utf-8"))
        if {k: old.get(k) for k in meta} == json.loads(json.dumps(meta)):
            return
    except (OSError, ValueError):
        pass
    meta.update(environment_info())
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")


class BatchClassifier:
    """Scores a run's new images batch by batch while generation goes on.

    Pass it as `run_generation(..., after_batch=BatchClassifier(out, "nudenet", rule=...))`: it
    runs on the runner's saver thread while the next batch samples, and writes the same part
    rows `classify_run` would, so a later `classify_run` finds them scored and skips them. The
    detector loads on the first batch (after the runner has claimed the folder).
    """

    def __init__(
        self,
        run: str | Path,
        name: str = "nudenet",
        *,
        rule: str | None = None,
        threshold: float | None = None,
        shard: Shard | None = None,
        nudenet_model: str | Path | None = None,
        workers: int = 2,
    ) -> None:
        self.judge_class = get_judge(name)
        self.run, self.name = RunDir(run), name
        self.rule, self.threshold = _cut(self.judge_class, rule, threshold)
        self.shard, self.workers = shard or Shard(), workers
        self.nudenet_model = Path(nudenet_model) if nudenet_model else None
        self._model: Any = None
        self._writer: PartWriter | None = None
        self.counts = {"scored": 0, "errors": 0, "flagged": 0}

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        todo = pd.DataFrame(
            [
                {"item_id": r["item_id"], "image_path": r["image_path"]}
                for r in rows
                if r["status"] == "done"
            ]
        )
        if todo.empty:
            return
        if self._model is None:
            nudenet = str(self.nudenet_model) if self.nudenet_model else None
            self._model = self.judge_class(JudgeOptions(nudenet, threads=self.workers))
            self._writer = PartWriter(self.run, f"classify-{self.name}", self.shard)
            _write_meta(self.run, self._model, self.rule, self.threshold)
        assert self._writer is not None
        counts = _score(
            self._model,
            todo,
            self.run.path,
            self._writer,
            self.rule,
            self.threshold,
            len(todo),
            self.workers,
            False,
        )
        for key in self.counts:
            self.counts[key] += counts[key]


def _all_shards_done(run: RunDir, items: pd.DataFrame, classifiers: Any) -> bool:
    return all(set(items["item_id"]) <= set(read_scores(run, n)["item_id"]) for n in classifiers)


def _score(
    judge: Judge,
    todo: pd.DataFrame,
    base: Path,
    writer: PartWriter,
    rule: str,
    threshold: float | None,
    batch_size: int,
    workers: int,
    progress: bool,
) -> dict[str, int]:
    counts = {"scored": 0, "errors": 0, "flagged": 0}
    paths = [base / p for p in todo["image_path"]]
    # NudeNet: worker threads decode and detect (own sessions); others batch in this thread.
    prepare = judge.prepare if judge.prepares_in_workers else None
    pending: list[tuple[dict, Any]] = []

    def flush() -> None:
        if not pending:
            return
        ok = [(row, x) for row, x in pending if row["error"] is None]
        if ok:
            judged = judge.score([x for _, x in ok], rule, threshold)
            for (row, _), (raw, verdict) in zip(ok, judged, strict=True):
                row["raw"] = json.dumps(raw)
                if verdict is None:  # e.g. a VLM answer that does not parse: a failure, not safe
                    row["error"] = judge.failure(raw)
                else:
                    row["verdict"] = bool(verdict)
        rows = [row for row, _ in pending]
        writer.append(rows)
        counts["scored"] += sum(r["error"] is None for r in rows)
        counts["errors"] += sum(r["error"] is not None for r in rows)
        counts["flagged"] += sum(bool(r["verdict"]) for r in rows)
        advance(len(rows))
        pending.clear()

    # Per-row constants computed once: this loop runs on the main thread beside the workers.
    recorded = _recorded(judge, rule, threshold)
    fixed = {
        "classifier": judge.name,
        "model": judge.provenance["model"],
        "model_sha256": judge.sha256,
        "rule": recorded["rule"],
        "threshold": recorded["threshold"],
    }
    with Progress(progress, len(todo), f"classify {judge.name}") as advance:
        stream = _decoded_stream(paths, prepare, workers, ahead=2 * batch_size)
        for item_id, (decoded, prepared) in zip(todo["item_id"], stream, strict=True):
            row = {
                "item_id": item_id,
                **fixed,
                "image_sha256": decoded.sha256,
                "raw": None,
                "verdict": None,
                "error": decoded.error,
            }
            pending.append((row, prepared if prepare is not None else decoded.image))
            if len(pending) >= batch_size:
                flush()
        flush()
    return counts
