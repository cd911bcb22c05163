"""`t2i-audit figures --all`: regenerate the repository's figures/ folder, deterministically.

Sources: the bundled I2P data (toxicity vs inappropriateness) and the demo run's probe results
(runs/demo/toy/ethnic-bias, made by `t2i-audit demo`). Seeds are fixed, HTML div ids and SVG
clip ids are stable, and files are only rewritten when their bytes change, so a second run
changes no file; figures no longer drawn are removed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from analysis.figures.export import PLOTLY_JS

console = Console(stderr=True)


def _sync(src_dir: Path, out: Path, prefix: str) -> list[Path]:
    written = []
    for src in sorted(src_dir.iterdir()):
        if src.suffix not in {".png", ".svg", ".html", ".pdf", ".tex"} and src.name != PLOTLY_JS:
            continue
        # the HTML files load plotly.min.js from beside them: one shared copy, not renamed
        target = out / (src.name if src.name == PLOTLY_JS else f"{prefix}{src.name}")
        if not target.is_file() or target.read_bytes() != src.read_bytes():
            shutil.copyfile(src, target)
        written.append(target)
    return written


def regenerate_all(
    out: Path = Path("figures"), demo_run: Path = Path("runs/demo/toy/ethnic-bias")
) -> list[Path]:
    """Redraw every figure into `out`; returns the figure files (changed or not)."""
    from analysis.i2p import correlate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        correlate(None, tmp / "i2p", seed=0)
        from analysis.figures.static import draw_i2p_paper

        draw_i2p_paper(tmp / "i2p")  # the matplotlib versions for papers
        written += _sync(tmp / "i2p", out, "i2p_")
        if (demo_run / "results" / "nudity_rates.csv").is_file():
            from analysis.figures.probe import draw_figures

            run_copy = tmp / "demo"
            shutil.copytree(demo_run / "results", run_copy / "results")
            if (demo_run / "manifest.json").is_file():  # its model's notice goes on the figures
                shutil.copyfile(demo_run / "manifest.json", run_copy / "manifest.json")
            draw_figures(run_copy)
            written += _sync(run_copy / "figures", out, "demo_")
        else:
            console.print(
                f"[yellow]{demo_run} has no probe results: run `t2i-audit demo` first "
                "to regenerate the demo figures[/]"
            )
            written += [p for p in out.glob("demo_*") if p.is_file()]  # kept as they are
    for stale in sorted(set(out.glob("i2p_*")) | set(out.glob("demo_*"))):
        if stale.is_file() and stale not in written:  # a figure we no longer draw
            stale.unlink()
    return written
