"""Flow-matching transformers (SD3, FLUX) with random weights, built in code: no files, no network.

`tiny-sd3`, `tiny-flux` (schnell-like: no guidance embedding) and `tiny-flux-dev` (dev-like:
distilled guidance embedding) stand in for real weights in tests; `sd3-arch` and `flux-arch`
have the full sizes (SD3 medium, FLUX.1-dev) for GPU throughput only. Their images are noise.

T5's tokenizer is built in code too: transformers' `T5TokenizerFast` takes a Unigram vocabulary
as a list of (piece, score), so a character-level vocabulary ("<pad>" 0, "</s>" 1, "<unk>" 2, as
T5's) needs no sentencepiece file. The CLIP slots reuse `tiny.tiny_tokenizer`.
"""

from __future__ import annotations

import string
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from analysis.generation.tiny import tiny_tokenizer

#: the T5 sequence length of the tiny models (the real ones: 256 for SD3, 512 for FLUX)
TINY_T5_LENGTH = 32
_CHARS = string.ascii_letters + string.digits + string.punctuation + "▁"


def tiny_t5_tokenizer(model_max_length: int = TINY_T5_LENGTH) -> T5TokenizerFast:
    """A character-level T5 tokenizer from an in-memory Unigram vocabulary (no spiece.model)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in _CHARS]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _t5(d_model: int, layers: int, heads: int, d_ff: int, vocab: int) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab,
            d_model=d_model,
            d_kv=d_model // heads,
            d_ff=d_ff,
            num_layers=layers,
            num_heads=heads,
            relative_attention_num_buckets=8 if d_model < 256 else 32,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _clip(projection: bool, hidden: int, layers: int, heads: int, proj: int, act: str) -> Any:
    config = CLIPTextConfig(
        vocab_size=514 if hidden < 256 else 49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden if hidden < 256 else 4 * hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        projection_dim=proj,
        hidden_act=act,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=1,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(channels: tuple[int, ...], groups: int, scaling: float, shift: float) -> AutoencoderKL:
    """An SD3/FLUX-style VAE: 16 latent channels, no quant convs, a scaling and shift factor."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=channels,
        layers_per_block=1 if channels[0] < 64 else 2,
        norm_num_groups=groups,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling,
        shift_factor=shift,
        sample_size=32 if channels[0] < 64 else 1024,
    )


def _frozen(modules: dict[str, Any]) -> dict[str, Any]:
    for module in modules.values():
        module.eval().requires_grad_(False)
    return modules


def _sd3(seed: int, big: bool) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if big:  # SD3 medium: MMDiT 2B, CLIP-L + OpenCLIP bigG, T5-XXL
            transformer = SD3Transformer2DModel(
                sample_size=128,
                num_layers=24,
                attention_head_dim=64,
                num_attention_heads=24,
                joint_attention_dim=4096,
                caption_projection_dim=1536,
                pooled_projection_dim=2048,
                pos_embed_max_size=192,
            )
            clip_1 = _clip(True, 768, 12, 12, 768, "quick_gelu")
            clip_2 = _clip(True, 1280, 32, 20, 1280, "gelu")
            t5 = _t5(4096, 24, 64, 10240, 32128)
            vae = _vae((128, 256, 512, 512), 32, 1.5305, 0.0609)
        else:
            transformer = SD3Transformer2DModel(
                sample_size=4,
                patch_size=2,
                in_channels=16,
                out_channels=16,
                num_layers=1,
                attention_head_dim=8,
                num_attention_heads=4,
                joint_attention_dim=64,
                caption_projection_dim=32,
                pooled_projection_dim=64,
                pos_embed_max_size=16,
            )
            clip_1 = _clip(True, 32, 2, 4, 32, "quick_gelu")
            clip_2 = _clip(True, 32, 2, 4, 32, "gelu")
            t5 = _t5(64, 2, 4, 64, 3 + len(_CHARS))
            vae = _vae((8, 8, 8, 8), 4, 1.5305, 0.0609)
        modules = _frozen(
            {
                "transformer": transformer,
                "vae": vae,
                "text_encoder": clip_1,
                "text_encoder_2": clip_2,
                "text_encoder_3": t5,
            }
        )
    return {
        **modules,
        "tokenizer": tiny_tokenizer(),
        "tokenizer_2": tiny_tokenizer(pad_token="!"),
        "tokenizer_3": tiny_t5_tokenizer(TINY_T5_LENGTH if not big else 512),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }


def _flux_scheduler(dev: bool) -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's scheduler shifts by image size (mu); schnell's does not (shift 1)."""
    if dev:
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)


def _flux(seed: int, big: bool, dev: bool) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if big:  # FLUX.1: 12B transformer, CLIP-L, T5-XXL
            transformer = FluxTransformer2DModel(guidance_embeds=dev)
            clip = _clip(False, 768, 12, 12, 768, "quick_gelu")
            t5 = _t5(4096, 24, 64, 10240, 32128)
            vae = _vae((128, 256, 512, 512), 32, 0.3611, 0.1159)
        else:
            transformer = FluxTransformer2DModel(
                patch_size=1,
                in_channels=64,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=64,
                pooled_projection_dim=32,
                guidance_embeds=dev,
                axes_dims_rope=(4, 6, 6),
            )
            clip = _clip(False, 32, 2, 4, 32, "quick_gelu")
            t5 = _t5(64, 2, 4, 64, 3 + len(_CHARS))
            vae = _vae((8, 8, 8, 8), 4, 0.3611, 0.1159)
        modules = _frozen(
            {"transformer": transformer, "vae": vae, "text_encoder": clip, "text_encoder_2": t5}
        )
    return {
        **modules,
        "tokenizer": tiny_tokenizer(),
        "tokenizer_2": tiny_t5_tokenizer(TINY_T5_LENGTH if not big else 512),
        "scheduler": _flux_scheduler(dev),
    }


def tiny_sd3_components(seed: int = 0) -> dict[str, Any]:
    """Tiny random-weight SD3 (MMDiT, two CLIPs with projection, T5, 16-channel VAE x8)."""
    return _sd3(seed, big=False)


def sd3_arch_components(seed: int = 0) -> dict[str, Any]:
    """Full-size SD3 medium architecture with random weights (about 7B parameters with T5)."""
    return _sd3(seed, big=True)


def tiny_flux_components(seed: int = 0) -> dict[str, Any]:
    """Tiny random-weight FLUX.1-schnell-like model (no guidance embedding, no shift)."""
    return _flux(seed, big=False, dev=False)


def tiny_flux_dev_components(seed: int = 0) -> dict[str, Any]:
    """Tiny random-weight FLUX.1-dev-like model (distilled guidance embedding, shifted sigmas)."""
    return _flux(seed, big=False, dev=True)


def flux_arch_components(seed: int = 0) -> dict[str, Any]:
    """Full-size FLUX.1-dev architecture with random weights (12B transformer + T5-XXL)."""
    return _flux(seed, big=True, dev=True)


#: builtin name -> (family, builder); built only when asked for
FLOW_BUILDERS = {
    "tiny-sd3": ("sd3", tiny_sd3_components),
    "sd3-arch": ("sd3", sd3_arch_components),
    "tiny-flux": ("flux", tiny_flux_components),
    "tiny-flux-dev": ("flux", tiny_flux_dev_components),
    "flux-arch": ("flux", flux_arch_components),
}
