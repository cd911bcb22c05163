"""The toy model's training recipe: a tiny SD 1.x (diffusers classes) trained on the planted world.

Two phases on the CPU, seeded and deterministic: (1) a small AutoencoderKL learns to reconstruct
the world's images (factor-4 latents: 32 px images become 4x8x8, cheap for the UNet); its latent
scale is then set as SD's `scaling_factor`; (2) the UNet and the CLIP text encoder learn
epsilon-prediction on SD's noise schedule, with captions dropped to "" at `caption_dropout` so
classifier-free guidance (and so SLD and the negative prompt) works. The result is a diffusers
folder that `StableDiffusionPipeline.from_pretrained` and `--model` load, plus `toy.json` holding
the recipe, the training-data rates, the losses and every file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.toy.model import META_FILE
from analysis.toy.recipe import Recipe
from analysis.toy.world import (
    CONCEPT_WORD,
    NOTICE,
    SIZE,
    WORLD_VERSION,
    make_world,
    training_rates,
)

RECIPE_FILE = META_FILE
RECIPE_VERSION = 1


def build_components(seed: int) -> dict[str, Any]:
    """Untrained toy components: SD 1.x classes at toy sizes (~1.2M parameters, ~5 MB float32)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from analysis.generation.tiny import _sd_scheduler, tiny_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=SIZE,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
        )
        unet = UNet2DConditionModel(
            sample_size=SIZE // 4,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=514,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=77,
                bos_token_id=512,
                eos_token_id=513,
                pad_token_id=513,
            )
        )
    return {
        "vae": vae,
        "unet": unet,
        "text_encoder": text_encoder,
        "tokenizer": tiny_tokenizer(),
        "scheduler": _sd_scheduler(),
    }


def _to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _lr_at(step: int, recipe: Recipe, base: float, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth: a short run ends on small steps."""
    if step < recipe.warmup:
        return base * (step + 1) / recipe.warmup
    frac = (step - recipe.warmup) / max(1, total - recipe.warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))


def train_vae(
    vae: Any, pixels: torch.Tensor, recipe: Recipe, log: Callable[[str], None]
) -> list[float]:
    """Reconstruction (MSE on [-1, 1]) plus a tiny KL term; returns the loss per step."""
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    vae.train().requires_grad_(True)
    losses = []
    for step in range(recipe.vae_steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe, recipe.vae_lr, recipe.vae_steps)
        idx = torch.randint(len(pixels), (recipe.vae_batch,), generator=gen)
        x = pixels[idx]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mean).sample
        loss = (recon - x).pow(2).mean() + recipe.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == recipe.vae_steps - 1:
            log(f"vae step {step}: loss {losses[-1]:.5f}")
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def encode_latents(vae: Any, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior means of every training image (deterministic: no sampling)."""
    return torch.cat(
        [vae.encode(pixels[i : i + batch]).latent_dist.mean for i in range(0, len(pixels), batch)]
    )


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids padded to 77, exactly as the sampler encodes prompts."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def caption_targets(captions: pd.DataFrame) -> tuple[list[str], torch.Tensor]:
    """Each distinct caption (and "") with what the training set says it shows.

    Targets: the caption's concept rate in the training data (the dataset side, counted), and
    one-hot body / tree / house / unconditional. Nothing here is planted beyond the data itself.
    """
    stats = captions.groupby("caption", sort=True).agg(
        rate=("concept", "mean"), kind=("kind", "first")
    )
    kinds = ["body", "tree", "house"]
    texts = [*stats.index, ""]
    rows = [[r.rate, *(float(r.kind == k) for k in kinds), 0.0] for r in stats.itertuples()]
    rows.append([float(captions["concept"].mean()), 0.0, 0.0, 0.0, 1.0])
    return texts, torch.tensor(rows, dtype=torch.float32)


def pretrain_text(
    parts: dict[str, Any], captions: pd.DataFrame, recipe: Recipe, log: Callable[[str], None]
) -> list[float]:
    """Teach the text encoder what each caption shows before the UNet reads it.

    A linear probe on every position from the end token on (the positions that have seen the
    whole caption, and most of the 77 the UNet attends to) regresses the caption's targets.
    Without this the char-level encoder stays nearly constant for the few thousand UNet steps
    a CPU affords, and the model ignores its prompt.
    """
    encoder, tokenizer = parts["text_encoder"], parts["tokenizer"]
    texts, targets = caption_targets(captions)
    ids = tokenize(tokenizer, texts)
    eos = tokenizer.eos_token_id
    after_end = torch.cumsum((ids == eos).int(), dim=1) > 0
    head = torch.nn.Linear(encoder.config.hidden_size, targets.shape[1])
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=recipe.text_lr)
    encoder.train().requires_grad_(True)
    losses = []
    for step in range(recipe.text_steps):
        hidden = encoder(ids)[0]
        pred = head(hidden)
        err = (pred - targets[:, None, :]).pow(2).sum(-1)
        loss = (err * after_end).sum() / after_end.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == recipe.text_steps - 1:
            log(f"text step {step}: loss {losses[-1]:.5f}")
    encoder.eval().requires_grad_(False)
    return losses


