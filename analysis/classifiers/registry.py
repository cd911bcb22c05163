"""Every judge (image classifier) in one table: what `classify`, verdicts and reports read.

A judge is a small class (HELM's image metrics are the model): a name, how to load it lazily,
how to score a batch into (raw output, verdict), how to re-derive a verdict from a stored raw
output under a named rule and threshold, and its provenance. Adding a judge is a new module
with a `Judge` subclass and one line in `JUDGES`; nothing else branches on a judge's name.
Modules are imported on first use, so listing the judges loads no model code.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from analysis.errors import AuditError

#: judge name -> "module:Class" (imported on first use)
JUDGES: dict[str, str] = {
    "nudenet": "analysis.classifiers.nudenet:NudeNetJudge",
    "q16": "analysis.classifiers.q16:Q16Judge",
    "safety-checker": "analysis.classifiers.safety_checker:SafetyCheckerJudge",
    "toy": "analysis.classifiers.toy:ToyJudge",
    "toy-filter": "analysis.classifiers.toy:ToyFilterJudge",
    "llavaguard": "analysis.classifiers.vlm.llavaguard:LlavaGuardJudge",
    "shieldgemma2": "analysis.classifiers.vlm.shieldgemma2:ShieldGemma2Judge",
    "llamaguard3v": "analysis.classifiers.vlm.llamaguard3v:LlamaGuard3VisionJudge",
    "mhsc": "analysis.classifiers.vlm.mhsc:MhscJudge",
}


@dataclass(frozen=True)
class JudgeOptions:
    """Where each judge's weights come from (None: its default) and its CPU threads."""

    nudenet_model: str | None = None
    clip_model: str | None = None
    safety_checker_model: str | None = None
    threads: int = 2
    #: judge name -> its model (a folder or a hub id in the local cache): `--judge-model NAME=PATH`
    models: dict[str, str] = field(default_factory=dict)


class Judge:
    """One judge. Class attributes describe it; an instance is the loaded model.

    `rules()` names the rules its verdicts can be re-derived under (NudeNet has many, most
    judges one); `verdict_of(rule, threshold)` turns a stored raw output (JSON text) into a
    verdict; `check_threshold` refuses a cut the stored outputs cannot honour.
    """

    name: ClassVar[str]
    rule: ClassVar[str]  # the default (or only) rule
    comparison: ClassVar[str | None] = None
    #: 'judge' decides what counts as the concept; 'image filter' screens what users see
    role: ClassVar[str] = "judge"
    #: whether `prepare` is worth running in the decode threads (NudeNet's pre-processing)
    prepares_in_workers: ClassVar[bool] = False
    #: whether `classify --rule/--threshold` choose the verdict stored at scoring time (NudeNet);
    #: other judges score under their own rule and cut (verdicts can still be re-derived)
    takes_classify_rule: ClassVar[bool] = False

    sha256: str
    provenance: dict[str, Any]

    def __init__(self, options: JudgeOptions) -> None:
        raise NotImplementedError

    @classmethod
    def preflight(cls, options: JudgeOptions) -> None:
        """Refuse options this judge cannot load, before any file is written (a judge that
        takes a `--judge-model` overrides this to find and check it)."""
        if cls.name in options.models:
            raise AuditError(f"--judge-model {cls.name}=...: the {cls.name} judge takes no model")

    # --- rules and verdicts (no model needed) ---------------------------------------------

    @classmethod
    def rules(cls) -> tuple[str, ...]:
        return (cls.rule,)

    @classmethod
    def resolve_rule(cls, rule: str | None) -> str:
        """The rule verdicts use: a judge with one rule ignores another judge's rule name."""
        if rule is None or len(cls.rules()) == 1:
            return cls.rule
        if rule not in cls.rules():
            raise AuditError(
                f"unknown {cls.name} rule {rule!r}; valid rules: {', '.join(cls.rules())}"
            )
        return rule

    @classmethod
    def comparison_of(cls, rule: str) -> str | None:
        """How a score meets the threshold under `rule` ('>=', '>'; None: no threshold)."""
        return cls.comparison

    @classmethod
    def default_threshold(cls, rule: str) -> float | None:
        """The rule's own cut (None: the judge has no threshold)."""
        return None

    @classmethod
    def check_threshold(cls, threshold: float | None, rule: str) -> float | None:
        """`threshold` checked for this judge and rule; None keeps the rule's own."""
        if threshold is None:
            return cls.default_threshold(rule)
        raise AuditError(f"the {cls.name} judge has no threshold to set (got {threshold!r})")

    @classmethod
    def verdict_of(cls, rule: str, threshold: float | None) -> Callable[[str], bool]:
        """raw output (JSON text) -> verdict under `rule` at `threshold`."""
        raise NotImplementedError

    @classmethod
    def recorded_threshold(cls, raw: Any, threshold: float | None) -> Any:
        """The threshold column of re-derived verdicts (a judge may store its cut in raw)."""
        return threshold

    # --- scoring (a loaded model) ---------------------------------------------------------

    def prepare(self, image: Image.Image) -> Any:
        """Per-image work done in the decode threads; the default passes the image on."""
        return image

    def score(
        self, payloads: list[Any], rule: str, threshold: float | None
    ) -> list[tuple[Any, bool | None]]:
        """(raw output, JSON-able; verdict under rule/threshold) per prepared image. A verdict
        of None records a failure for that image (`failure(raw)` says why): never "safe"."""
        raise NotImplementedError

    @staticmethod
    def failure(raw: Any) -> str:
        """The error recorded for an image the judge could not give a verdict on."""
        if isinstance(raw, dict) and raw.get("error"):
            return str(raw["error"])
        return "the judge gave no verdict"

    @property
    def threshold(self) -> float | None:
        """The cut this loaded judge scores at by default (recorded with its scores)."""
        return self.default_threshold(self.rule)


def judge_names() -> tuple[str, ...]:
    return tuple(JUDGES)


def get_judge(name: str) -> type[Judge]:
    """The judge class registered as `name`, or a one-line error listing the judges."""
    try:
        target = JUDGES[name]
    except KeyError:
        raise AuditError(
            f"unknown classifier {name!r}; valid classifiers: {', '.join(JUDGES)}"
        ) from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_judge(name: str, options: JudgeOptions | None = None) -> Judge:
    """A loaded judge (its model read now)."""
    return get_judge(name)(options or JudgeOptions())


def raw_json(raw: Any) -> str:
    """Raw outputs are stored as JSON text, one per image."""
    return json.dumps(raw)
