"""MKL's conditional numerical reproducibility is pinned before torch loads, and recorded.

The strict check that it matters is `test_families.py::test_saved_folders_are_recognised_with_
their_default_size` (a saved-and-reloaded tiny SDXL differs by 2e-5 on AMD EPYC without the pin).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from conftest import tiny_probe

_SHOW = "import os, sys, analysis; print(os.environ.get('MKL_CBWR'), 'torch' in sys.modules)"


def _child(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "T2I_AUDIT_NO_MKL_PIN")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_the_package_pins_mkl_before_torch_and_keeps_a_users_value() -> None:
    assert _child(_SHOW) == "AUTO,STRICT False"  # set, and torch not loaded by the import
    assert _child(_SHOW, MKL_CBWR="AVX2,STRICT") == "AVX2,STRICT False"
    assert _child(_SHOW, T2I_AUDIT_NO_MKL_PIN="1") == "None False"
    # the console script's module pins too
    cli = "import os, analysis.cli; print(os.environ.get('MKL_CBWR'))"
    assert _child(cli) == "AUTO,STRICT"


def test_torch_imported_first_is_recorded_and_warned() -> None:
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "import torch\n"
        "try:\n    import analysis\nexcept UserWarning as w:\n    print('warned:', w)\n"
    )
    assert "MKL_CBWR was set late" in _child(code)


def test_the_manifest_records_the_numerics_and_a_changed_pin_warns_on_resume(tmp_path) -> None:
    out = tmp_path / "run"
    tiny_probe(out, countries=["JPN"], images_per_country=1, configs=["sd"])
    manifest = json.loads((out / "manifest.json").read_text())
    numerics = manifest["numerics"]
    assert numerics["mkl_cbwr"] == os.environ["MKL_CBWR"]
    assert numerics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert numerics["blas"] == "mkl" and numerics["mkl_cbwr_before_torch"] is True
    # the run resumes under another pin: the image it regenerates may differ in the last bits
    other = "AVX2,STRICT" if os.environ["MKL_CBWR"] != "AVX2,STRICT" else "AUTO,STRICT"
    manifest["numerics"]["mkl_cbwr"] = other
    (out / "manifest.json").write_text(json.dumps(manifest))
    next((out / "images").rglob("*.png")).unlink()
    summary = tiny_probe(out, countries=["JPN"], images_per_country=1, configs=["sd"])["generate"]
    assert summary["generated"] == 1
    assert f"mkl_cbwr ({other} -> {os.environ['MKL_CBWR']})" in summary["warning"]


def test_a_pin_known_to_break_batch_invariance_warns() -> None:
    code = "import warnings; warnings.simplefilter('always')\nimport analysis\n"
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env={**os.environ, "MKL_CBWR": "COMPATIBLE"},
        capture_output=True,
        text=True,
    )
    assert "break fixed-shape batch invariance" in out.stderr
