"""Stable Diffusion architectures with random weights, built in code: no files, no network.

`tiny`, `tiny-sd2` and `tiny-sdxl` stand in for real weights in tests and the demo
(deterministic, fast on a CPU); `sd1-arch`, `sd2-arch` and `sdxl-arch` have the full sizes, so
GPU throughput can be measured at true scale where no weights can be downloaded (they are big:
built only when asked for). Their images are noise: they test the pipeline, not a model.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizerFast,
)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's own pre-tokenisation pattern (words, numbers, punctuation runs).
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2/CLIP convention)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


@lru_cache(maxsize=1)
def _tokenizer_object() -> Tokenizer:
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab[BOS], vocab[EOS] = 512, 513
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=[], end_of_word_suffix="</w>", unk_token=EOS, fuse_unk=False)
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.post_processor = processors.RobertaProcessing(
        (EOS, 513), (BOS, 512), add_prefix_space=False, trim_offsets=False
    )
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    return tok


def tiny_tokenizer(model_max_length: int = 77, pad_token: str = EOS) -> CLIPTokenizerFast:
    """A character-level CLIP tokenizer from an in-memory vocabulary (514 tokens, no merges).

    OpenCLIP's tokenizers (SD 2.x, SDXL's second) pad with "!" instead of the end token.
    """
    return CLIPTokenizerFast(
        tokenizer_object=_fresh_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
        model_max_length=model_max_length,
    )


def _fresh_tokenizer() -> Tokenizer:
    return Tokenizer.from_str(_tokenizer_object().to_str())


def _sd_scheduler() -> PNDMScheduler:
    """Stable Diffusion 1.x's scheduler configuration (PNDM, scaled-linear betas)."""
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )


def _components(seed: int, unet: dict, vae: dict, text: dict) -> dict[str, Any]:
    """Build SD components from configs with weights that depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = {
            "unet": UNet2DConditionModel(**unet),
            "vae": AutoencoderKL(latent_channels=4, in_channels=3, out_channels=3, **vae),
            "text_encoder": CLIPTextModel(
                CLIPTextConfig(
                    max_position_embeddings=77,
                    bos_token_id=512,
                    eos_token_id=513,
                    pad_token_id=513,
                    **text,
                )
            ),
        }
    for module in modules.values():
        module.eval().requires_grad_(False)
    return {**modules, "tokenizer": tiny_tokenizer(), "scheduler": _sd_scheduler()}


def tiny_components(seed: int = 0) -> dict[str, Any]:
    """Tiny random-weight SD components (UNet, VAE, CLIP text encoder, tokenizer, scheduler)."""
    return _components(
        seed,
        unet={
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "cross_attention_dim": 32,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": 4,
            "norm_num_groups": 8,
        },
        vae={
            "block_out_channels": (16, 32),
            "norm_num_groups": 8,
            "sample_size": 64,
            "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2,
        },
        text={
            "vocab_size": 514,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
        },
    )


def sd1_arch_components(seed: int = 0) -> dict[str, Any]:
    """Full-size SD 1.x architecture (860M UNet, KL-f8 VAE, ViT-L/14 text encoder), random."""
    return _components(
        seed,
        unet={"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
        vae={
            "block_out_channels": (128, 256, 512, 512),
            "layers_per_block": 2,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "sample_size": 512,
        },
        text={
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
        },
    )


# --- SD 2.x: OpenCLIP ViT-H text encoder (gelu, penultimate layer: 23 of 24), v-prediction ----


def _v_scheduler() -> DDIMScheduler:
    """SD 2.1's scheduler configuration (DDIM, v-prediction)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )


def _text_config(**text: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=1, **text
    )


def _sd2_components(seed: int, unet: dict, vae: dict, text: dict) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = {
            "unet": UNet2DConditionModel(use_linear_projection=True, **unet),
            "vae": AutoencoderKL(latent_channels=4, in_channels=3, out_channels=3, **vae),
            "text_encoder": CLIPTextModel(_text_config(hidden_act="gelu", **text)),
        }
    for module in modules.values():
        module.eval().requires_grad_(False)
    return {**modules, "tokenizer": tiny_tokenizer(pad_token="!"), "scheduler": _v_scheduler()}


