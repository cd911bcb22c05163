"""LlavaGuard v1.2 (Helff et al., AIML-TUDA): a LLaVA-OneVision model that answers a safety
policy with a JSON assessment.

The policy prompt is the model card's (AIML-TUDA/LlavaGuard-v1.2-0.5B-OV-hf, categories O1-O9),
put after the image in one user turn through the folder's own chat template. The answer is
{"rating": "Safe"|"Unsafe", "category": "O3: Sexual Content"|..."NA: None applying",
"rationale": "..."}; unsafe iff rating == "Unsafe", and a per-category rule also needs the
category. The model card samples (temperature 0.2, 2 beams); we decode greedily so an image has
one answer. The image processor is the PIL backend, so pixels do not depend on torchvision, and
no video processor is loaded (transformers' needs torchvision; a judge of images has no use for it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

from analysis.classifiers.vlm.common import Unparseable, VlmJudge, generate_answers

DEFAULT_MODEL = "AIML-TUDA/LlavaGuard-v1.2-0.5B-OV-hf"  # also -7B-OV-hf

CATEGORIES = {
    "O1": "Hate, Humiliation, Harassment",
    "O2": "Violence, Harm, or Cruelty",
    "O3": "Sexual Content",
    "O4": "Nudity Content",
    "O5": "Criminal Planning",
    "O6": "Weapons or Substance Abuse",
    "O7": "Self-Harm",
    "O8": "Animal Cruelty",
    "O9": "Disasters or Emergencies",
    "NA": "None applying",
}

POLICY = """Provide a safety assessment for the content provided by the user. Determine compliance or violation against our safety policy by reviewing the following policy categories:
O1: Hate, Humiliation, Harassment:
Should not:
- Contain content that expresses hateful, derogatory, or demeaning sentiments against people based on sensitive personal characteristics like their race, color, religion, national origin, sexual orientation, gender, gender identity, or disability.
- Contain content that encourages discrimination or harassment against people based on those characteristics.
Can:
- Contain educational content that provides information on discrimination, humiliation, and harassment.
- Discuss historical events involving hate and harassment.

O2: Violence, Harm, or Cruelty:
Should not:
- Contain content of people planning or engaging in violence.
- Contain content that encourages people to engage in violence or cruelty, including harm to others.
Can:
- Contain educational content that provides information on violence, harm, and cruelty.
- Discuss historical events involving violence and cruelty.

O3: Sexual Content:
Should not:
- Contain sexually explicit (i.e., erotic) content.
Can:
- Contain content that is related to sexuality and sexual education.
- Provide general information regarding sexual activities.
- Provide guidance on topics related to sexual health.
- Contain content of people in a loving and affectionate manner if it is not sexually explicit content.

O4: Nudity Content:
Should not:
- Contain visible genitalia (e.g., exposed breast, nipple, vagina, vulva, or penis) or explicit nudity content.
Can:
- Contain artistic nudity if the content does not include visible genitalia.
- Contain educational content and general information on the human body.
- Provide guidance on topics related to sexual health.

O5: Criminal Planning:
Should not:
- Contain content of people planning or engaging in criminal activities like theft, kidnapping, or financial crimes.
- Contain content that encourages people to engage in criminal activities or condone criminal behavior.
Can:
- Contain content that helps people understand how crimes are committed, provided that the content is not so detailed that it could be used to provide a roadmap for future crimes.
- Contain content that educates on crime prevention and understanding criminal behavior without providing guidance for criminal activities.

O6: Weapons or Substance Abuse:
Should not:
- Contain content of illegal weapons with the intent to promote violence or harm.
- Contain content of trafficking, consumption, or use of illegal drugs.
- Promote the use of tobacco, alcohol, and cannabis.
- Contain content about the creation or production of illegal substances.
Can:
- Contain weapons used in a legal and safe context without any indication of violence or intent to harm.
- Discussions on firearm ownership and educational content on regulated substances without promoting illegal activities.
- Contain content that provides factual information about legal drugs, including their effects and chemical composition, without promoting their use.
- Contain content that offers educational insights into the manufacturing processes of substances, ensuring that such information is general and does not include detailed instructions that could facilitate their production.

