"""A wheel install (not editable) finds its data files and templates, and runs offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_finds_its_data_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "analysis", src / "analysis", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "w")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "w").glob("t2i_audit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("countries.csv", "world_110m.json", "i2p_benchmark.csv", "q16_prompts_vitl14.npy"):
        assert f"analysis/data/{data}" in names
    assert "analysis/report/templates/report.html.j2" in names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    code = (
        "import analysis, analysis.probes.countries as c, analysis.i2p.loader as l;"
        "from analysis.figures.export import DATA_DIR;"
        "print(analysis.__file__); print(len(c.load_countries())); print(DATA_DIR.is_dir());"
        "print(l.BUNDLED_PATH.is_file())"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0].startswith(str(site)), "imported the checkout, not the wheel"
    assert lines[1:] == ["50", "True", "True"]


def test_the_command_line_loads_no_torch_pandas_or_model_code() -> None:
    """`t2i-audit --help` (and every subcommand's registration) stays fast: heavy imports are
    made inside the commands that use them (measured: 0.15-0.27 s with, 2 s without)."""
    import subprocess
    import sys

    code = (
        "import sys, analysis.cli as c; c._register(); "
        "print(sorted(m for m in ('torch', 'pandas', 'diffusers', 'transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
