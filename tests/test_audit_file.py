"""`t2i-audit run AUDIT.toml`: the shipped examples validate, bad files give one file:line error,
a tiny audit runs end to end, resumes without new work and extends with only the new images."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis.audit import load_audit
from analysis.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = Path(__file__).resolve().parent / "data" / "tiny-audit.toml"
#: the tiny-model audit (both parts) made tinier: 2 countries x 1 image, 2 I2P prompts, 2 steps
SMALL = {
    "probe.countries": "['JPN', 'NGA']",
    "probe.images_per_country": "1",
    "i2p.limit": "2",
    "sampler.steps": "2",
    "sampler.height": "32",
    "sampler.width": "32",
    "sampler.batch_size": "2",
}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real entry point; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def small(*extra: str) -> list[str]:
    return [arg for k, v in SMALL.items() for arg in ("--set", f"{k}={v}")] + list(extra)


def files(folder: Path) -> dict[str, float]:
    """Every file's mtime, but the lock files (they name the last writer, not finished work)."""
    return {
        str(p): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and p.parent.name != "locks"
    }


def contents(folder: Path) -> dict[str, str]:
    """sha256 of every file but the locks: a re-run may rewrite a file only with equal bytes."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and p.parent.name != "locks"
    }


@pytest.fixture(autouse=True)
def _one_shard(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)


def test_every_shipped_example_validates():
    shipped = sorted(p.name for p in CONFIGS.glob("*.toml"))
    assert {"paper-ethnic-bias.toml", "paper-i2p.toml", "esd-vs-sld.toml", "demo.toml"} <= set(
        shipped
    )
    for name in shipped:
        audit = load_audit(CONFIGS / name)
        assert audit.models and audit.configs and audit.parts()
    paper = load_audit(CONFIGS / "paper-ethnic-bias.toml")
    assert paper.models[0].model == "CompVis/stable-diffusion-v1-4"
    assert paper.configs == ["sd", "sld-weak", "sld-medium", "sld-strong", "sld-max", "negative"]
    assert paper.probe is not None and paper.probe.images_per_country == 100
    assert (paper.sampler.steps, paper.sampler.height, paper.sampler.device) == (50, 512, "cuda")
    i2p = load_audit(CONFIGS / "paper-i2p.toml").i2p
    assert i2p is not None and i2p.images_per_prompt == 10 and i2p.categories is None
    assert any(m.unet for m in load_audit(CONFIGS / "esd-vs-sld.toml").models)


def test_dry_run_of_a_paper_audit_plans_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "paper"
    code, stdout, err = cli(
        capsys,
        "run",
        CONFIGS / "paper-ethnic-bias.toml",
        "--out",
        out,
        "--dry-run",
        "--no-estimate",
    )
    assert code == 0, err
    assert "planned 30000 images, done 0, left 30000" in stdout
    assert "dry run" in stdout and not out.exists()


@pytest.fixture
def no_static_export(monkeypatch):
    """Figures' PNG/SVG export (kaleido + Chromium, ~5 s a file) is not what these tests check."""
    from plotly.basedatatypes import BaseFigure

    def fake(self, file, *args, **kwargs):
        Path(file).write_bytes(b"stub")

    monkeypatch.setattr(BaseFigure, "write_image", fake)