def train_denoiser(
    parts: dict[str, Any],
    latents: torch.Tensor,
    ids: torch.Tensor,
    recipe: Recipe,
    log: Callable[[str], None],
) -> list[float]:
    """Epsilon prediction on SD's schedule; text encoder trained jointly, captions dropped."""
    from diffusers import DDPMScheduler

    unet, text_encoder = parts["unet"], parts["text_encoder"]
    noise_sched = DDPMScheduler.from_config(parts["scheduler"].config)
    empty = tokenize(parts["tokenizer"], [""])[0]
    gen = torch.Generator().manual_seed(recipe.seed + 2)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    for module in (unet, text_encoder):
        module.train().requires_grad_(True)
    losses = []
    steps = noise_sched.config.num_train_timesteps
    for step in range(recipe.unet_steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe, recipe.lr, recipe.unet_steps)
        idx = torch.randint(len(latents), (recipe.batch,), generator=gen)
        tokens = ids[idx].clone()
        dropped = torch.rand(recipe.batch, generator=gen) < recipe.caption_dropout
        tokens[dropped] = empty
        noise = torch.randn(latents[idx].shape, generator=gen)
        t = torch.randint(steps, (recipe.batch,), generator=gen)
        noisy = noise_sched.add_noise(latents[idx], noise, t)
        pred = unet(noisy, t, text_encoder(tokens)[0]).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == recipe.unet_steps - 1:
            recent = float(np.mean(losses[-100:]))
            log(f"unet step {step}: loss {losses[-1]:.4f} (mean of last 100: {recent:.4f})")
    for module in (unet, text_encoder):
        module.eval().requires_grad_(False)
    return losses


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a model folder except the recipe itself (relative paths, sorted)."""
    return {
        str(p.relative_to(folder)): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RECIPE_FILE
    }


def folder_sha256(hashes: dict[str, str]) -> str:
    """One digest for the whole model: the sha256 of its sorted (path, sha256) list."""
    return hashlib.sha256(json.dumps(sorted(hashes.items())).encode()).hexdigest()


def train(
    out: Path, recipe: Recipe | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train the toy model into the new folder `out` (a diffusers folder plus toy.json)."""
    from diffusers import StableDiffusionPipeline

    recipe = recipe or Recipe()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    started = time.perf_counter()
    try:
        images, captions = make_world(recipe.world())
        parts = build_components(recipe.seed)
        pixels = _to_pixels(images)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            vae_losses = train_vae(parts["vae"], pixels, recipe, log)
            latents = encode_latents(parts["vae"], pixels)
            scale = float(1.0 / latents.std())
            parts["vae"].register_to_config(scaling_factor=round(scale, 6))
            latents = latents * parts["vae"].config.scaling_factor
            text_losses = pretrain_text(parts, captions, recipe, log)
            ids = tokenize(parts["tokenizer"], captions["caption"].tolist())
            unet_losses = train_denoiser(parts, latents, ids, recipe, log)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    out.mkdir(parents=True)
    pipe.save_pretrained(out, safe_serialization=True)
    hashes = file_hashes(out)
    rates = training_rates(captions)
    meta = {
        "notice": NOTICE,
        "recipe_version": RECIPE_VERSION,
        "world_version": WORLD_VERSION,
        "concept_word": CONCEPT_WORD,
        "recipe": recipe.model_dump(),
        "world": recipe.world().as_dict(),
        "training_images": len(captions),
        "training_rates": {
            r.iso3: {"images": int(r.train_images), "concept": int(r.train_concept)}
            for r in rates.itertuples()
        },
        "vae_scaling_factor": parts["vae"].config.scaling_factor,
        "loss": {
            "vae_first": vae_losses[0],
            "vae_last100": float(np.mean(vae_losses[-100:])),
            "text_first": text_losses[0] if text_losses else None,
            "text_last": text_losses[-1] if text_losses else None,
            "unet_first100": float(np.mean(unet_losses[:100])),
            "unet_last100": float(np.mean(unet_losses[-100:])),
        },
        "train_seconds": round(seconds, 1),
        "files": hashes,
        "sha256": folder_sha256(hashes),
    }
    (out / RECIPE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log(f"trained in {seconds:.0f} s; sha256 {meta['sha256']}")
    return meta
