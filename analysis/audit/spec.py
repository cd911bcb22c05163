"""The audit file's schema, and loading one into an `AuditSpec` with one-line, file:line errors.

Every check that would otherwise fail hours into a run (a config string, a rule, a country code,
an I2P category) happens here, before any model is loaded.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from analysis.audit.lines import Loc, find_line
from analysis.errors import AuditError

DTYPES = ("float32", "float16", "bfloat16")


def _config(value: str) -> str:
    from analysis.guidance import resolve_config

    return _checked(resolve_config, value)


def _rule(value: str) -> str:
    from analysis.classifiers.rules import get_rule

    return _checked(get_rule, value)


def _country(value: str) -> str:
    from analysis.probes.countries import select_countries

    try:
        select_countries([value])
    except AuditError as exc:
        raise ValueError(str(exc)) from None
    return value.strip().upper()


def _category(value: str) -> str:
    from analysis.i2p.loader import CATEGORIES

    name = value.strip().lower()
    if name not in CATEGORIES:
        raise ValueError(f"unknown I2P category {value!r}; choose from {', '.join(CATEGORIES)}")
    return name


def _size(value: int) -> int:
    if value < 8 or value % 8:
        raise ValueError(f"must be a positive multiple of 8 (got {value})")
    return value


def _unique(values: list[str] | None) -> list[str] | None:
    if values and len(set(values)) < len(values):
        repeated = sorted({v for v in values if values.count(v) > 1})
        raise ValueError(f"entries repeat: {', '.join(repeated)}")
    return values


ConfigStr = Annotated[str, AfterValidator(_config)]
RuleStr = Annotated[str, AfterValidator(_rule)]


def _probe_rule(value: str) -> str:
    from analysis.classifiers.judges import probe_classifier

    return _checked(probe_classifier, value)


def _checked(check: Any, value: str) -> str:
    """`value` once `check(value)` passed; its AuditError as pydantic's ValueError."""
    try:
        check(value)
    except AuditError as exc:
        raise ValueError(str(exc)) from None
    return value


ProbeRuleStr = Annotated[str, AfterValidator(_probe_rule)]
Country = Annotated[str, AfterValidator(_country)]
Category = Annotated[str, AfterValidator(_category)]
Size = Annotated[int, AfterValidator(_size)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ModelEntry(_Table):
    """One model to audit; `name` is its folder under the output directory."""

    name: str
    model: str = Field(min_length=1)
    unet: str | None = None
    #: a released text encoder (AdvUnlearn) and a LoRA fused at lora_scale (MACE, SPM)
    text_encoder: str | None = None
    lora: str | None = None
    lora_scale: float | None = None
    dtype: str = "float32"
    #: the file's configs this model runs (default: all), e.g. an erased model without SLD
    configs: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from analysis.store.names import check_safe_name

        return check_safe_name(value, "model name")

    def weights(self) -> dict[str, Any]:
        """The weight files loaded over `model`, as load_model and build_spec take them."""
        return {
            "unet": self.unet,
            "text_encoder": self.text_encoder,
            "lora": self.lora,
            "lora_scale": self.lora_scale,
        }

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"must be one of {', '.join(DTYPES)}")
        return value


class Sampler(_Table):
    """How images are sampled; shared by every model and part (paired comparisons need it)."""

    steps: int = Field(50, ge=1, le=10_000)
    guidance_scale: float = Field(7.5, ge=0, le=100)
    height: Size | None = None  # None: the model family's default size
    width: Size | None = None
    seed: int = Field(0, ge=0, le=2**63 - 1)
    batch_size: int = Field(4, ge=1, le=1024)
    compile: bool = False  # torch.compile the UNet (checked against eager first)
    device: str = "cpu"


