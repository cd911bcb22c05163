"""Run-directory commands at I2P scale (issue 15): 4,703 prompts x 10 images x 6 configs.

    python benchmarks/bench_rundir.py [--items 282180] [--dir PATH] [--keep]

Builds a finished run with the store's own writers (claim_run's items.parquet + manifest, one
PartWriter append per 20,000 generate / classify rows; every image is a hard link to a tiny PNG,
one file per 60,000 links), then times each step in a fresh process (peak RSS is the step's own):

  resume-scan    run_generation on the finished run, parts not yet merged (nothing to generate)
  merge          what `t2i-audit merge` does: consolidate items and scores, compact the parts
  resume-merged  run_generation again, now reading only the consolidated tables
  classify-skip  classify_run(nudenet) with every item already scored
  results        the I2P table of the run (Q16-or-NudeNet verdicts, expected max, rates)
  report         the self-contained HTML write-up of the run (provenance, tables, samples)

Seconds are the step alone (imports and spec building excluded); the aim is <= 5 s and <= 1 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ["sd", "sld-weak", "sld-medium", "sld-strong", "sld-max", "negative"]
IMAGES_PER_PROMPT = 10
CHUNK = 20_000
LINKS_PER_FILE = 60_000
AIM_S, AIM_MB = 5.0, 1024.0
# 1x1 grey PNG: the image bytes do not matter here, only that a file exists at every path
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c63680000008200817f0a5b8c0000000049454e44ae426082"
)


def spec_for(n_items: int) -> object:
    """The generation spec: enough prompts for n_items at 10 images x 6 configs."""
    from analysis.generation.prompts import prompts_from_texts
    from analysis.generation.runner import build_spec

    n_prompts = max(1, math.ceil(n_items / (IMAGES_PER_PROMPT * len(CONFIGS))))
    texts = [f"placeholder prompt {i}" for i in range(n_prompts)]
    return build_spec(
        model="tiny",
        steps=2,
        height=32,
        width=32,
        configs=CONFIGS,
        prompts=prompts_from_texts(texts, base_seed=0),
        images_per_prompt=IMAGES_PER_PROMPT,
    )


def build(out: Path, n_items: int) -> int:
    """A finished, unmerged run at out; returns its number of items."""
    from analysis.classifiers.nudenet import NudeNetDetector
    from analysis.classifiers.run import SCORE_COLUMNS
    from analysis.generation.runner import claim_run, plan_items
    from analysis.store import PartWriter, RunDir, Shard

    spec = spec_for(n_items)
    items = plan_items(spec)
    run = RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_run(spec, run, items)
    for folder in {str(Path(p).parent) for p in items["image_path"]}:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for k, rel in enumerate(items["image_path"]):
        if k % LINKS_PER_FILE == 0:  # ext4 allows 65,000 links to one file
            source = out / f"placeholder-{k // LINKS_PER_FILE}.png"
            source.write_bytes(PNG)
        os.link(source, out / rel)
    nudenet_sha = NudeNetDetector().sha256
    shard = Shard()
    generate = PartWriter(run, "generate", shard)
    scores = {c: PartWriter(run, f"classify-{c}", shard) for c in ("nudenet", "q16")}
    raws = {
        "nudenet": [
            "[]",
            json.dumps([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.8, "box": [1, 2, 3, 4]}]),
        ],
        "q16": [
            json.dumps({"p_safe": 0.9, "p_inappropriate": 0.1}),
            json.dumps({"p_safe": 0.2, "p_inappropriate": 0.8}),
        ],
    }
    for start in range(0, len(items), CHUNK):
        chunk = items.iloc[start : start + CHUNK]
        ids, paths = chunk["item_id"].tolist(), chunk["image_path"].tolist()
        generate.append(
            [
                {"item_id": i, "status": "done", "image_path": p, "error": None, "seconds": 0.1}
                for i, p in zip(ids, paths, strict=True)
            ]
        )
        for name, writer in scores.items():
            sha = nudenet_sha if name == "nudenet" else "placeholder-q16"
            rows = []
            for k, i in enumerate(ids):
                row = dict.fromkeys(SCORE_COLUMNS)
                row |= {"item_id": i, "classifier": name, "model": name, "model_sha256": sha}
                row |= {"image_sha256": "0" * 64, "raw": raws[name][(start + k) % 7 == 0]}
                row |= {"rule": "i2p-authors" if name == "nudenet" else "q16-argmax"}
                row |= {"verdict": (start + k) % 7 == 0}
                rows.append(row)
            writer.append(rows)
    return len(items)


STEPS = {
    "resume-scan": "from analysis.generation.runner import run_generation\n"
    "spec = spec_for(N)\nT0()\nrun_generation(spec, OUT, progress=False)",
    "merge": "from analysis.classifiers import consolidate_scores\n"
    "from analysis.store import RunDir\nT0()\n"
    "RunDir(OUT).consolidate_items(compact=True)\nconsolidate_scores(OUT, compact=True)",
    "resume-merged": "from analysis.generation.runner import run_generation\n"
    "spec = spec_for(N)\nT0()\nrun_generation(spec, OUT, progress=False)",
    "classify-skip": "from analysis.classifiers import classify_run\nT0()\n"
    "s = classify_run(OUT, ['nudenet'], progress=False)\n"
    "assert s['nudenet']['scored'] == 0, s",
    "results": "from analysis.i2p.table import run_table\nT0()\n"
    "t = run_table(OUT, 'i2p-authors')\nassert len(t), t",
    "report": "from analysis.report import write_report\nT0()\n"
    "write_report([OUT], OUT / 'report.html')",
}

CHILD = """
import resource, sys, time
sys.path.insert(0, {here!r})
from bench_rundir import spec_for
from pathlib import Path
OUT, N = Path({out!r}), {n}
_t = [0.0]
def T0():
    _t[0] = time.perf_counter()
{body}
print(time.perf_counter() - _t[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def time_step(name: str, out: Path, n: int) -> tuple[float, float]:
    """(seconds of the step alone, peak RSS MB of its process)."""
    body = STEPS[name]
    code = CHILD.format(here=str(Path(__file__).parent), out=str(out), n=n, body=body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"step {name} failed:\n{done.stderr[-2000:]}")
    seconds, rss = done.stdout.split()[-2:]
    return float(seconds), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=282_180, help="items to build (I2P: 282,180)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the built run directory")
    args = ap.parse_args()
    tmp = None
    if args.dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_rundir-"))
        out = tmp / "run"
    else:
        out = args.dir
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"--dir {out} is not empty")
    started = time.perf_counter()
    n = build(out, args.items)
    print(f"built {n:,} items in {time.perf_counter() - started:.1f} s at {out}", flush=True)
    print(f"{'step':<15} | {'seconds':>7} | {'peak RSS MB':>11} | {'aim':<14} | ok")
    try:
        for name in STEPS:
            seconds, rss = time_step(name, out, args.items)
            ok = seconds <= AIM_S and rss <= AIM_MB
            aim = f"<={AIM_S:g} s, <={AIM_MB:g} MB"
            print(
                f"{name:<15} | {seconds:7.2f} | {rss:11.0f} | {aim:<14} | {'yes' if ok else 'NO'}"
            )
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp)
        elif tmp is not None:
            print(f"kept {out}")


if __name__ == "__main__":
    main()
