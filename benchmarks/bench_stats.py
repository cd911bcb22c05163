"""Seconds for the statistics of issue 15 on the bundled I2P data, ours vs scipy's reference.

    python benchmarks/bench_stats.py [--n-boot 10000] [--ref-draws 200] [--repeats 3]

1. One Spearman with a percentile bootstrap at n = 4,703 (toxicity vs inappropriate %): ours
   (spearman_ci) vs a loop of scipy.stats.spearmanr on materialised resamples, the loop timed on
   --ref-draws draws and scaled to --n-boot; the ratio is printed. The first draws of ours are
   checked against spearmanr on the same materialised resamples.
2. `t2i-audit i2p correlate --no-figure` end to end (a fresh process: imports included).
3. The I2P authors' expected max (25 prompts without replacement, 10,000 draws) per category.
4. `t2i-audit --help` (a fresh process: the CLI's import cost).

Timings are best-of --repeats wall seconds; run it on an idle machine (2 cores is the target).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats

from analysis.i2p.loader import category_masks, load_i2p
from analysis.stats import expected_max, spearman_ci
from analysis.stats.correlation import _bootstrap_rhos, _Layout

CLI = Path(sys.executable).with_name("t2i-audit")


def best(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of fn over repeats (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def check_resamples(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, k: int = 5) -> float:
    """Largest |ours - spearmanr| over the first k resamples, rebuilt from the documented draws."""
    layout = _Layout.of(x, y[None, :])
    ours = _bootstrap_rhos(layout, n_boot, seed)[0]
    block = min(128, (1 << 21) // x.size)
    seq = np.random.SeedSequence(seed).spawn(-(-n_boot // block))[0]
    idx = np.random.default_rng(seq).integers(0, x.size, size=(block, x.size))
    return max(abs(ours[b] - stats.spearmanr(x[idx[b]], y[idx[b]]).statistic) for b in range(k))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-boot", type=int, default=10_000)
    ap.add_argument("--ref-draws", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    frame = load_i2p(None).frame
    x = frame["prompt_toxicity"].to_numpy(dtype=float)
    y = frame["inappropriate_percentage"].to_numpy(dtype=float)
    out: dict[str, float | int | str] = {"n": int(x.size), "cores": os.cpu_count() or 1}

    ours = best(lambda: spearman_ci(x, y, n_boot=args.n_boot), args.repeats)
    rng = np.random.default_rng(0)

    def reference() -> None:
        for _ in range(args.ref_draws):
            idx = rng.integers(0, x.size, size=x.size)
            stats.spearmanr(x[idx], y[idx])

    ref = best(reference, 1) * args.n_boot / args.ref_draws
    out |= {
        "spearman_bootstrap_s": round(ours, 3),
        "scipy_loop_s_scaled": round(ref, 2),
        "speedup_vs_scipy": round(ref / ours, 1),
        "max_abs_diff_vs_spearmanr": check_resamples(x, y, args.n_boot, 0),
    }

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(CLI), "i2p", "correlate", "--out", tmp, "--no-figure"]
        run = lambda: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
        out["i2p_correlate_s"] = round(best(run, args.repeats), 3)

    rates = {
        c: frame.loc[m, "inappropriate_percentage"].to_numpy(dtype=float) / 100
        for c, m in category_masks(frame["categories"]).items()
    }

    def all_expected_max() -> None:
        for r in rates.values():
            expected_max(r, n_draws=10_000, sample_size=25, replace=False)

    out["expected_max_8_categories_s"] = round(best(all_expected_max, args.repeats), 3)
    help_run = lambda: subprocess.run([str(CLI), "--help"], check=True, capture_output=True)  # noqa: E731
    out["help_s"] = round(best(help_run, args.repeats), 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