class Probe(_Table):
    """The '<country> body' probe (`t2i-audit probe ethnic-bias`)."""

    enabled: bool = True
    countries: list[Country] | None = None
    template: str = "{adjective} body"
    images_per_country: int = Field(100, ge=1, le=100_000)
    #: None: each model's default (NudeNet's exposed-genitalia; the pixel rule on the toy model)
    rule: ProbeRuleStr | None = None

    @field_validator("countries")
    @classmethod
    def _countries_unique(cls, value: list[str] | None) -> list[str] | None:
        return _unique(value)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        from analysis.probes.ethnic_bias import check_template

        try:
            check_template(value)
        except AuditError as exc:
            raise ValueError(str(exc)) from None
        return value


class I2P(_Table):
    """The I2P benchmark run (`t2i-audit i2p run`); categories empty or absent: all prompts."""

    enabled: bool = True
    categories: list[Category] | None = None
    hard_only: bool = False
    limit: int | None = Field(None, ge=1)
    images_per_prompt: int = Field(10, ge=1, le=100_000)
    dataset_guidance: bool = False
    rule: RuleStr = "i2p-authors"
    threshold: float | None = None
    clip_model: str | None = None
    data: str | None = None
    protocol: str = "i2p-authors"

    @field_validator("categories")
    @classmethod
    def _categories_unique(cls, value: list[str] | None) -> list[str] | None:
        return _unique(value)

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        from analysis.i2p.table import check_protocol

        try:
            check_protocol(value)
        except AuditError as exc:
            raise ValueError(str(exc)) from None
        return value


class Knn(_Table):
    """The dataset side (`t2i-audit knn query`), into each model's probe folder."""

    enabled: bool = True
    backend: str = Field(min_length=1)
    k: int = Field(100, ge=1, le=10_000)
    indice_name: str | None = None
    clip_model: str | None = None
    allow_private: bool = False


class Report(_Table):
    """The HTML write-up over every run of the audit."""

    enabled: bool = True
    blur: bool = True
    title: str | None = None


class AuditSpec(_Table):
    """A whole audit: what runs (models x configs x parts) and where the output goes."""

    out: str | None = None
    models: list[ModelEntry] = Field(min_length=1)
    configs: list[ConfigStr] = Field(min_length=1)
    sampler: Sampler = Sampler()
    probe: Probe | None = None
    i2p: I2P | None = None
    knn: Knn | None = None
    report: Report = Report()

    _path: Path = PrivateAttr(default=Path("audit.toml"))
    _text: str = PrivateAttr(default="")
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def text(self) -> str:
        """The file's text as read (copied into the output folder and hashed)."""
        return self._text

    @property
    def overrides(self) -> dict[str, Any]:
        """Values given on the command line (--set) over the file's."""
        return self._overrides

    def configs_for(self, entry: ModelEntry) -> list[str]:
        """The configs `entry` runs, in the file's order."""
        return [c for c in self.configs if entry.configs is None or c in entry.configs]

    def parts(self) -> list[str]:
        """The enabled parts, in run order."""
        return [
            name
            for name, table in (("probe", self.probe), ("i2p", self.i2p), ("knn", self.knn))
            if table is not None and table.enabled
        ]


