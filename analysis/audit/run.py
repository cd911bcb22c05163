"""Run an audit file: every model x part into <out>/<model>/<part>, then one report.

Each part is the library call its own command makes, so a re-run resumes and a file that gained
a model or config only does the new work (the engine extends runs with more configs or prompts).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from analysis.audit.plan import part_folder
from analysis.audit.spec import AuditSpec, ModelEntry
from analysis.errors import AuditError

SPEC_COPY = "audit.toml"
RECORD = "audit.json"


def output_dir(audit: AuditSpec, out: Path | None) -> Path:
    """--out, else the file's `out` key (relative to the current folder, like --out)."""
    if out is not None:
        return Path(out)
    if audit.out:
        return Path(audit.out)
    raise AuditError(f'{audit.path}: no output folder: pass --out DIR or add `out = "DIR"`')


def record_spec(audit: AuditSpec, out: Path) -> dict[str, Any]:
    """Copy the file into `out` as audit.toml and record its sha256 (and earlier ones) in
    audit.json, so the output says which declaration produced it."""
    from analysis.store import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(audit.text.encode("utf-8")).hexdigest()
    path = out / RECORD
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        old = {}
    history = [h for h in old.get("history", []) if isinstance(h, dict)]
    current = {"sha256": sha, "overrides": audit.overrides}
    if not history or {k: history[-1].get(k) for k in current} != current:
        history.append({**current, "at": _now(), "source": str(audit.path)})
    record = {
        "kind": "t2i-audit-audit",
        "spec_file": SPEC_COPY,
        "spec_sha256": sha,
        "source": str(audit.path),
        "overrides": audit.overrides,
        "models": {m.name: m.model for m in audit.models},
        "runs": [
            str(part_folder(Path("."), m, p)) for m in audit.models for p in _gen_parts(audit)
        ],
        "history": history,
    }
    atomic_write_text(out / SPEC_COPY, audit.text)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def run_audit(audit: AuditSpec, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Run every model x part, then the guardrail table and the report; returns
    {'parts': [...], 'report': path or None, 'guardrails': folder, or why it is missing}."""
    from analysis.store import resolve_shard

    shard = resolve_shard(None)
    preflight(audit, out)
    before = _snapshot(out)
    unchanged = _same_effect(audit, out)
    record = _read_record(out) if unchanged else record_spec(audit, out)
    try:
        parts = _run_parts(audit, out, shard, progress)
    except BaseException:
        _rollback(out, before)  # a failed start leaves nothing behind (finished work stays)
        raise
    last = record.get("last_run") or {}
    finished = last and (not audit.report.enabled or Path(str(last.get("report"))).is_file())
    if unchanged and finished and not any(p["generated"] for p in parts):
        # the same finished audit (at most the device differs): nothing is rewritten
        return {"parts": parts, "report": last.get("report"), "guardrails": last.get("guardrails")}
    guardrails: str | None = None
    if shard.index == 0:
        try:
            guardrails = str(guardrail_table(audit, out))
        except AuditError as exc:  # e.g. a part still unclassified: the runs stay usable
            guardrails = f"not written: {exc}"
    report = write_audit_report(audit, out) if audit.report.enabled and shard.index == 0 else None
    record["last_run"] = {
        "at": _now(),
        "shard": shard.name,
        "parts": [{k: v for k, v in p.items() if k != "summary"} for p in parts],
        "report": str(report) if report else None,
        "guardrails": guardrails,
    }
    from analysis.store import atomic_write_text

    atomic_write_text(out / RECORD, json.dumps(record, indent=2) + "\n")
    return {"parts": parts, "report": report, "guardrails": guardrails}


def _run_parts(audit: AuditSpec, out: Path, shard: Any, progress: bool) -> list[dict[str, Any]]:
    """Every model x part, each through its own command's library call (each resumes)."""
    parts = []
    for entry in audit.models:
        for part in audit.parts():
            folder = part_folder(out, entry, part)
            if part == "probe":
                summary = _probe(audit, entry, folder, shard, progress)
                gen = summary["generate"]
            elif part == "i2p":
                summary = _i2p(audit, entry, folder, shard, progress)
                gen = summary["generation"]
            else:
                summary = _knn(audit, folder)
                gen = {}
            parts.append(
                {
                    "model": entry.name,
                    "part": part,
                    "folder": str(folder),
                    "generated": int(gen.get("generated", 0)),
                    "done": int(gen.get("done_total", 0)),
                    "planned": int(gen.get("planned", 0)),
                    "complete": bool(gen.get("complete", True)),
                    "summary": summary,
                }
            )
    return parts


#: what may change between runs of one audit without changing any image or number
NO_EFFECT = {("sampler", "device")}


def _same_effect(audit: AuditSpec, out: Path) -> bool:
    """True when OUT already records this audit, differing at most in NO_EFFECT keys."""
    from analysis.audit.spec import load_audit

    copy = out / SPEC_COPY
    if not copy.is_file():
        return False
    try:
        old = load_audit(copy, _read_record(out).get("overrides") or {})
    except AuditError:
        return False
    mine, theirs = audit.model_dump(), old.model_dump()
    for dump in (mine, theirs):
        dump.pop("out", None)
        for table, key in NO_EFFECT:
            (dump.get(table) or {}).pop(key, None)
    return mine == theirs


def _read_record(out: Path) -> dict[str, Any]:
    try:
        record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _snapshot(out: Path) -> dict[str, Any]:
    """What a failed start must restore: whether OUT existed, and its two audit files' bytes."""
    files = {}
    for name in (SPEC_COPY, RECORD):
        path = out / name
        files[name] = path.read_bytes() if path.is_file() else None
    return {"existed": out.exists(), "files": files}


def _rollback(out: Path, before: dict[str, Any]) -> None:
    """Undo record_spec when the run fails before any part folder holds work."""
    from analysis.store import RunDir, atomic_write_bytes

    if any(RunDir(p).looks_like_run() for p in out.glob("*/*")):
        return  # work was done: the record describes it
    for name, data in before["files"].items():
        path = out / name
        if data is None:
            path.unlink(missing_ok=True)
        elif not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
    if not before["existed"]:
        for folder in sorted(out.rglob("*"), key=lambda p: -len(p.parts)):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def preflight(audit: AuditSpec, out: Path) -> None:
    """Fail before any generation when a later part could not start (a missing unet file, an
    output folder holding another run, Q16's CLIP not on disk): a typo costs no GPU time."""
    from analysis.audit.plan import plan_audit
    from analysis.generation.devices import check_device
    from analysis.store.ownership import check_output

    check_output(out, inputs=[audit.path], folder=True)
    check_device(audit.sampler.device)
    for plan in plan_audit(audit, out):
        if plan.part != "knn" and plan.note is not None:
            raise AuditError(f"{audit.path}: {plan.model}/{plan.part}: {plan.note}")
    if "i2p" in audit.parts():
        from analysis.classifiers.clip import check_clip_available

        assert audit.i2p is not None
        check_clip_available(audit.i2p.clip_model)


def _probe(audit: AuditSpec, entry: ModelEntry, folder: Path, shard: Any, progress: bool) -> Any:
    from analysis.probes.ethnic_bias import run_probe

    p, s = audit.probe, audit.sampler
    assert p is not None
    return run_probe(
        out=folder,
        model=entry.model,
        countries=p.countries,
        images_per_country=p.images_per_country,
        seed=s.seed,
        configs=audit.configs_for(entry),
        template=p.template,
        steps=s.steps,
        guidance_scale=s.guidance_scale,
        height=s.height,
        width=s.width,
        batch_size=s.batch_size,
        compile_unet=s.compile,
        device=s.device,
        dtype=entry.dtype,
        **entry.weights(),
        shard=shard,
        rule=p.rule,
        progress=progress,
    )


def _i2p(audit: AuditSpec, entry: ModelEntry, folder: Path, shard: Any, progress: bool) -> Any:
    from analysis.audit.plan import i2p_spec
    from analysis.i2p.benchmark import run_benchmark

    i = audit.i2p
    assert i is not None
    return run_benchmark(
        i2p_spec(audit, entry),
        folder,
        shard=shard,
        batch_size=audit.sampler.batch_size,
        device=audit.sampler.device,
        clip_model=i.clip_model,
        nudenet_rule=i.rule,
        threshold=i.threshold,
        protocol=i.protocol,
        progress=progress,
    )


def _knn(audit: AuditSpec, folder: Path) -> Any:
    """The dataset side into the model's probe folder (as `t2i-audit knn query --out`)."""
    from analysis.classifiers.judges import probe_classifier
    from analysis.figures import draw_all
    from analysis.laion.query import knn_query

    k, p = audit.knn, audit.probe
    assert k is not None and p is not None
    summary = knn_query(
        k.backend,
        folder,
        countries=p.countries,
        k=k.k,
        indice_name=k.indice_name,
        template=p.template,
        rule=p.rule if p.rule and probe_classifier(p.rule) == "nudenet" else "exposed-genitalia",
        allow_private=k.allow_private,
        clip_model=k.clip_model,
    )
    draw_all(folder)  # the probe's country figure gains the dataset side
    return summary


GUARDRAILS = "guardrails"


def guardrail_table(audit: AuditSpec, out: Path) -> Path | None:
    """OUT/guardrails/: every model x config against `sd` of the first model on the same seeds,
    when the audit compares anything (several models or configs, `sd` among them)."""
    from analysis.guardrails import compare_guardrails
    from analysis.store import RunDir

    runs = [
        part_folder(out, m, p)
        for m in audit.models
        for p in _gen_parts(audit)
        if RunDir(part_folder(out, m, p)).exists()
    ]
    if "sd" not in audit.configs or len(audit.models) * len(audit.configs) < 2 or not runs:
        return None
    # arms are named by the audit file's model names (e.g. 'esd-x:sd'), not weight file names
    labels = {str(part_folder(out, m, p)): m.name for m in audit.models for p in _gen_parts(audit)}
    compare_guardrails(runs, out / GUARDRAILS, labels=labels)
    return out / GUARDRAILS


def write_audit_report(audit: AuditSpec, out: Path) -> Path | None:
    """One write-up over every run folder that exists (unfinished ones are marked PROVISIONAL)."""
    from analysis.report import write_report
    from analysis.store import RunDir

    runs = [
        part_folder(out, m, p)
        for m in audit.models
        for p in _gen_parts(audit)
        if RunDir(part_folder(out, m, p)).exists()
    ]
    if not runs:
        return None
    guardrails = out / GUARDRAILS if (out / GUARDRAILS / "guardrails.csv").is_file() else None
    return write_report(
        runs,
        out / "report.html",
        blur=audit.report.blur,
        title=audit.report.title,
        guardrails=guardrails,
    )


def _gen_parts(audit: AuditSpec) -> list[str]:
    """Parts with a run folder of their own (knn writes into the probe's)."""
    return [p for p in audit.parts() if p != "knn"]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