def test_tiny_demo_audit_runs_resumes_and_extends(tmp_path, capsys, no_static_export):
    out = tmp_path / "audit"
    # dry run: the plan, with a timed estimate, and nothing written
    code, stdout, err = cli(capsys, "run", DEMO, "--out", out, "--dry-run", *small())
    assert code == 0, err
    assert "planned 8 images, done 0, left 8" in stdout and "estimate" in stdout
    assert not out.exists()

    code, stdout, err = cli(capsys, "run", DEMO, "--out", out, *small())
    assert code == 0, err
    assert (out / "report.html").is_file()
    for part in ("ethnic-bias", "i2p"):
        assert (out / "tiny" / part / "manifest.json").is_file()
    assert (out / "audit.toml").read_bytes() == DEMO.read_bytes()
    record = json.loads((out / "audit.json").read_text())
    assert record["spec_sha256"] == hashlib.sha256(DEMO.read_bytes()).hexdigest()
    assert record["overrides"]["probe"]["countries"] == ["JPN", "NGA"]
    assert [(p["part"], p["generated"]) for p in record["last_run"]["parts"]] == [
        ("probe", 4),
        ("i2p", 4),
    ]

    # re-run, also on another (usable) device: nothing is generated and no finished file is
    # rewritten; an unusable device is refused before anything is touched
    before = contents(out)
    code, stdout, err = cli(capsys, "run", DEMO, "--out", out, *small())
    assert code == 0, err
    assert contents(out) == before
    code, _, err = cli(
        capsys, "run", DEMO, "--out", out, *small(), "--set", 'sampler.device="cuda:7"'
    )
    assert code == 2 and "device 'cuda:7' is not usable here" in err
    assert contents(out) == before
    before = files(out)
    code, stdout, err = cli(capsys, "run", DEMO, "--out", out, "--dry-run", *small())
    assert code == 0, err
    assert "planned 8 images, done 8, left 0" in stdout
    assert files(out) == before

    # one more config in the file: only its images are generated
    extended = tmp_path / "extended.toml"
    extended.write_text(
        DEMO.read_text().replace(
            'configs = ["sd", "sld-max"]', 'configs = ["sd", "sld-max", "negative"]'
        )
    )
    code, stdout, err = cli(capsys, "run", extended, "--out", out, "--dry-run", *small())
    assert code == 0, err
    assert "planned 12 images, done 8, left 4" in stdout
    code, _, err = cli(capsys, "run", extended, "--out", out, *small())
    assert code == 0, err
    record = json.loads((out / "audit.json").read_text())
    assert [p["generated"] for p in record["last_run"]["parts"]] == [2, 2]
    assert [p["done"] for p in record["last_run"]["parts"]] == [6, 6]
    assert record["spec_sha256"] == hashlib.sha256(extended.read_bytes()).hexdigest()
    assert len(record["history"]) == 2
    assert (out / "audit.toml").read_bytes() == extended.read_bytes()


GOOD = """\
configs = ["sd", "sld-max"]

[[models]]
name = "tiny"
model = "tiny"

[sampler]
steps = 2
height = 32

[probe]
images_per_country = 1
"""

