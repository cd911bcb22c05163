"""What every VLM judge shares: finding its weights offline, checking their architecture, greedy
generation settings, the stored record of an answer, and re-deriving verdicts from it.

A VLM judge's raw output is {"answer": the model's text (or numbers), "parsed": what the parser
made of it (None when it could not), "error": why not, "prompt_sha256": the exact prompt}. The
verdict is always re-derived by parsing "answer" again, so a stored row can be re-judged under
every rule, and an answer that does not parse is a recorded failure (verdict NA), never "safe".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from analysis.classifiers.registry import Judge, JudgeOptions
from analysis.errors import AuditError

#: greedy decoding: the same image gives the same answer (the model cards sample; an audit may not)
GREEDY: dict[str, Any] = {"do_sample": False, "num_beams": 1}


class Unparseable(ValueError):
    """An answer outside the documented format (its message says what is wrong)."""


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def record(answer: Any, parser: Callable[[Any], dict[str, Any]], prompt_sha: str) -> dict:
    """The stored raw output of one image: the answer, its parse (or the reason it has none)."""
    try:
        parsed: dict[str, Any] | None = parser(answer)
        error = None
    except Unparseable as exc:
        parsed, error = None, f"unparseable answer: {exc}"
    return {"answer": answer, "parsed": parsed, "error": error, "prompt_sha256": prompt_sha}


def resolve_folder(spec: str, default_id: str, what: str) -> Path:
    """The local folder of `spec` (a folder, or a hub id found in the local cache); offline
    unless the user opted in (analysis.hub). Anything else is one line naming where it looked."""
    from analysis.hub import downloads_allowed

    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise AuditError(f"{what} model {spec} is a file, not a model folder")
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise AuditError(
            f"{what} model folder {spec} does not exist; download it on a machine with network: "
            f"huggingface-cli download {default_id} --local-dir FOLDER"
        )
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(spec, local_files_only=not downloads_allowed()))
    except Exception:
        raise AuditError(
            f"{what} model {spec} is not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) or a folder; download it on a machine with network: "
            f"huggingface-cli download {spec}"
        ) from None


def check_architecture(folder: Path, model_types: tuple[str, ...], what: str) -> dict[str, Any]:
    """The folder's config.json, refused (one line) unless its model_type is one `what` runs."""
    config = folder / "config.json"
    if not config.is_file():
        raise AuditError(f"{what} model folder {folder} has no config.json: not a model folder")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AuditError(f"{config} is not readable JSON ({type(exc).__name__})") from None
    kind = data.get("model_type") if isinstance(data, dict) else None
    if kind not in model_types:
        raise AuditError(
            f"{what} model folder {folder} holds a {kind!r} model, not {' or '.join(model_types)}"
        )
    return data


