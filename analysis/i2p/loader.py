"""Load and validate the I2P benchmark from the bundled copy, a local CSV/Parquet or the hub.

Copies of I2P in other repositories drift (an index column, renamed seed/guidance columns, an added
case_number, empty prompts, CRLF, non-breaking spaces). Those are normalised here once, so every
metric downstream sees one schema; anything else is rejected with the column and row at fault,
because a silently mis-parsed percentage would change a published number.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import AuditError
from analysis.resources import data_file

CATEGORIES: tuple[str, ...] = (
    "hate",
    "harassment",
    "violence",
    "self-harm",
    "sexual",
    "shocking",
    "illegal activity",
)
PERCENT_COLUMNS = (
    "inappropriate_percentage",
    "nudity_percentage",
    "q16_percentage",
    "sd_safety_percentage",
)
REQUIRED_COLUMNS = (
    "prompt",
    "categories",
    "hard",
    *PERCENT_COLUMNS,
    "prompt_toxicity",
    "sd_seed",
    "sd_guidance_scale",
    "sd_image_width",
    "sd_image_height",
)
OPTIONAL_COLUMNS = ("lexica_url", "sd_model", "case_number")
RENAMES = {"evaluation_seed": "sd_seed", "evaluation_guidance": "sd_guidance_scale"}
BUNDLED_PATH = data_file("i2p_benchmark.csv")
HF_DEFAULT_FILE = "i2p_benchmark.csv"
IMAGES_PER_PROMPT = 10  # the dataset's percentages are over 10 SD 1.4 images per prompt
_INDEX_NAME = re.compile(r"^(unnamed: ?\d+|__index_level_\d+__|index|)$")
_MAX_LISTED = 5


@dataclass
class I2PDataset:
    """The validated prompts plus where they came from (recorded in run manifests and outputs)."""

    frame: pd.DataFrame
    source: str
    path: Path | None
    sha256: str | None

    def provenance(self) -> dict[str, object]:
        return {
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "n_prompts": len(self.frame),
        }


def load_i2p(data: str | Path | None = None, *, cache_dir: str | Path | None = None) -> I2PDataset:
    """Load I2P: None (bundled copy), a local .csv/.parquet, or ``hf:OWNER/NAME[@REV][:FILE]``."""
    if data is None or str(data) in {"", "bundled"}:
        path, source = BUNDLED_PATH, "bundled"
        if not path.is_file():
            raise AuditError(
                f"the bundled I2P copy is missing at {path}; reinstall from the repository "
                "or pass --data PATH (a local CSV/Parquet) or --data hf:AIML-TUDA/i2p"
            )
    elif str(data).startswith("hf:"):
        path, source = _hub_download(str(data), cache_dir), str(data)
    else:
        path, source = Path(data), str(data)
        if not path.is_file():
            raise AuditError(f"I2P data file {path} does not exist; pass a CSV or Parquet file")
    raw = _read_table(path)
    frame = normalise(raw, source=source)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return I2PDataset(frame=frame, source=source, path=path, sha256=digest)


def _hub_download(spec: str, cache_dir: str | Path | None) -> Path:
    """Fetch (or reuse from the HF cache) the dataset's CSV, without the `datasets` library."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    body = spec.removeprefix("hf:")
    repo, _, filename = body.partition(":")
    repo, _, revision = repo.partition("@")
    filename = filename or HF_DEFAULT_FILE
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise AuditError(f"--data {spec!r}: expected hf:OWNER/NAME[@REVISION][:FILE]")
    try:
        local = hf_hub_download(
            repo,
            filename,
            repo_type="dataset",
            revision=revision or None,
            cache_dir=cache_dir,
        )
    except LocalEntryNotFoundError as exc:
        raise AuditError(
            f"I2P file {filename!r} of hub dataset {repo} is not in the Hugging Face cache and "
            "the hub cannot be reached (offline, or HF_HUB_OFFLINE=1). Download it once with "
            f"network: HF_HUB_OFFLINE=0 hf download {repo} {filename} --repo-type dataset; "
            "or use the bundled copy (omit --data)"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise AuditError(f"could not get {filename!r} from hub dataset {repo}: {exc}") from exc
    return Path(str(local))


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".csv", ".tsv", ".txt"}:
            return pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
                sep="\t" if suffix == ".tsv" else ",",
            )
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise AuditError(f"could not read I2P data {path}: {exc}") from exc
    raise AuditError(f"I2P data {path}: unsupported file type {suffix!r}; use .csv or .parquet")


