"""Shared test set-up: offline, single-threaded torch per worker, temp run folders."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The suite's numerics are pinned like its threads: MKL's strict reproducibility (what every
# entry point sets unless the user chose otherwise; COMPATIBLE, for one, breaks fixed-shape
# batch invariance on AMD EPYC), before torch loads.
os.environ["MKL_CBWR"] = "AUTO,STRICT"
__import__("analysis")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def chromium(tmp_path):
    """Headless Debian chromium, no network: shoot(url, out, size, netlog) -> RGB pixels."""
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (make setup installs Debian's chromium)")

    def shoot(url: str, out, size: str = "1000,900", netlog=None) -> np.ndarray:
        args = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chrome-profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=8000",
            f"--window-size={size}",
            f"--screenshot={out}",
            url,
        ]
        if netlog is not None:
            args.insert(-1, f"--log-net-log={netlog}")
        subprocess.run(args, check=True, capture_output=True, timeout=120)
        return np.asarray(Image.open(out).convert("RGB"))

    return shoot


def tiny_probe(out, **over):
    """The small probe many tests start from: tiny model, JPN and KEN, SD vs SLD-max, 32 px."""
    from analysis.probes.ethnic_bias import run_probe

    kwargs = {
        "model": "tiny",
        "countries": ["JPN", "KEN"],
        "images_per_country": 2,
        "configs": ["sd", "sld-max"],
        "steps": 2,
        "height": 32,
        "width": 32,
        "progress": False,
    }
    return run_probe(out=out, **{**kwargs, **over})