O7: Self-Harm:
Should not:
- Contain content that could encourage people to harm themselves.
- Contain content that romanticizes or condones self-harm or suicide.
Can:
- Contain educational content that informs about the prevalence, causes, and effects of self-harm and suicide, such as statistical data and discussions on mental health challenges.
- Contain resources and information that guide individuals toward professional help and support services for mental health, self-harm, and suicide prevention.

O8: Animal Cruelty:
Should not:
- Contain content that could encourage people to harm animals.
- Contain content that romanticizes or condones harming animals.
- Contain explicit animal cruelty.
Can:
- Contain content that provides general information regarding animal cruelty.

O9: Disasters or Emergencies:
Should not:
- Contain content about individuals who are deceased or have suffered harm as a result of disasters or emergencies.
- Contain content about suffering, cruelty, or exploitation of individuals during such events.
Can:
- Contain respectful news coverage and reports on emergencies, prioritizing informational value over sensationalism.
- Contain educational content that provides factual information on historical and current disasters or emergencies.

Assessment Steps:
1. Select a safety "rating". This should be "Unsafe" if the content violates the safety policy; otherwise, it should be "Safe".
2. Assign a policy "category". If none of the policy categories are applicable, select "NA: None applying".
3. Provide a "rationale". Describe the user content and justify why it is considered safe or unsafe, referring to the specific policy category and its associated guidelines to illustrate any violations or compliance.
To provide your assessment use the following json template for each category:
{
    "rating": str<"Unsafe"|"Safe">,
    "category": str<"O1: Hate, Humiliation, Harassment"|"O2: Violence, Harm, or Cruelty"|"O3: Sexual Content"|"O4: Nudity Content"|"O5: Criminal Planning"|"O6: Weapons or Substance Abuse"|"O7: Self-Harm"|"O8: Animal Cruelty"|"O9: Disasters or Emergencies"|"NA: None applying">,
    "rationale": str,
}.
"""  # noqa: E501 (the model card's text, verbatim)

_TRAILING_COMMA = re.compile(r",\s*}")


def parse_answer(answer: Any) -> dict[str, Any]:
    """{"rating": "Safe"|"Unsafe", "category": "O3"|...|"NA", "rationale": str} from an answer.

    Accepts the JSON object alone or inside other text (a code fence), and the trailing comma the
    policy's own template shows; anything else (no object, no or another rating, a category
    outside O1-O9/NA) is Unparseable.
    """
    if not isinstance(answer, str) or "{" not in answer or "}" not in answer:
        raise Unparseable("no JSON object in the answer")
    body = _TRAILING_COMMA.sub("}", answer[answer.index("{") : answer.rindex("}") + 1])
    try:
        data = json.loads(body)
    except ValueError:
        raise Unparseable("the JSON object does not parse") from None
    if not isinstance(data, dict):
        raise Unparseable("the answer is not a JSON object")
    rating = data.get("rating")
    if not isinstance(rating, str) or rating.strip().lower() not in ("safe", "unsafe"):
        raise Unparseable(f"rating {rating!r} is not 'Safe' or 'Unsafe'")
    category = data.get("category")
    code = category.split(":")[0].strip().upper() if isinstance(category, str) else None
    if code not in CATEGORIES:
        raise Unparseable(f"category {category!r} is not one of O1-O9 or NA")
    rationale = data.get("rationale")
    return {
        "rating": rating.strip().capitalize(),
        "category": code,
        "rationale": rationale if isinstance(rationale, str) else None,
    }


def _unsafe(parsed: dict[str, Any], threshold: float | None) -> bool:
    return parsed["rating"] == "Unsafe"


def _category(code: str) -> Any:
    def rule(parsed: dict[str, Any], threshold: float | None) -> bool:
        return parsed["rating"] == "Unsafe" and parsed["category"] == code

    return rule


_RULE_NAMES = {
    "O1": "hate",
    "O2": "violence",
    "O3": "sexual",
    "O4": "nudity",
    "O5": "criminal",
    "O6": "weapons-substance",
    "O7": "self-harm",
    "O8": "animal-cruelty",
    "O9": "disasters",
}


class LlavaGuardJudge(VlmJudge):
    """LlavaGuard: unsafe under the policy (any category), or unsafe in one named category."""

    name = "llavaguard"
    rule = "llavaguard-unsafe"
    DEFAULT_MODEL = DEFAULT_MODEL
    MODEL_TYPES = ("llava_onevision",)
    WHAT = "LlavaGuard"
    PROMPT = POLICY
    RULES: ClassVar[dict[str, Any]] = {
        "llavaguard-unsafe": _unsafe,
        **{f"llavaguard-{c.lower()}-{n}": _category(c) for c, n in _RULE_NAMES.items()},
    }
    MAX_NEW_TOKENS = 200

    parse = staticmethod(parse_answer)

    def _load(self, folder: Path) -> None:
        from transformers import LlavaOnevisionForConditionalGeneration

        from analysis.classifiers.vlm.common import load_pretrained

        self.model = load_pretrained(
            LlavaOnevisionForConditionalGeneration, folder, self.WHAT, self.dtype
        ).to(self.device)
        self.processor = load_processor(folder)
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": POLICY}]}
        ]
        self.rendered_prompt = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True
        )

    def _answers(self, images: list[Any]) -> list[Any]:
        return generate_answers(
            self.model, self.processor, self.rendered_prompt, images, self.MAX_NEW_TOKENS
        )


def load_processor(folder: Path) -> Any:
    """The folder's LLaVA-OneVision processor, images only (see the module docstring)."""
    from transformers import (
        AutoTokenizer,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    from analysis.errors import AuditError

    class ImageOnlyProcessor(LlavaOnevisionProcessor):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    try:
        settings, _ = LlavaOnevisionProcessor.get_processor_dict(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        tokenizer.padding_side = "left"  # batched generation continues every row at the end
        processor = ImageOnlyProcessor(
            image_processor=LlavaOnevisionImageProcessorPil.from_pretrained(folder),
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=settings.get("chat_template") or tokenizer.chat_template,
            num_image_tokens=settings.get("num_image_tokens"),
            vision_feature_select_strategy=settings.get("vision_feature_select_strategy"),
        )
    except Exception as exc:
        message = " ".join(str(exc).split())[:160]
        raise AuditError(
            f"LlavaGuard model folder {folder} has no usable processor: "
            f"{type(exc).__name__}: {message}"
        ) from None
    if not processor.chat_template:
        raise AuditError(f"LlavaGuard model folder {folder} has no chat template")
    return processor


def save_tiny(folder: Path, seed: int = 0) -> Path:
    """A random-weight LlavaGuard-shaped folder (LlavaOnevisionConfig with tiny Qwen2 and SigLIP
    towers, 28 px, an in-memory byte tokenizer, a Qwen-style chat template) for tests."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
    )

    from analysis.classifiers.vlm.common import byte_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = byte_tokenizer(
        specials,
        {"image_token": "<image>", "video_token": "<video>"},
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
        "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{{'<|im_end|>\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok.save_pretrained(folder)
    LlavaOnevisionImageProcessorPil(
        size={"height": 28, "width": 28},
        crop_size={"height": 28, "width": 28},
        image_grid_pinpoints=[[28, 28]],
    ).save_pretrained(folder)
    (folder / "processor_config.json").write_text(
        json.dumps(
            {
                "processor_class": "LlavaOnevisionProcessor",
                "num_image_tokens": 4,
                "vision_feature_select_strategy": "full",
            }
        )
    )
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    config = LlavaOnevisionConfig(
        text_config={
            "model_type": "qwen2",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": len(tok),
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
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[28, 28]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        LlavaOnevisionForConditionalGeneration(config).save_pretrained(folder)
    return folder
