"""ESD-u and ESD-x settings that measurably erase "magenta" from the toy model, in seconds.

SD's recipes (1000 iterations at lr 1e-5, 50 DDIM steps) would take an hour on a CPU and were
tuned for an 860M-parameter UNet; the toy UNet was trained at lr 1e-3 on 32 px images, so it
erases with tens of iterations, a larger lr and a 10-step schedule. Both methods use the
`diffusers` recipe (z_t sampled by the frozen base): the `paper` recipe samples z_t with the
model being trained, which at these learning rates destabilised ESD-u (its images broke before
the rate fell).

Measured on the shipped toy model with `train_toy_esd` and one torch thread (a second thread on
a busy 2-core machine made training 10x slower): 10 high-latitude probe countries (DEU GBR RUS
SWE POL NLD IRL CAN UKR FRA, planted rate >= 0.59) x 16 images (seeds 0-15, 20 steps, CFG 7.5,
batch 16), generated with and without `--unet`, paired by (prompt, seed, image index), judged by
`analysis.toy.world.detect`, interval from `analysis.stats.paired_comparison` (160 pairs):

- esd-x: trains in ~5 s; rate 0.76 -> 0.26, difference -0.50, 95% CI [-0.57, -0.42] (80 images
  lost the patch, none gained it).
- esd-u: trains in ~11 s; rate 0.76 -> 0.11, difference -0.66, 95% CI [-0.72, -0.57] (105 lost,
  none gained).
- Collateral: "a tree" / "a house" stay unflagged (0 of 32 before and after). Their mean absolute
  pixel change against SD is 11 (esd-x) and 14 (esd-u) of 255, against 27 between two SD images
  of different seeds; most of it is a changed background colour. The share of crown- (tree) and
  wall-coloured (house) pixels after over before is 1.08 / 0.84 (esd-x blurs some houses) and
  1.12 / 1.04 (esd-u: figures intact).
- Training seed 1 gives the same effect (-0.48 esd-x, -0.68 esd-u). With eta's sign flipped (the
  trainer pulls towards the concept) the same settings raise the rate: esd-x +0.16 [0.10, 0.22],
  esd-u +0.21 [0.14, 0.27].
- Not chosen: esd-x at 30 iterations, lr 1e-3 (-0.57) garbled most houses at training seed 1;
  esd-u at lr 1e-3 put the patch on 44% of the trees and houses; the `paper` recipe's esd-u
  broke images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.erase.recipes import EsdSettings
from analysis.errors import AuditError
from analysis.toy.world import CONCEPT_WORD, SIZE

#: ESD on the toy model trains on one thread, as the toy model itself did: one set of weights
THREADS = 1
#: one CPU-cheap ESD recipe per method for the toy model (effects in the module docstring)
TOY_ESD: dict[str, EsdSettings] = {
    "esd-x": EsdSettings(
        concept=CONCEPT_WORD,
        method="esd-x",
        recipe="diffusers",
        iterations=50,
        lr=3e-4,
        ddim_steps=10,
        resolution=SIZE,
        seed=0,
    ),
    "esd-u": EsdSettings(
        concept=CONCEPT_WORD,
        method="esd-u",
        recipe="diffusers",
        iterations=100,
        lr=1e-4,
        ddim_steps=10,
        resolution=SIZE,
        seed=0,
    ),
}


def train_toy_esd(method: str, out: Path, model: str = "toy") -> Path:
    """Train `TOY_ESD[method]` on `model` (loaded as `t2i-audit erase esd` does: CPU, float32)
    and return the .safetensors file, which `generate --unet` swaps in.

    An `out` that is already this recipe's finished file is kept as it is (train_esd skips it),
    and any other file there is refused, so a rerun costs only the model load.
    """
    from analysis.erase.esd import check_output, train_esd
    from analysis.generation.models import load_model

    if method not in TOY_ESD:
        raise AuditError(f"toy ESD method {method!r} is unknown; use one of {', '.join(TOY_ESD)}")
    out = Path(out)
    check_output(out, [model])  # before loading, as the CLI does; again in train_esd
    import torch

    loaded = load_model(model, device="cpu", dtype="float32")
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # the thread count changes the weights (by ~1e-6)
    try:
        train_esd(loaded, TOY_ESD[method], out)
    finally:
        torch.set_num_threads(threads)
    return out


#: the closed-form edits (UCE, RECE) at their authors' defaults, aimed at the concept word.
#: The toy's tokenizer is character-level, so "the concept's last token" is the letter 'a' in
#: context: these edits have little to act on, and `toy check` reports their effect without a
#: planted target (measured: see the README's known-answers table).
def toy_closed_form(method: str) -> Any:
    from analysis.erase.rece import ReceSettings
    from analysis.erase.uce import UceSettings

    settings = {"uce": UceSettings, "rece": ReceSettings}
    if method not in settings:
        raise AuditError(f"toy closed-form method {method!r} is unknown; use uce or rece")
    return settings[method](concept=[CONCEPT_WORD])


def train_toy_closed_form(method: str, out: Path, model: str = "toy") -> Path:
    """Edit `model` with UCE or RECE (`toy_closed_form`) into `out` (kept if already this
    recipe's file); one thread, as for ESD."""
    from analysis.erase.rece import train_rece
    from analysis.erase.uce import erase_uce
    from analysis.generation.models import load_model

    settings = toy_closed_form(method)
    import torch

    loaded = load_model(model, device="cpu", dtype="float32")
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        (erase_uce if method == "uce" else train_rece)(loaded, settings, Path(out))
    finally:
        torch.set_num_threads(threads)
    return Path(out)
