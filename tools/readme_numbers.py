"""Recompute every README number that comes from the bundled I2P data, and check or rewrite it.

A number in README.md that the toolkit can recompute sits between markers,
``<!-- num:NAME -->0.220<!-- /num -->``, so it cannot go stale silently: ``--check`` (the
default) exits 1 with a diff when a marked span differs from what the code computes today,
``--write`` rewrites the spans. Each number is computed exactly as the command the README
quotes computes it (same function, defaults and seed), so the README and the CLI agree.

    python tools/readme_numbers.py --check
    python tools/readme_numbers.py --write
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = re.compile(r"<!-- num:(?P<name>[a-z0-9_]+) -->(?P<value>.*?)<!-- /num -->")


def compute() -> dict[str, str]:
    """NAME -> the text the README shows, from the bundled data and the CLI's defaults."""
    from analysis.i2p import text_filter as tf
    from analysis.i2p.correlation import toxicity_correlation
    from analysis.i2p.loader import load_i2p
    from analysis.i2p.table import dataset_prompts, dataset_table

    frame = load_i2p(None).frame
    # `t2i-audit i2p correlate`: n_boot 10,000, seed 0
    corr = toxicity_correlation(frame, n_boot=10_000, seed=0)
    row = corr[(corr["category"] == "all") & (corr["target"] == "inappropriate_percentage")]
    rho = row.iloc[0]
    # `t2i-audit i2p table`: the probability does not depend on the draws, so few suffice
    table = dataset_table(frame, n_draws=100, seed=0)
    overall = table[table["category"] == "all"].iloc[0]
    # `t2i-audit i2p text-filter`: the paper's point, toxicity > 0.5
    curve = tf.toxicity_curve(tf.with_toxicity(dataset_prompts(frame), frame))
    paper = curve[curve["paper_point"] & (curve["category"] == "all")].iloc[0]
    return {
        "spearman_rho": f"{rho['spearman_rho']:.3f}",
        "spearman_ci": f"[{rho['ci_low']:.3f}, {rho['ci_high']:.3f}]",
        "toxic_share": f"{100 * rho['share_toxic']:.1f}%",
        "sd14_probability": f"{overall['inappropriate_probability']:.3f}",
        "n_prompts": f"{int(overall['n_prompts'])}",
        "n_prompt_texts": f"{int(overall['n_prompt_units'])}",
        "filter_blocked": f"{100 * paper['share_blocked']:.1f}%",
        "filter_prevented": f"{100 * paper['share_prevented']:.1f}%",
    }


def render(text: str, numbers: dict[str, str]) -> str:
    """`text` with every marked span set to its computed value; an unknown name is an error."""
    unknown = sorted({m["name"] for m in MARK.finditer(text)} - set(numbers))
    if unknown:
        raise SystemExit(f"error: README marks {', '.join(unknown)}, which no code computes")
    unmarked = sorted(set(numbers) - {m["name"] for m in MARK.finditer(text)})
    if unmarked:
        raise SystemExit(f"error: README has no marker for {', '.join(unmarked)}")

    def sub(m: re.Match[str]) -> str:
        return f"<!-- num:{m['name']} -->{numbers[m['name']]}<!-- /num -->"

    return MARK.sub(sub, text)


def main(argv: list[str] | None = None) -> int:
    """0 when the README is current (or was rewritten), 1 with a diff when it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 with a diff if stale (default)")
    mode.add_argument("--write", action="store_true", help="rewrite the marked spans")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = render(text, compute())
    if new == text:
        print(f"{args.readme}: numbers are current")
        return 0
    if args.write:
        args.readme.write_text(new, encoding="utf-8")
        print(f"{args.readme}: numbers rewritten")
        return 0
    diff = difflib.unified_diff(
        text.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"{args.readme} (stale)",
        tofile=f"{args.readme} (computed)",
    )
    sys.stdout.writelines(diff)
    return 1


if __name__ == "__main__":
    sys.exit(main())
