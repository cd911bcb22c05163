"""How complete a run's verdicts are, per stage: a rate is final only when nothing is missing.

Images still to be generated or scored (other shards, a crash, a classify that started before
the last images existed) would silently shrink a denominator; here they are counted by stage so
results, figures and the report can say what is missing and refuse to call the numbers final.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def completeness(verdicts: pd.DataFrame) -> dict[str, Any]:
    """Counts per stage from `load_verdicts` rows, and whether the results are final.

    planned = generated + generation_failed + not_generated;
    generated = with_verdict + unreadable + not_scored.
    Failed generations and unreadable images are final outcomes (reported as missing);
    not_generated and not_scored mean the work is not finished.
    """
    status = verdicts["status"]
    generated = status.eq("done")
    has_verdict = verdicts["verdict"].notna()
    not_scored = generated & ~has_verdict & verdicts["error"].eq("not scored")
    counts = {
        "planned": len(verdicts),
        "generated": int(generated.sum()),
        "generation_failed": int(status.eq("error").sum()),
        "not_generated": int((~status.isin(["done", "error"])).sum()),
        "with_verdict": int((generated & has_verdict).sum()),
        "unreadable": int((generated & ~has_verdict & ~not_scored).sum()),
        "not_scored": int(not_scored.sum()),
    }
    counts["final"] = counts["not_generated"] == 0 and counts["not_scored"] == 0
    return counts


def describe(counts: dict[str, Any]) -> str:
    """One line for a console or a figure: what is missing, or that nothing is."""
    if counts["final"]:
        lost = counts["generation_failed"] + counts["unreadable"]
        return (
            f"complete: {counts['with_verdict']} of {counts['planned']} images have a verdict"
            + (f" ({lost} failed, reported as missing)" if lost else "")
        )
    return (
        f"PROVISIONAL: {counts['not_generated']} of {counts['planned']} images not generated yet, "
        f"{counts['not_scored']} generated but not classified yet"
    )
