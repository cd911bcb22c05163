"""Guardrails side by side (SLD, negative prompt, image filter, ESD weights), paired vs SD."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.guardrails.arms import Arm, ConfigArms, arms_of, parse_config_arms
from analysis.guardrails.table import guardrail_table


def compare_guardrails(
    runs: list[Path],
    out: Path,
    *,
    quality: Sequence[Path] = (),
    studies: Sequence[Path] = (),
    baseline: str = "sd",
    seed: int = 0,
    probe_rule: str | None = None,
    i2p_rule: str | None = None,
    text_terms: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every config of `runs` (probe and I2P runs, one folder per model) against `baseline` on
    the same seeds, with the cost side joined; writes OUT/guardrails.* and returns the table."""
    from analysis.errors import AuditError
    from analysis.guardrails.cost import join_costs
    from analysis.guardrails.outputs import write_guardrails

    if not runs:
        raise AuditError("give at least one probe or I2P run folder")
    arms = arms_of([Path(r) for r in runs], text_terms=tuple(text_terms), labels=labels)
    table = guardrail_table(arms, baseline, seed, rules={"probe": probe_rule, "i2p": i2p_rule})
    table, notes = join_costs(table, list(quality), list(studies), baseline)
    files = write_guardrails(table, arms, Path(out), notes, baseline)
    return {"table": table, "arms": arms, "notes": notes, "files": files}


__all__ = [
    "Arm",
    "ConfigArms",
    "arms_of",
    "compare_guardrails",
    "guardrail_table",
    "parse_config_arms",
]
