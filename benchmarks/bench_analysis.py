"""Every analysis-speed figure of issue 15 against its aim, in one run (target: a 2-core laptop).

    python benchmarks/bench_analysis.py [--repeats 5] [--classify-images 100] [--demo]

  spearman-bootstrap  one Spearman, 10,000-draw percentile bootstrap, n = 4,703     < 0.5 s
  i2p-correlate       `t2i-audit i2p correlate --no-figure`, fresh process          < 3 s
  expected-max        I2P authors' expected max, 8 categories x 10,000 draws        < 0.5 s
  help                `t2i-audit --help`, fresh process (CLI start-up)              < 0.3 s
  classify-ratio      bench_classify.py's speed-up on --classify-images PNGs        >= 1.5x
  demo                `t2i-audit demo` (only with --demo: minutes)                  (reported)
  machine-speed       2,000,000 Python additions, a fixed workload                  (reported)

Times are best-of --repeats wall seconds (cpu seconds beside them: on a busy machine the wall
time says more about the neighbours than about the code). Run on an idle machine. On a shared
virtual machine the same code varies by 20-30% from minute to minute: machine-speed (0.08 s on
the project's 2-core machine when quiet) says how fast the machine was during this run.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
CLI = Path(sys.executable).with_name("t2i-audit")
#: bench_classify.py's closing line
SPEED_UP = r"speed-up: ([0-9.]+)x; images whose detections differ: (\d+)"


def best(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best wall seconds, cpu seconds of that run) of fn over repeats."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time() + _children_cpu()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() + _children_cpu() - cpu))
    return min(runs)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(*args: str) -> None:
    subprocess.run([str(CLI), *args], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--classify-images", type=int, default=100, help="0 skips the classify ratio")
    ap.add_argument("--demo", action="store_true", help="also time `t2i-audit demo` (slow)")
    args = ap.parse_args()

    from analysis.i2p.loader import category_masks, load_i2p
    from analysis.stats import expected_max, spearman_ci

    frame = load_i2p(None).frame
    x = frame["prompt_toxicity"].to_numpy(dtype=float)
    y = frame["inappropriate_percentage"].to_numpy(dtype=float)
    rates = [
        frame.loc[m, "inappropriate_percentage"].to_numpy(dtype=float) / 100
        for m in category_masks(frame["categories"]).values()
    ]
    rows: list[tuple[str, str, str, bool]] = []

    def timed(name: str, fn: Callable[[], object], aim: float, repeats: int) -> None:
        wall, cpu = best(fn, repeats)
        rows.append((name, f"{wall:.3f} s (cpu {cpu:.2f} s)", f"< {aim:g} s", wall < aim))

    timed("spearman-bootstrap", lambda: spearman_ci(x, y, n_boot=10_000), 0.5, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        correlate = ("i2p", "correlate", "--out", tmp, "--no-figure")
        timed("i2p-correlate", lambda: run_cli(*correlate), 3.0, args.repeats)

    def all_expected_max() -> None:
        for r in rates:
            expected_max(r, n_draws=10_000, sample_size=25, replace=False)

    timed("expected-max", all_expected_max, 0.5, args.repeats)
    timed("help", lambda: run_cli("--help"), 0.3, args.repeats)
    if args.classify_images:
        cmd = [sys.executable, str(HERE / "bench_classify.py"), "--n-images"]
        done = subprocess.run(
            [*cmd, str(args.classify_images)], check=True, capture_output=True, text=True
        )
        found = re.search(
            r"speed-up: ([0-9.]+)x; images whose detections differ: (\d+)", done.stdout
        )
        if found is None:
            raise SystemExit(f"bench_classify.py printed no speed-up line:\n{done.stdout}")
        ratio, differ = float(found.group(1)), int(found.group(2))
        value = f"{ratio:.2f}x ({differ} differ, {args.classify_images} images)"
        rows.append(("classify-ratio", value, ">= 1.5x, 0 differ", ratio >= 1.5 and differ == 0))
    if args.demo:
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = best(lambda: run_cli("demo", "--out", tmp), 1)
        rows.append(("demo", f"{wall:.1f} s (cpu {cpu:.1f} s)", "(reported)", True))

    def machine_speed() -> None:
        total = 0
        for i in range(2_000_000):
            total += i

    wall, _ = best(machine_speed, args.repeats)
    rows.append(("machine-speed", f"{wall:.3f} s", "(0.08 s quiet)", True))

    width = max(len(r[1]) for r in rows)
    print(f"{'figure':<19} | {'value':<{width}} | {'aim':<17} | ok")
    for name, value, aim, ok in rows:
        print(f"{name:<19} | {value:<{width}} | {aim:<17} | {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
