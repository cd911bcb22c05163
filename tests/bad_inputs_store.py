"""Bad-input cases for ownership: outputs onto a run's own files, a run re-initialised, devices."""

from __future__ import annotations

from pathlib import Path

from badinput import GEN, Case


def _pngs(tmp: Path, run: Path) -> None:
    from PIL import Image

    (tmp / "pngs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp / "pngs" / "a.png")


def _drop_manifest(tmp: Path, run: Path) -> None:
    (run / "manifest.json").unlink()


def _audit(tmp: Path, run: Path) -> None:
    (tmp / "a.toml").write_text(
        'configs = ["sd"]\n[[models]]\nname = "m"\nmodel = "tiny"\n'
        '[probe]\ncountries = ["JPN"]\nimages_per_country = 1\n'
    )


REPORT = ["report", "{run}", "--out"]

CASES = [
    Case(
        "store-classify-folder-into-a-run",
        ["classify", "{tmp}/pngs", "--out", "{run}"],
        "already holds another run",
        setup=_pngs,
    ),
    Case(
        "store-classify-run-without-manifest",
        ["classify", "{run}"],
        "manifest.json is missing",
        setup=_drop_manifest,
        changes=("manifest.json",),
    ),
    Case(
        "store-generate-into-run-without-manifest",
        [*GEN[:2], "{run}", *GEN[3:], "--prompt", "x", "--model", "tiny"],
        "manifest.json is missing",
        setup=_drop_manifest,
        changes=("manifest.json",),
    ),
    Case("store-report-onto-items", [*REPORT, "{run}/items.parquet"], "own 'items.parquet'"),
    Case("store-report-onto-manifest", [*REPORT, "{run}/manifest.json"], "own 'manifest.json'"),
    Case("store-report-into-scores", [*REPORT, "{run}/scores/r.html"], "own 'scores'"),
    Case("store-report-onto-the-run", [*REPORT, "{run}"], "is also an input"),
    Case(
        "store-generate-inside-a-runs-parts",
        [*GEN[:2], "{run}/parts/new", *GEN[3:], "--prompt", "x", "--model", "tiny"],
        "own 'parts'",
    ),
    Case(
        "store-generate-unusable-device",
        [*GEN, "--prompt", "x", "--model", "tiny", "--device", "cuda:3"],
        "device 'cuda:3' is not usable here",
        new_out=True,
    ),
    Case(
        "store-audit-into-a-run",
        ["run", "{tmp}/a.toml", "--out", "{run}"],
        "is a t2i-audit run folder",
        setup=_audit,
    ),
    Case(
        "store-audit-unusable-device",
        ["run", "{tmp}/a.toml", "--out", "{tmp}/new", "--set", 'sampler.device="cuda:5"'],
        "device 'cuda:5' is not usable here",
        setup=_audit,
        new_out=True,
    ),
]
