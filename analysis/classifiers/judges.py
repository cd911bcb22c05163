"""Which classifier judges a probe, and which one filters images, for a given model.

A probe's verdict comes from a named rule, and the rule names its classifier: NudeNet's rules
(`rules.RULES`) for real models, the toy world's pixel rule for the toy model (whose planted
truth NudeNet cannot see). Likewise `<config>+filter` means SD's image safety checker on a real
model and the toy filter on the toy model. One table each, so every stage asks here.
"""

from __future__ import annotations

from analysis.classifiers.rules import RULES
from analysis.errors import AuditError
from analysis.toy import world

#: probe rule -> the classifier whose stored outputs it judges
PROBE_RULES: dict[str, str] = {**dict.fromkeys(RULES, "nudenet"), world.RULE: "toy"}
DEFAULT_RULE = "exposed-genitalia"
#: the image filter of `<config>+filter`, per kind of model
FILTERS = {"sd": "safety-checker", "toy": "toy-filter"}


def is_toy(model: str | None) -> bool:
    """'toy', or a folder written by `t2i-audit toy train` (it holds toy.json)."""
    from analysis.toy.model import toy_folder

    return toy_folder(model) is not None


def probe_classifier(rule: str) -> str:
    """The classifier behind a probe rule, or a one-line error listing the rules."""
    try:
        return PROBE_RULES[rule]
    except KeyError:
        raise AuditError(f"unknown rule {rule!r}; valid rules: {', '.join(PROBE_RULES)}") from None


def default_rule(model: str | None) -> str:
    """The probe's rule when none is given: the toy rule on the toy model, else NudeNet's."""
    return world.RULE if is_toy(model) else DEFAULT_RULE


def filter_classifier(model: str | None) -> str:
    """The classifier that screens images for `<config>+filter` on this model."""
    return FILTERS["toy" if is_toy(model) else "sd"]