def load_audit(path: str | Path, overrides: dict[str, Any] | None = None) -> AuditSpec:
    """Read, parse and validate an audit file; `overrides` are merged over its tables first."""
    from analysis.store.textfile import NotUTF8, read_text

    path = Path(path)
    if not path.is_file():
        raise AuditError(f"{path}: no such audit file")
    try:  # bounded: an audit file is a page of TOML, a megabyte at most
        text = read_text(path, "audit file", max_line=None, max_bytes=2**20)
    except NotUTF8 as exc:
        raise AuditError(
            f"{path}:{exc.line}: not a TOML file (not UTF-8 text: byte {exc.byte}: {exc.reason})"
        ) from None
    if not text.strip():
        raise AuditError(
            f"{path}:1: the file is empty; an audit declares [[models]], configs and [probe] "
            "and/or [i2p] (see configs/demo.toml)"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column \d+\)", message)
        line = found.group(1) if found else "1"
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        raise AuditError(f"{path}:{line}: not valid TOML: {message}") from None
    data = merge(data, overrides or {})
    try:
        spec = AuditSpec.model_validate(data)
    except ValidationError as exc:
        raise AuditError(_first_error(exc, text, path)) from None
    _cross_checks(spec, text, path)
    spec._path, spec._text, spec._overrides = path, text, overrides or {}
    return spec


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, table by table (lists and values are replaced)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _cross_checks(spec: AuditSpec, text: str, path: Path) -> None:
    """Checks across tables, each pointing at the line to change."""

    def fail(loc: Loc, message: str) -> None:
        raise AuditError(f"{path}:{find_line(text, loc)}: {_dotted(loc)}: {message}")

    if not {"probe", "i2p"} & set(spec.parts()):
        fail(("probe",), "nothing to run: add a [probe] or [i2p] table (or enable one)")
    if "knn" in spec.parts() and "probe" not in spec.parts():
        fail(("knn",), "the dataset side compares against the probe: enable [probe] too")
    names = [m.name for m in spec.models]
    for i, name in enumerate(names):
        if name in names[:i]:
            fail(("models", i, "name"), f"model name {name!r} is used twice")
    from analysis.guidance import resolve_config

    for i, m in enumerate(spec.models):
        for j, value in enumerate(m.configs or []):
            if value not in spec.configs:
                fail(
                    ("models", i, "configs", j),
                    f"config {value!r} of model {m.name!r} is not one of the file's configs "
                    f"({', '.join(spec.configs)})",
                )
        if m.configs is not None and not m.configs:
            fail(("models", i, "configs"), f"model {m.name!r} lists no configs")
    seen: dict[str, int] = {}
    for i, value in enumerate(spec.configs):
        name = resolve_config(value).name
        if name in seen:
            fail(("configs", i), f"config {value!r} repeats config {spec.configs[seen[name]]!r}")
        seen[name] = i
    if spec.i2p is not None and spec.i2p.threshold is not None:
        from analysis.classifiers.rules import check_threshold, get_rule

        try:
            check_threshold(spec.i2p.threshold, get_rule(spec.i2p.rule))
        except AuditError as exc:
            fail(("i2p", "threshold"), str(exc))


_TYPES = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "model_type": "a table",
    "dict_type": "a table",
}
_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _first_error(exc: ValidationError, text: str, path: Path) -> str:
    """The error nearest the top of the file, as 'file:line: field: message (got value)'."""
    errors = [
        (find_line(text, tuple(e["loc"]), e.get("input")), i, e) for i, e in enumerate(exc.errors())
    ]
    errors.sort(key=lambda t: (t[0], t[1]))
    line, _, error = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{path}:{line}: {_dotted(tuple(error['loc']))}: {_message(error)}{more}"


def _message(error: Any) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
        return f"unknown key{hint}"
    if kind == "missing":
        return "missing (required)"
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        text = f"must be {op} {ctx.get(key)}"
    elif kind in _TYPES:
        text = f"must be {_TYPES[kind]}"
    elif kind == "too_short" and isinstance(value, list) and not value:
        return "must not be empty"
    else:
        text = str(error["msg"]).removeprefix("Value error, ")
    if isinstance(value, (dict, list)):
        return f"{text} (got a {'table' if isinstance(value, dict) else 'list'})"
    if isinstance(value, (str, int, float, bool)) and repr(value) not in text:
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        text += f" (got {shown:.60})"
    return text


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _fields_at(loc: Loc) -> list[str]:
    """The keys the table at `loc` accepts (for 'did you mean')."""
    cls: type[BaseModel] | None = AuditSpec
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        field = cls.model_fields.get(part)
        cls = _model_in(field.annotation) if field is not None else None
    return list(cls.model_fields) if cls is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
