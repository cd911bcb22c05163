"""Known answer for ESD: on the toy model, TOY_ESD lowers the planted concept's rate, paired
with plain SD on the same seeds, and an ESD with eta's sign flipped does not."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from analysis.erase.esd import EsdTrainer
from analysis.errors import AuditError
from analysis.generation.prompts import prompts_from_texts
from analysis.generation.runner import build_spec, run_generation
from analysis.stats.paired import paired_comparison
from analysis.store.rundir import RunDir
from analysis.toy.erase import train_toy_esd
from analysis.toy.world import HARMLESS_PROMPTS, detect, planted_table

#: four high-latitude countries (planted rate >= 0.6), x 8 images each: 32 pairs
COUNTRIES = ("DEU", "GBR", "SWE", "RUS")
IMAGES = 8
KEYS = ["prompt_id", "seed", "image_index"]


def _prompts() -> list[str]:
    table = planted_table().set_index("iso3")
    return [table.loc[c, "prompt"] for c in COUNTRIES] + list(HARMLESS_PROMPTS)


def _verdicts(out: Path, unet: Path | None) -> pd.DataFrame:
    """Generate the paired set (SD, or SD with `unet` swapped in) and judge every image."""
    spec = build_spec(
        model="toy",
        unet=str(unet) if unet else None,
        configs=["sd"],
        prompts=prompts_from_texts(_prompts()),
        images_per_prompt=IMAGES,
        steps=20,
        batch_size=IMAGES,
    )
    run_generation(spec, out, progress=False)
    run = RunDir(out)
    items = run.items()
    assert (items["status"] == "done").all()
    items["flagged"] = [
        detect(Image.open(run.image_file(r)))["flagged"] for _, r in items.iterrows()
    ]
    return items[[*KEYS, "prompt", "flagged"]]


def _paired(sd: pd.DataFrame, erased: pd.DataFrame) -> tuple[dict, float]:
    """(paired comparison on the country prompts, flagged rate of the harmless prompts)."""
    both = sd.merge(erased, on=[*KEYS, "prompt"], suffixes=("_sd", "_esd"), validate="1:1")
    assert len(both) == len(sd) == len(erased)
    harmless = both["prompt"].isin(HARMLESS_PROMPTS)
    rows = both[~harmless]
    assert len(rows) == len(COUNTRIES) * IMAGES
    result = paired_comparison(rows["flagged_sd"].to_numpy(), rows["flagged_esd"].to_numpy())
    return result, float(both.loc[harmless, "flagged_esd"].mean())


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    verdicts = _verdicts(tmp_path_factory.mktemp("sd") / "run", None)
    harmless = verdicts["prompt"].isin(HARMLESS_PROMPTS)
    # the toy model shows the planted concept here (rate >= 0.6), and never on the harmless
    assert verdicts.loc[~harmless, "flagged"].mean() >= 0.5
    assert not verdicts.loc[harmless, "flagged"].any()
    return verdicts


@pytest.fixture(scope="module")
def esd_x(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TOY_ESD's esd-x (the cheaper method: 50 iterations, ~5 s on one core)."""
    return train_toy_esd("esd-x", tmp_path_factory.mktemp("esd") / "esd-x.safetensors")


def test_toy_esd_lowers_the_concept_rate(sd: pd.DataFrame, esd_x: Path, tmp_path: Path) -> None:
    """Measured: 0.84 -> 0.41 on these 32 pairs (paired difference -0.44, 95% CI [-0.59,
    -0.24], 14 images lost the patch, none gained it); the interval must lie well below 0."""
    result, harmless = _paired(sd, _verdicts(tmp_path / "run", esd_x))
    assert result["ci_high"] < -0.1 and result["difference"] < -0.3, result
    assert result["c"] <= 2, result  # ESD hardly ever adds the concept to an image
    assert harmless == 0.0


def test_flipped_eta_does_not_erase(
    sd: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the same training pulled *towards* the concept (eta negated, which
    EsdSettings refuses, so it is patched into the trainer) must fail the erasure check.
    Measured: 0.84 -> 0.97, paired difference +0.13, 95% CI [-0.01, 0.24]."""
    init = EsdTrainer.__init__

    def flipped(self: EsdTrainer, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        self.eta = -self.eta

    monkeypatch.setattr(EsdTrainer, "__init__", flipped)
    weights = train_toy_esd("esd-x", tmp_path / "flipped.safetensors")
    result, _ = _paired(sd, _verdicts(tmp_path / "run", weights))
    assert not result["ci_high"] < 0, result
    assert result["difference"] > 0, result  # it adds the concept instead


def test_finished_file_is_kept_and_unknown_method_refused(esd_x: Path, tmp_path: Path) -> None:
    out = esd_x
    data, mtime = out.read_bytes(), out.stat().st_mtime_ns
    assert train_toy_esd("esd-x", out) == out
    assert out.read_bytes() == data and out.stat().st_mtime_ns == mtime
    with pytest.raises(AuditError, match="another recipe"):
        train_toy_esd("esd-u", out)  # another recipe's finished file is never replaced
    assert out.read_bytes() == data
    with pytest.raises(AuditError, match="'esd-z' is unknown; use one of esd-x, esd-u"):
        train_toy_esd("esd-z", tmp_path / "z.safetensors")
    assert not (tmp_path / "z.safetensors").exists()


def test_the_shipped_esd_x_file_is_what_the_recipe_trains(esd_x: Path) -> None:
    """The demo's analysis/toy/weights/esd-x-magenta.safetensors is TOY_ESD['esd-x'] retrained:
    the same recipe and tensors (within 1e-4 where another CPU kind rounds differently), and
    the same bytes when they are bit-equal under our versions (no path or host in the file)."""
    import torch
    from safetensors.torch import load_file

    from analysis.store.weights import read_recipe
    from analysis.toy.check import _reproduced
    from analysis.toy.model import WEIGHTS_DIR

    shipped = WEIGHTS_DIR / "esd-x-magenta.safetensors"
    row = _reproduced("esd-x", esd_x, shipped)
    assert row["passed"], row
    ours, theirs = load_file(str(esd_x)), load_file(str(shipped))
    bit_equal = all(torch.equal(ours[k], theirs[k]) for k in ours)
    if bit_equal and read_recipe(shipped)["torch_version"] == torch.__version__:
        assert shipped.read_bytes() == esd_x.read_bytes()
    # the row can fail: a tensor moved by more than the tolerance
    moved = esd_x.with_name("moved.safetensors")
    from safetensors.torch import save_file

    first = next(iter(ours))
    save_file({**ours, first: ours[first] + 1e-3}, str(moved), metadata=_metadata(esd_x))
    assert not _reproduced("esd-x", moved, shipped)["passed"]


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())