def _clean_text(value: object) -> str:
    """Text cell with NaN -> '', non-breaking spaces -> spaces, CR/CRLF -> LF."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value).replace("\u00a0", " ").replace("\u202f", " ")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _cleaned(column: pd.Series, *, strip: bool = True) -> pd.Series:
    """_clean_text (then strip) of every cell, worked out once per distinct cell.

    A percentage column holds ~11 distinct cells in 4,703: cleaning each cell took a third of
    loading I2P.
    """
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    clean = [_clean_text(u).strip() if strip else _clean_text(u) for u in uniques]
    return pd.Series(np.asarray(clean, dtype=object)[codes], index=column.index)


def _fail(source: str, column: str, problems: list[tuple[int, str]]) -> AuditError:
    listed = "; ".join(f"row {row}: {msg}" for row, msg in problems[:_MAX_LISTED])
    more = f" (and {len(problems) - _MAX_LISTED} more rows)" if len(problems) > _MAX_LISTED else ""
    return AuditError(
        f"I2P data {source}: column '{column}', {listed}{more}. Rows are counted from 1 after "
        "the header; fix the file or use the bundled copy"
    )


def _numeric(
    frame: pd.DataFrame, column: str, source: str, low: float, high: float, what: str
) -> pd.Series:
    text = _cleaned(frame[column])
    values = pd.to_numeric(text, errors="coerce").astype(float)
    problems = []
    for pos in np.flatnonzero(~np.isfinite(values.to_numpy()) | (values < low) | (values > high)):
        cell = text.iloc[pos]
        value = values.iloc[pos]
        if not np.isfinite(value):
            msg = "empty" if cell == "" else f"{cell!r} is not a number"
        else:
            msg = f"{cell} is outside {what}"
        problems.append((int(pos) + 1, msg))
    if problems:
        raise _fail(source, column, problems)
    return values


def _integer(frame: pd.DataFrame, column: str, source: str, low: int) -> pd.Series:
    values = _numeric(frame, column, source, low, 2.0**63, f"[{low}, 2^63)")
    bad = [
        (int(p) + 1, f"{values.iloc[p]} is not a whole number")
        for p in np.flatnonzero(values.to_numpy() != np.floor(values.to_numpy()))
    ]
    if bad:
        raise _fail(source, column, bad)
    if (values.abs() < 2.0**53).all():  # exact as floats
        return values.astype("int64")
    text = _cleaned(frame[column])
    # int() on the text keeps integers above 2^53 exact, which a float round trip would not.
    return pd.Series([_as_int(t, v) for t, v in zip(text, values, strict=True)], dtype="int64")


def _as_int(text: str, value: float) -> int:
    try:
        return int(text)
    except ValueError:
        return int(value)


def _drop_index_columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    for column in list(frame.columns):
        if not _INDEX_NAME.match(column) or column in REQUIRED_COLUMNS:
            continue
        text = _cleaned(frame[column])
        numeric = pd.to_numeric(text.where(text != ""), errors="coerce")
        if (text != "").any() and (numeric.isna() & (text != "")).any():
            pos = int(np.flatnonzero((numeric.isna() & (text != "")).to_numpy())[0])
            raise _fail(
                source,
                column or "(unnamed)",
                [(pos + 1, f"{text.iloc[pos]!r} in an unnamed index column is not a row number")],
            )
        frame = frame.drop(columns=column)
    return frame


def normalise(raw: pd.DataFrame, source: str = "data") -> pd.DataFrame:
    """Validate a raw I2P table and return it in the canonical schema (plus prompt_id).

    Output columns: prompt_id, prompt, categories (canonical 'a, b'), hard (bool), the four
    percentages, prompt_toxicity, sd_seed (int64), sd_guidance_scale (float), sd_image_width,
    sd_image_height, lexica_url, sd_model, and case_number when the input had one.
    """
    frame = raw.copy().reset_index(drop=True)
    frame.columns = [_clean_text(c).strip().lower() for c in frame.columns]
    frame = _drop_index_columns(frame, source)
    for old, new in RENAMES.items():
        if old in frame.columns:
            if new in frame.columns:
                raise AuditError(
                    f"I2P data {source}: has both '{old}' and '{new}'; keep one of them"
                )
            frame = frame.rename(columns={old: new})
    dupes = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if dupes:
        raise AuditError(f"I2P data {source}: column(s) {', '.join(dupes)} appear more than once")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise AuditError(
            f"I2P data {source}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {', '.join(repr(c) for c in frame.columns)}. An I2P table needs "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    if frame.empty:
        raise AuditError(f"I2P data {source}: the table has no rows")

    out = pd.DataFrame(index=frame.index)
    out["prompt"] = _cleaned(frame["prompt"], strip=False)
    out["categories"] = _categories(frame["categories"], source)
    out["hard"] = _hard(frame["hard"], source)
    for column in PERCENT_COLUMNS:
        out[column] = _numeric(frame, column, source, 0.0, 100.0, "[0, 100]")
    out["prompt_toxicity"] = _numeric(frame, "prompt_toxicity", source, 0.0, 1.0, "[0, 1]")
    out["sd_seed"] = _integer(frame, "sd_seed", source, 0)
    out["sd_guidance_scale"] = _numeric(
        frame, "sd_guidance_scale", source, 1e-9, float("inf"), "(0, inf)"
    )
    out["sd_image_width"] = _integer(frame, "sd_image_width", source, 1)
    out["sd_image_height"] = _integer(frame, "sd_image_height", source, 1)
    for column in ("lexica_url", "sd_model"):
        out[column] = _cleaned(frame[column], strip=False) if column in frame.columns else ""
    if "case_number" in frame.columns:
        out["case_number"] = _integer(frame, "case_number", source, 0)
        repeated = out["case_number"].duplicated(keep="first")
        if repeated.any():
            pos = int(np.flatnonzero(repeated.to_numpy())[0])
            raise _fail(
                source,
                "case_number",
                [(pos + 1, f"{out['case_number'].iloc[pos]} repeats an earlier row's number")],
            )
        ids = out["case_number"].astype(str)
    else:
        ids = pd.Series([str(i) for i in range(len(out))], index=out.index)
    out.insert(0, "prompt_id", ids)
    extras = [c for c in frame.columns if c not in out.columns]
    for column in extras:  # unknown extra columns are carried along untouched
        out[column] = frame[column]
    return out


def _categories(column: pd.Series, source: str) -> pd.Series:
    known = set(CATEGORIES)
    codes, cells = pd.factorize(_cleaned(column, strip=False), use_na_sentinel=False)
    canonical, problem_of = [], {}
    for code, cell in enumerate(cells):  # each distinct cell once (I2P has ~100 in 4,703)
        names = [c.strip().lower() for c in cell.split(",") if c.strip()]
        unknown = [n for n in names if n not in known]
        if not names:
            problem_of[code] = "no category listed"
        elif unknown:
            problem_of[code] = f"unknown category {unknown[0]!r} (known: {', '.join(CATEGORIES)})"
        canonical.append(", ".join(dict.fromkeys(names)))
    if problem_of:
        rows = np.flatnonzero(np.isin(codes, list(problem_of)))
        raise _fail(source, "categories", [(int(r) + 1, problem_of[codes[r]]) for r in rows])
    return pd.Series(np.asarray(canonical, dtype=object)[codes], index=column.index, dtype=object)


def _hard(column: pd.Series, source: str) -> pd.Series:
    mapping = {"1": True, "0": False, "true": True, "false": False, "1.0": True, "0.0": False}
    text = _cleaned(column).str.lower()
    bad = np.flatnonzero(~text.isin(list(mapping)).to_numpy())
    if bad.size:
        problems = [(int(r) + 1, f"{text.iloc[r]!r} is not 0/1") for r in bad]
        raise _fail(source, "hard", problems)
    return text.map(mapping).astype(bool)


def category_lists(frame: pd.DataFrame) -> pd.Series:
    """Each prompt's categories as a list (a prompt counts in every category it lists)."""
    return frame["categories"].map(lambda s: [c.strip() for c in str(s).split(",") if c.strip()])


def category_masks(categories: pd.Series) -> dict[str, np.ndarray]:
    """Boolean row masks for 'all' and each I2P category, in the paper's order."""
    lists = categories.map(lambda s: {c.strip() for c in str(s).split(",") if c.strip()})
    masks = {"all": np.ones(len(lists), dtype=bool)}
    for name in CATEGORIES:
        masks[name] = lists.map(lambda cats, n=name: n in cats).to_numpy(dtype=bool)
    return masks
