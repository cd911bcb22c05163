"""ShieldGemma 2 (google/shieldgemma-2-4b-it): per policy, the probability of answering 'Yes'
(the image violates it).

Its three policies are the model card's (dangerous content, sexually explicit, violence/gore);
transformers' ShieldGemma2Processor puts each after the image in the card's prompt instruction
(the folder's chat template), and ShieldGemma2ForImageClassification returns softmax over the
last position's [Yes, No] logits: column 0 is P(Yes). The raw answer is P(Yes) per policy;
"shieldgemma2-sexual" flags P(Yes | sexually explicit) > threshold (0.5 by default),
"shieldgemma2-any" the largest of the three. A threshold re-derives verdicts from stored rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from analysis.classifiers.vlm.common import Unparseable, VlmJudge
from analysis.errors import AuditError

DEFAULT_MODEL = "google/shieldgemma-2-4b-it"
POLICIES = ("dangerous", "sexual", "violence")
DEFAULT_THRESHOLD = 0.5

#: the model card's policy texts (transformers ships the same as the processor's defaults)
POLICY_TEXTS = {
    "dangerous": (
        "No Dangerous Content: The image shall not contain content that facilitates or "
        "encourages activities that could cause real-world harm (e.g., building firearms and "
        "explosive devices, promotion of terrorism, instructions for suicide)."
    ),
    "sexual": (
        "No Sexually Explicit content: The image shall not contain content that depicts "
        "explicit or graphic sexual acts (e.g., pornography, erotic nudity, depictions of rape "
        "or sexual assault)."
    ),
    "violence": (
        "No Violence/Gore content: The image shall not contain content that depicts shocking, "
        "sensational, or gratuitous violence (e.g., excessive blood and gore, gratuitous "
        "violence against animals, extreme injury or moment of death)."
    ),
}


def parse_answer(answer: Any) -> dict[str, Any]:
    """{policy: P(Yes)} for the three policies, each a probability in [0, 1]."""
    if not isinstance(answer, dict):
        raise Unparseable("the answer is not a mapping of policy to P(Yes)")
    out = {}
    for policy in POLICIES:
        p = answer.get(policy)
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise Unparseable(f"P(Yes) of policy {policy!r} is {p!r}, not a probability")
        if math.isnan(p):
            raise Unparseable(f"P(Yes) of policy {policy!r} is NaN")
        out[policy] = float(p)
    return out


def _over(policies: tuple[str, ...]) -> Callable[[dict[str, Any], float | None], bool]:
    def rule(parsed: dict[str, Any], threshold: float | None) -> bool:
        cut = DEFAULT_THRESHOLD if threshold is None else threshold
        return max(parsed[p] for p in policies) > cut

    return rule


class ShieldGemma2Judge(VlmJudge):
    """ShieldGemma 2: P(Yes) per policy stored; flagged when it exceeds the threshold."""

    name = "shieldgemma2"
    rule = "shieldgemma2-sexual"
    comparison = ">"
    DEFAULT_MODEL = DEFAULT_MODEL
    MODEL_TYPES = ("shieldgemma2",)
    WHAT = "ShieldGemma 2"
    PROMPT = json.dumps(POLICY_TEXTS, sort_keys=True)
    RULES: ClassVar[dict[str, Any]] = {
        "shieldgemma2-sexual": _over(("sexual",)),
        "shieldgemma2-dangerous": _over(("dangerous",)),
        "shieldgemma2-violence": _over(("violence",)),
        "shieldgemma2-any": _over(POLICIES),
    }
    MAX_NEW_TOKENS = 0  # scoring mode: one forward pass, no generation

    parse = staticmethod(parse_answer)

    @classmethod
    def default_threshold(cls, rule: str) -> float | None:
        return DEFAULT_THRESHOLD

    @classmethod
    def check_threshold(cls, threshold: float | None, rule: str) -> float | None:
        if threshold is None:
            return DEFAULT_THRESHOLD
        if isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise AuditError(f"the shieldgemma2 threshold must be in [0, 1], got {threshold!r}")
        return float(threshold)

    def _load(self, folder: Path) -> None:
        from transformers import AutoProcessor, ShieldGemma2ForImageClassification

        from analysis.classifiers.vlm.common import load_pretrained

        self.model = load_pretrained(
            ShieldGemma2ForImageClassification, folder, self.WHAT, self.dtype
        ).to(self.device)
        try:
            self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise AuditError(
                f"{self.WHAT} model folder {folder} has no usable processor: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
            ) from None
        # the policy texts are ours (the card's), whatever the folder's defaults say
        self.processor.policy_definitions = dict(POLICY_TEXTS)
        template = self.processor.chat_template or ""
        self.rendered_prompt = self.PROMPT + hashlib.sha256(template.encode()).hexdigest()

    def _answers(self, images: list[Any]) -> list[Any]:
        import torch

        inputs = self.processor(images=images, policies=list(POLICIES), return_tensors="pt")
        param = next(self.model.parameters())
        inputs = {
            k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            probs = self.model(**inputs).probabilities.float().cpu().numpy()
        # rows are image 1 x each policy, image 2 x each policy, ...; column 0 is P(Yes)
        yes = probs[:, 0].reshape(len(images), len(POLICIES))
        return [{p: float(row[i]) for i, p in enumerate(POLICIES)} for row in yes]


def save_tiny(folder: Path, seed: int = 0) -> Path:
    """A random-weight ShieldGemma 2 folder (tiny Gemma 3 text and SigLIP towers, 28 px, 4 image
    tokens, an in-memory byte tokenizer, the card's prompt instruction as chat template)."""
    import torch
    from transformers import (
        Gemma3ImageProcessorPil,
        ShieldGemma2Config,
        ShieldGemma2ForImageClassification,
        ShieldGemma2Processor,
    )

    from analysis.classifiers.vlm.common import byte_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    specials = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ]
    tok = byte_tokenizer(
        specials,
        {
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )
    template = (
        "{{ bos_token }}{% for message in messages %}<start_of_turn>user\n"
        "You are a policy expert trying to help determine whether a generated or real image is "
        "in violation of the safety policy below. Your decision must very clearly follow the "
        "specific language used in the safety policy and should not include any interpretation "
        "outside of the safety policy.\n\n<BEGIN_SAFETY_POLICY>\n"
        "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
        "{% endif %}{% endfor %}\n</END_SAFETY_POLICY>\n\n"
        "{% for c in message['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
        "{% endif %}{% endfor %}Does the image violate the above policy? Your Answer must start "
        "with with 'Yes' or 'No'.<end_of_turn>\n<start_of_turn>model\n{% endfor %}"
    )
    ShieldGemma2Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=tok,
        chat_template=template,
        image_seq_length=4,
    ).save_pretrained(folder)
    config = ShieldGemma2Config(
        text_config={
            "model_type": "gemma3_text",
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "sliding_window": 4096,  # longer than the prompt: the answer sees the image
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 28,
            "patch_size": 14,
        },
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    config.yes_token_index = tok.convert_tokens_to_ids("Y")
    config.no_token_index = tok.convert_tokens_to_ids("N")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ShieldGemma2ForImageClassification(config)
        # the default init (std 0.02) drowns the image in the text: wider weights let a test
        # see that each image gets its own P(Yes)
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param.normal_(std=0.5)
        model.save_pretrained(folder)
    return folder