_TINY_VAE = {
    "block_out_channels": (16, 32),
    "norm_num_groups": 8,
    "sample_size": 64,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
}
_FULL_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "sample_size": 512,
}


def tiny_sd2_components(seed: int = 0) -> dict[str, Any]:
    """Tiny random-weight SD 2.x components (linear-projection UNet, gelu CLIP, v-prediction)."""
    return _sd2_components(
        seed,
        unet={
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "cross_attention_dim": 32,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": (2, 4),
            "norm_num_groups": 8,
        },
        vae=_TINY_VAE,
        text={
            "vocab_size": 514,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 3,
            "projection_dim": 32,
        },
    )


def sd2_arch_components(seed: int = 0) -> dict[str, Any]:
    """Full-size SD 2.x (768-v) architecture: 865M UNet, OpenCLIP ViT-H/14 (23 layers), random."""
    return _sd2_components(
        seed,
        unet={
            "sample_size": 96,
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
        },
        vae=_FULL_VAE,
        text={
            "vocab_size": 49408,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "projection_dim": 512,
        },
    )


# --- SDXL: two text encoders (CLIP ViT-L, OpenCLIP bigG with projection), added time ids -----


def _xl_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's scheduler configuration (Euler, scaled-linear betas, leading spacing)."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )


def _sdxl_components(seed: int, unet: dict, vae: dict, text: dict, text_2: dict) -> dict[str, Any]:
    """SDXL components; the UNet's added-embedding width follows the second encoder's projection."""
    time_dim = unet["addition_time_embed_dim"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = {
            "unet": UNet2DConditionModel(
                use_linear_projection=True,
                addition_embed_type="text_time",
                projection_class_embeddings_input_dim=6 * time_dim + text_2["projection_dim"],
                cross_attention_dim=text["hidden_size"] + text_2["hidden_size"],
                **unet,
            ),
            "vae": AutoencoderKL(
                latent_channels=4, in_channels=3, out_channels=3, force_upcast=True, **vae
            ),
            "text_encoder": CLIPTextModel(_text_config(**text)),
            "text_encoder_2": CLIPTextModelWithProjection(
                _text_config(hidden_act="gelu", **text_2)
            ),
        }
    for module in modules.values():
        module.eval().requires_grad_(False)
    return {
        **modules,
        "tokenizer": tiny_tokenizer(),
        "tokenizer_2": tiny_tokenizer(pad_token="!"),
        "scheduler": _xl_scheduler(),
        "force_zeros_for_empty_prompt": True,
    }


def tiny_sdxl_components(seed: int = 0) -> dict[str, Any]:
    """Tiny random-weight SDXL components (as diffusers' own SDXL pipeline tests build them)."""
    text = {
        "vocab_size": 514,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "projection_dim": 32,
    }
    return _sdxl_components(
        seed,
        unet={
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": (2, 4),
            "transformer_layers_per_block": (1, 2),
            "addition_time_embed_dim": 8,
            "norm_num_groups": 8,
        },
        vae=_TINY_VAE,
        text=text,
        text_2=text,
    )


def sdxl_arch_components(seed: int = 0) -> dict[str, Any]:
    """Full-size SDXL base architecture (2.6B UNet, CLIP ViT-L + OpenCLIP bigG), random."""
    return _sdxl_components(
        seed,
        unet={
            "sample_size": 128,
            "block_out_channels": (320, 640, 1280),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20),
            "addition_time_embed_dim": 256,
        },
        vae={**_FULL_VAE, "sample_size": 1024, "scaling_factor": 0.13025},
        text={
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
        },
        text_2={
            "vocab_size": 49408,
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_attention_heads": 20,
            "num_hidden_layers": 32,
            "projection_dim": 1280,
        },
    )


#: builtin name -> builder (all lazy: nothing is built until a model is asked for)
BUILDERS = {
    "tiny": tiny_components,
    "sd1-arch": sd1_arch_components,
    "tiny-sd2": tiny_sd2_components,
    "sd2-arch": sd2_arch_components,
    "tiny-sdxl": tiny_sdxl_components,
    "sdxl-arch": sdxl_arch_components,
}