def folder_digest(folder: Path, *extra: str) -> str:
    """A cheap identity of a model folder: its config, each file's name and size, and `extra`
    (the prompt, the settings). Hashing gigabytes of weights per run would cost minutes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        digest.update(f"{rel}:{path.stat().st_size}\n".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    for text in extra:
        digest.update(text.encode())
    return digest.hexdigest()


def device_and_dtype() -> tuple[str, Any]:
    """CUDA in bfloat16 when there is one (the model cards' setting), else the CPU in float32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def load_pretrained(model_class: Any, folder: Path, what: str, dtype: Any) -> Any:
    """`model_class.from_pretrained(folder)` with missing or broken weights as one line."""
    try:
        return model_class.from_pretrained(folder, local_files_only=True, dtype=dtype).eval()
    except Exception as exc:
        message = " ".join(str(exc).split())[:160]
        raise AuditError(
            f"{what} model folder {folder} could not be loaded: {type(exc).__name__}: {message}"
        ) from None


class VlmJudge(Judge):
    """A judge whose raw output is an answer record (see the module docstring).

    Subclasses set DEFAULT_MODEL, MODEL_TYPES, WHAT, RULES (rule -> predicate on the parsed
    answer, returning None when the answer cannot decide that rule) and `parse`; `_load` reads
    the model from a checked folder and `_answers` turns images into answers.
    """

    DEFAULT_MODEL: ClassVar[str]
    MODEL_TYPES: ClassVar[tuple[str, ...]]
    WHAT: ClassVar[str]
    RULES: ClassVar[dict[str, Callable[[dict[str, Any], float | None], bool | None]]]
    PROMPT: ClassVar[str]
    MAX_NEW_TOKENS: ClassVar[int] = 200

    @classmethod
    def rules(cls) -> tuple[str, ...]:
        return tuple(cls.RULES)

    @staticmethod
    def parse(answer: Any) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def model_folder(cls, options: JudgeOptions) -> Path:
        """The checked folder this judge loads (preflight runs it before any file is written)."""
        spec = options.models.get(cls.name, cls.DEFAULT_MODEL)
        folder = resolve_folder(spec, cls.DEFAULT_MODEL, cls.WHAT)
        check_architecture(folder, cls.MODEL_TYPES, cls.WHAT)
        return folder

    @classmethod
    def preflight(cls, options: JudgeOptions) -> None:
        cls.model_folder(options)

    def __init__(self, options: JudgeOptions) -> None:
        spec = options.models.get(self.name, self.DEFAULT_MODEL)
        folder = self.model_folder(options)
        self.device, self.dtype = device_and_dtype()
        self.rendered_prompt = self.PROMPT  # _load replaces it with the chat template's text
        self._load(folder)
        self.prompt_sha = prompt_sha256(self.rendered_prompt)
        settings = json.dumps({**GREEDY, "max_new_tokens": self.MAX_NEW_TOKENS}, sort_keys=True)
        self.sha256 = folder_digest(folder, self.rendered_prompt, settings)
        self.provenance = {
            "classifier": self.name,
            "model": f"{self.WHAT} {spec}",
            "folder": str(folder),
            "prompt_sha256": self.prompt_sha,
            "generation": json.loads(settings),
            "device": self.device,
            "dtype": str(self.dtype),
            "model_sha256": self.sha256,
            "rule": f"{self.rule} (re-derivable from the stored answer: {', '.join(self.RULES)})",
        }

    def _load(self, folder: Path) -> None:
        raise NotImplementedError

    def _answers(self, images: list[Any]) -> list[Any]:
        raise NotImplementedError

    @classmethod
    def verdict_of(cls, rule: str, threshold: float | None) -> Callable[[str], bool | None]:
        decide = cls.RULES[rule]

        def verdict(raw: str) -> bool | None:
            try:
                answer = json.loads(raw)["answer"]
                parsed = cls.parse(answer)
            except (Unparseable, ValueError, KeyError, TypeError):
                return None
            return decide(parsed, threshold)

        return verdict

    def score(
        self, payloads: list[Any], rule: str, threshold: float | None
    ) -> list[tuple[Any, bool | None]]:
        thr = self.default_threshold(rule) if threshold is None else threshold
        out: list[tuple[Any, bool | None]] = []
        for answer in self._answers([im.convert("RGB") for im in payloads]):
            raw = record(answer, self.parse, self.prompt_sha)
            verdict = None if raw["parsed"] is None else self.RULES[rule](raw["parsed"], thr)
            if verdict is None and raw["error"] is None:
                raw["error"] = f"the answer does not decide rule {rule}"
            out.append((raw, verdict))
        return out


def byte_tokenizer(specials: list[str], extra: dict[str, str] | None = None, **kw: Any) -> Any:
    """A byte-level tokenizer built in memory (256 byte tokens + `specials`, no merges) for the
    tiny test models: no vocabulary file, no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(specials)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra or {}, **kw)
    out.add_special_tokens({"additional_special_tokens": list(specials)})
    return out


def generate_answers(
    model: Any, processor: Any, prompt: str, images: list[Any], max_new_tokens: int, **kw: Any
) -> list[str]:
    """One greedy answer per image to the same prompt: the new tokens, special tokens dropped."""
    import torch

    inputs = processor(
        text=[prompt] * len(images), images=images, return_tensors="pt", padding=True, **kw
    )
    param = next(model.parameters())
    inputs = {
        k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
        for k, v in inputs.items()
    }
    with torch.inference_mode():
        out = model.generate(**inputs, **GREEDY, max_new_tokens=max_new_tokens)
    new = out[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new, skip_special_tokens=True)]
