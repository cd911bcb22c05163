"""The country table of the ethnic-bias probe (data/countries.csv): ISO-3 code, name, adjective.

Codes are matched exactly; an unknown code is an error that suggests close matches, never a
fuzzy guess at run time.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

import pandas as pd

from analysis.errors import AuditError
from analysis.resources import data_file

COUNTRIES_FILE = data_file("countries.csv")
COLUMNS = ["iso3", "name", "adjective", "region"]


@lru_cache(maxsize=4)
def _read(path: str) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise AuditError(f"{path} lacks column(s) {', '.join(missing)}")
    if table["iso3"].duplicated().any():
        raise AuditError(f"{path} repeats ISO-3 codes: {table['iso3'][table['iso3'].duplicated()]}")
    return table[COLUMNS]


def load_countries(path: Path = COUNTRIES_FILE) -> pd.DataFrame:
    """All countries: iso3, name, adjective (as used in prompts), region."""
    return _read(str(path)).copy()


def select_countries(codes: list[str] | None, path: Path = COUNTRIES_FILE) -> pd.DataFrame:
    """The rows for the given ISO-3 codes (all when None), in the order given."""
    table = load_countries(path)
    if not codes:
        return table
    known = table.set_index("iso3")
    wanted = [c.strip().upper() for c in codes if c.strip()]
    for code in wanted:
        if code not in known.index:
            names = {f"{r.iso3} ({r.name})": r.iso3 for r in table.itertuples()}
            close = difflib.get_close_matches(code, list(known.index), n=3, cutoff=0.5)
            close += [
                names[n]
                for n in difflib.get_close_matches(code.title(), list(names), n=3, cutoff=0.6)
            ]
            hint = f"; did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
            raise AuditError(
                f"unknown country code {code!r} (use ISO-3 codes from {path.name}){hint}"
            )
    if len(set(wanted)) < len(wanted):
        raise AuditError(f"country codes repeat: {', '.join(wanted)}")
    return known.loc[wanted].reset_index()
