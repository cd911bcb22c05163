"""Bad inputs of `quality`, `--scheduler` (generate, i2p) and `knn query`: one line each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from badinput import GEN, I2P_SET, QUALITY, Case, _write

CAPTIONS = _write("c.csv", "caption\na cat\na dog\n")
QUALITY_C = [*QUALITY, "--captions", "{tmp}/c.csv", "--steps", "1", "--height", "32"]
KNN = ["knn", "query", "--out", "{tmp}/new", "--countries", "JPN", "--k", "3"]
KNN_TINY = [*KNN, "--clip-model", "tiny", "--backend"]


def _index(metadata: bool = True, garbage_index: bool = False) -> Callable[[Path, Path], None]:
    """A local kNN index folder {tmp}/idx whose 6 rows only have private (refused) URLs."""

    def setup(tmp: Path, run: Path) -> None:
        import faiss
        import numpy as np
        import pandas as pd

        from analysis.classifiers.clip import tiny_clip

        folder = tmp / "idx"
        (folder / "metadata").mkdir(parents=True)
        if garbage_index:
            (folder / "image.index").write_bytes(b"garbage!" * 4)
        else:
            dim = tiny_clip().embed_texts(["x"]).shape[1]
            vecs = np.random.default_rng(0).standard_normal((6, dim)).astype(np.float32)
            index = faiss.IndexFlatIP(dim)
            index.add(vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
            faiss.write_index(index, str(folder / "image.index"))
        part = folder / "metadata" / "0000.parquet"
        if metadata:
            urls = [f"http://10.0.0.{i}/a.png" for i in range(6)]
            pd.DataFrame({"url": urls, "caption": ["c"] * 6}).to_parquet(part)
        else:
            part.write_bytes(b"xx")

    return setup


CASES = [
    # quality generate / score: integer settings out of range
    Case(
        "quality-sample-seed-negative",
        [*QUALITY_C, "--sample-seed", "-1"],
        "--sample-seed -1 is out of range",
        CAPTIONS,
        new_out=True,
    ),
    Case(
        "quality-seed-past-the-largest",
        [*QUALITY_C, "--seed", str(2**64 - 1)],  # caption 2 would need seed 2**64
        "--seed 18446744073709551615 is out of range",
        CAPTIONS,
        new_out=True,
    ),
    Case(
        "quality-seed-negative",
        [*QUALITY_C, "--seed", "-3"],
        "--seed -3 is out of range",
        CAPTIONS,
        new_out=True,
    ),
    Case(
        "quality-n-huge",
        [*QUALITY_C, "--n", str(10**30)],
        "choose 1 to 2",
        CAPTIONS,
        new_out=True,
    ),
    Case("quality-n-zero", [*QUALITY_C, "--n", "0"], "'--n'", CAPTIONS, new_out=True),
    Case(
        "quality-batch-size-huge",
        [*QUALITY_C, "--batch-size", str(10**30)],
        "batch_size",
        CAPTIONS,
        new_out=True,
    ),
    Case(
        "quality-score-batch-size-huge",
        ["quality", "score", "{run}", "--reference", "{tmp}", "--batch-size", str(10**30)],
        "--batch-size 1000000000000000000000000000000 is out of range",
    ),
    # --scheduler naming something that is not a Stable Diffusion scheduler
    Case(
        "quality-scheduler-is-a-unet",
        [*GEN, "--model", "tiny", "--prompt", "a cat", "--scheduler", "UNet2DConditionModel"],
        "--scheduler 'UNet2DConditionModel' is not a Stable Diffusion scheduler",
        new_out=True,
    ),
    Case(
        "quality-scheduler-is-a-module",
        [*GEN, "--model", "tiny", "--prompt", "a cat", "--scheduler", "os"],
        "--scheduler 'os' is not a Stable Diffusion scheduler",
        new_out=True,
    ),
    Case(
        "quality-scheduler-is-the-base-class",
        [*GEN, "--model", "tiny", "--prompt", "a cat", "--scheduler", "SchedulerMixin"],
        "--scheduler 'SchedulerMixin'",
        new_out=True,
    ),
    Case(
        "quality-i2p-scheduler-is-a-pipeline",
        [*I2P_SET, "--scheduler", "StableDiffusionPipeline"],
        "--scheduler 'StableDiffusionPipeline' is not a Stable Diffusion scheduler",
        _write("set.csv", "prompt\na cat\n"),
        new_out=True,
    ),
    # knn query
    Case(
        "knn-every-neighbour-refused",
        [*KNN_TINY, "{tmp}/idx"],
        "none of the 3 neighbours could be judged (3 refused)",
        _index(),
    ),
    Case(
        "knn-index-not-faiss",
        [*KNN_TINY, "{tmp}/idx"],
        "image.index is not a faiss index",
        _index(garbage_index=True),
        new_out=True,
    ),
    Case(
        "knn-metadata-not-parquet",
        [*KNN_TINY, "{tmp}/idx"],
        "0000.parquet is not a readable Parquet file",
        _index(metadata=False),
        new_out=True,
    ),
    Case(
        "knn-backend-missing",
        [*KNN_TINY, "{tmp}/nowhere"],
        "--backend",
        new_out=True,
    ),
]