BAD = {
    "unknown key": (
        GOOD.replace("images_per_country = 1", "images_per_contry = 1"),
        "audit.toml:12: probe.images_per_contry: unknown key; did you mean 'images_per_country'?",
    ),
    "unknown table": (
        GOOD + "[reprot]\nblur = false\n",
        "audit.toml:13: reprot: unknown key; did you mean 'report'?",
    ),
    "wrong type": (
        GOOD.replace("steps = 2", 'steps = "2"'),
        "audit.toml:8: sampler.steps: must be an integer (got '2')",
    ),
    "out of range": (
        GOOD.replace("images_per_country = 1", "images_per_country = 0"),
        "audit.toml:12: probe.images_per_country: must be >= 1 (got 0)",
    ),
    "not a multiple of 8": (
        GOOD.replace("height = 32", "height = 30"),
        "audit.toml:9: sampler.height: must be a positive multiple of 8 (got 30)",
    ),
    "missing model": (
        GOOD.replace('model = "tiny"\n', ""),
        "audit.toml:3: models[0].model: missing (required)",
    ),
    "no models": (
        GOOD.replace('[[models]]\nname = "tiny"\nmodel = "tiny"\n', ""),
        "audit.toml:1: models: missing (required)",
    ),
    "bad config string": (
        GOOD.replace('"sld-max"', '"sld-maxx"'),
        "audit.toml:1: configs[1]: unknown guidance config 'sld-maxx'",
    ),
    "bad config parameter": (
        GOOD.replace('"sld-max"', '\n  "sld-strong:warmupsteps=5",\n'),
        "audit.toml:2: configs[1]: unknown config parameter(s) warmupsteps",
    ),
    "unknown rule": (
        GOOD + 'rule = "genitals"\n',
        "audit.toml:13: probe.rule: unknown rule 'genitals'; valid rules:",
    ),
    "unknown country": (
        GOOD + 'countries = ["JPN", "XYZ"]\n',
        "audit.toml:13: probe.countries[1]: unknown country code 'XYZ'",
    ),
    "bad dtype": (
        GOOD.replace('model = "tiny"', 'model = "tiny"\ndtype = "fp16"'),
        "audit.toml:6: models[0].dtype: must be one of float32, float16, bfloat16 (got 'fp16')",
    ),
    "duplicate model name": (
        GOOD.replace("[sampler]", '[[models]]\nname = "tiny"\nmodel = "tiny"\n\n[sampler]'),
        "audit.toml:8: models[1].name: model name 'tiny' is used twice",
    ),
    "nothing to run": (
        GOOD.replace("[probe]\nimages_per_country = 1\n", ""),
        "audit.toml:1: probe: nothing to run",
    ),
    "unknown i2p category": (
        GOOD + '[i2p]\ncategories = ["nsfw"]\n',
        "audit.toml:14: i2p.categories[0]: unknown I2P category 'nsfw'",
    ),
    "not TOML": (GOOD.replace("[probe]", "[probe"), "audit.toml:11: not valid TOML:"),
    "not text": (b"\xff\xfe\x00binary", "audit.toml:1: not a TOML file (not UTF-8 text"),
    "empty file": ("", "audit.toml:1: the file is empty"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_give_one_line_naming_file_line_and_field(case, tmp_path, capsys):
    text, expected = BAD[case]
    path = tmp_path / "audit.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--dry-run")
    assert code == 2
    line = " ".join(err.split())
    assert err.strip().count("\n") == 0, err
    assert re.search(r"audit\.toml:\d+: ", line), line
    assert expected in line, line
    assert not (tmp_path / "out").exists()


def test_good_file_and_overrides_validate(tmp_path):
    path = tmp_path / "audit.toml"
    path.write_text(GOOD)
    audit = load_audit(path, {"probe": {"countries": ["jpn"]}})
    assert audit.probe is not None and audit.probe.countries == ["JPN"]
    assert audit.parts() == ["probe"] and audit.text == GOOD


def test_a_part_that_cannot_start_fails_before_any_generation(tmp_path, capsys):
    path = tmp_path / "audit.toml"
    path.write_text(
        GOOD.replace(
            "[sampler]", '[[models]]\nname = "esd"\nmodel = "tiny"\nunet = "nope.st"\n\n[sampler]'
        )
    )
    out = tmp_path / "out"
    code, _, err = cli(capsys, "run", path, "--out", out)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "esd/probe" in err and "nope.st" in err
    assert not out.exists()  # the first model did not run either
    code, stdout, _ = cli(capsys, "run", path, "--out", out, "--dry-run", "--no-estimate")
    assert code == 0 and "esd/probe" in stdout and not out.exists()


@pytest.mark.slow
def test_demo_command_runs_the_shipped_demo_toml(tmp_path, capsys):
    """The demo on the toy model: planted-looking rates, SLD and ESD lowering them on shared
    seeds, the notice on every output."""
    from analysis.resources import config_file
    from analysis.toy.world import NOTICE, planted_table

    out = tmp_path / "demo"
    code, stdout, err = cli(capsys, "demo", "--out", out)
    assert code == 0, err
    shipped = config_file("demo.toml")
    assert shipped.resolve() == (CONFIGS / "demo.toml").resolve()  # configs/ is the package's
    assert (out / "audit.toml").read_bytes() == shipped.read_bytes()
    record = json.loads((out / "audit.json").read_text())
    assert record["overrides"]["report"] == {"enabled": False}
    parts = {(p["model"], p["part"]): p for p in record["last_run"]["parts"]}
    assert parts[("toy", "probe")]["planned"] == 12 * 6 * 2  # demo.toml: 12 countries x 6 x 2
    assert parts[("toy-esd-x", "probe")]["planned"] == 12 * 6  # ESD alone: sd
    rates = pd.read_csv(out / "toy" / "ethnic-bias" / "results" / "nudity_rates.csv")
    sd = rates[rates["config"] == "sd"].set_index("iso3")
    assert set(sd.index) == {"KEN", "COL", "NGA", "THA", "MEX", "IND", "EGY", "USA", "ARG",
                             "FRA", "GBR", "SWE"}  # fmt: skip
    planted = planted_table().set_index("iso3").loc[sd.index, "planted_rate"]
    assert sd["rate"].max() > 0.5 and sd["rate"].corr(planted, method="spearman") > 0.6
    guard = pd.read_csv(out / "guardrails" / "guardrails.csv").set_index("guardrail")
    for arm in ("sld-strong-magenta", "toy-esd-x:sd"):
        assert guard.loc[arm, "probe_change_ci_high"] < 0, arm  # lowered, interval below 0
    html = (out / "report.html").read_text()
    assert NOTICE in html and record["spec_sha256"] in html
    assert "demo finished" in stdout
