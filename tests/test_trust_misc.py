"""Issue 24, misc: `generate` filter arms, bounded text files, sharding variables, audit size.

Oracles: diffusers' own `StableDiffusionSafetyChecker.forward` for the filter verdicts, byte
offsets found with `bytes.index`, Python's allocation tracer for bounded reading, and item
counts listed one by one (`plan_items`) against the plan's arithmetic.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis.cli import main
from analysis.errors import AuditError

TINY = ["--steps", "1", "--height", "32", "--width", "32", "--batch-size", "2"]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of the real entry point."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0), capsys.readouterr().err


# 1. generate takes `+filter` arms, scored by the built-in tiny checker for tiny models


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("filter") / "run"
    with pytest.raises(SystemExit) as info:
        main(
            [
                *["generate", "--out", str(out), "--model", "tiny", *TINY],
                *["--prompt", "a red door", "--prompt", "a cat", "--images-per-prompt", "2"],
                *["--config", "sd+filter", "--config", "sld-max"],
            ]
        )
    assert info.value.code == 0
    return out


def test_generate_filter_records_each_images_verdict_as_diffusers_gives_it(
    filtered_run: Path,
) -> None:
    from analysis.classifiers.safety_checker import SafetyCheckerClassifier, verdict_from_raw

    items = pd.read_parquet(filtered_run / "items.parquet")
    assert sorted(items["config"].unique()) == ["sd", "sld-max"]  # sd generated once, no "+"
    assert (items["status"] == "done").all() and len(items) == 8
    scores = pd.read_parquet(filtered_run / "scores" / "safety-checker.parquet")
    assert sorted(scores["item_id"]) == sorted(items["item_id"])  # a verdict for every image
    assert scores["error"].isna().all()
    stored = scores.set_index("item_id")
    # oracle: diffusers' checker forward on the same images returns has_nsfw_concepts
    checker = SafetyCheckerClassifier("tiny")
    images = [Image.open(filtered_run / p).convert("RGB") for p in items["image_path"].tolist()]
    clip_input = checker.pixel_values(images)
    arrays = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])
    with torch.no_grad():
        _, flags = checker.checker(clip_input=clip_input, images=arrays)
    for item_id, flag in zip(items["item_id"], flags, strict=True):
        assert bool(stored.loc[item_id, "verdict"]) == bool(flag)
        assert verdict_from_raw(stored.loc[item_id, "raw"]) == bool(flag)


def test_the_tiny_checker_is_deterministic_and_named_in_provenance(filtered_run: Path) -> None:
    import json

    from analysis.classifiers.safety_checker import SafetyCheckerClassifier

    meta = json.loads((filtered_run / "scores" / "safety-checker.json").read_text())
    assert meta["checker"] == {"id": "tiny", "weights": "random (seed 0)"}
    first, second = SafetyCheckerClassifier("tiny"), SafetyCheckerClassifier("tiny")
    assert first.sha256 == second.sha256 == meta["model_sha256"]
    images = [Image.open(p).convert("RGB") for p in sorted(filtered_run.glob("images/**/*.png"))]
    assert first.safety_checker_scores(images) == second.safety_checker_scores(images)
    stored = pd.read_parquet(filtered_run / "scores" / "safety-checker.parquet")
    items = pd.read_parquet(filtered_run / "items.parquet").set_index("item_id")
    again = first.safety_checker_scores(
        [Image.open(filtered_run / items.loc[i, "image_path"]) for i in stored["item_id"]]
    )
    assert [json.loads(r) for r in stored["raw"]] == json.loads(json.dumps(again))


def test_a_real_model_wants_the_real_checker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis.classifiers.safety_checker import DEFAULT_MODEL, checker_for

    assert checker_for("tiny-sdxl") == "tiny" and checker_for("tiny", "/x") == "/x"
    assert checker_for("CompVis/stable-diffusion-v1-4") == DEFAULT_MODEL
    monkeypatch.delenv("T2I_AUDIT_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, err = _cli(
        [
            *["generate", "--out", str(tmp_path / "new"), "--model", "sd1-arch", *TINY],
            *["--prompt", "a", "--config", "sd+filter"],
        ],
        capsys,
    )
    assert code == 2 and f"safety checker {DEFAULT_MODEL!r} is not available" in err
    assert not (tmp_path / "new").exists()


def test_one_parser_of_config_arms() -> None:
    from analysis.guardrails.arms import parse_config_arms
    from analysis.guardrails.side_by_side import split_filters

    arms = parse_config_arms(["sld-max+filter", "sd", "sd+filter", "negative"])
    assert arms.generate == ("sld-max", "sd", "negative")
    assert arms.filtered == ("sld-max", "sd") and arms.wants_filter
    assert split_filters(["sd", "sld-max"]) == (["sd", "sld-max"], False)
    for bad, says in [
        ("+filter", "name the one config"),
        ("sd+filter+filter", "name the one config"),
        ("sd+text-filter", "guardrails --text-filter"),
    ]:
        with pytest.raises(AuditError, match=says):
            split_filters([bad])  # probe and i2p run refuse what generate refuses
    with pytest.raises(AuditError, match="given twice"):
        parse_config_arms(["sd+filter", "sd+filter"])


# 2 and 3. text files: one line naming file, line and byte; bounded memory


def test_non_utf8_terms_and_prompts_name_the_line_and_byte(tmp_path: Path) -> None:
    from analysis.generation.prompts import read_prompts_file
    from analysis.i2p.text_filter import read_terms

    data = b"nude\n# comment\ngory caf" + "\xe9 scene\n".encode("latin-1")
    byte = data.index(b"\xe9")
    for name, read, what in [
        ("terms.txt", read_terms, "blocked-terms file"),
        ("prompts.txt", read_prompts_file, "prompts file"),
        ("prompts.csv", read_prompts_file, "prompts file"),
    ]:
        path = tmp_path / name
        path.write_bytes(b"prompt\n" + data if name.endswith(".csv") else data)
        shift = len(b"prompt\n") if name.endswith(".csv") else 0
        with pytest.raises(AuditError) as info:
            read(path)
        line = 4 if shift else 3
        assert str(info.value).startswith(
            f"{what} {path}: line {line} is not UTF-8 text (byte {byte + shift}: "
        ), info.value
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfnude\r\nblood  bath\r\n")
    assert read_terms(bom) == ["nude", "blood  bath"]


def test_a_50_mb_line_is_refused_quickly_in_bounded_memory(tmp_path: Path) -> None:
    from analysis.generation.prompts import read_prompts_file
    from analysis.i2p.text_filter import read_terms

    path = tmp_path / "one-line.txt"
    with path.open("wb") as handle:
        for _ in range(50):
            handle.write(b"x" * 2**20)
    for read in (read_prompts_file, read_terms):
        tracemalloc.start()
        started = time.perf_counter()
        with pytest.raises(AuditError, match="line 1 is longer than 10,000 characters"):
            read(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert time.perf_counter() - started < 2
        assert peak < 2 * 2**20, peak  # 50 MB read whole would show here


def test_the_prompt_length_limit_is_exact(tmp_path: Path) -> None:
    from analysis.generation.prompts import (
        MAX_PROMPT_CHARS,
        prompts_from_texts,
        read_prompts_file,
    )

    assert MAX_PROMPT_CHARS == 10_000
    ok, long = "é" * MAX_PROMPT_CHARS, "é" * (MAX_PROMPT_CHARS + 1)  # 2 bytes a character
    (tmp_path / "ok.txt").write_text(f"{ok}\n", "utf-8")
    assert read_prompts_file(tmp_path / "ok.txt")[0].prompt == ok
    (tmp_path / "long.txt").write_text(f"a\n{long}\n", "utf-8")
    with pytest.raises(AuditError, match=r"long\.txt: line 2 is longer than 10,000"):
        read_prompts_file(tmp_path / "long.txt")
    (tmp_path / "long.jsonl").write_text(f'{{"prompt": "{long}"}}\n', "utf-8")
    with pytest.raises(AuditError, match="line 1: the prompt has 10,001 characters"):
        read_prompts_file(tmp_path / "long.jsonl")
    pd.DataFrame({"prompt": ["a", long]}).to_parquet(tmp_path / "long.parquet")
    with pytest.raises(AuditError, match="row 2: the prompt has 10,001 characters"):
        read_prompts_file(tmp_path / "long.parquet")
    with pytest.raises(AuditError, match="--prompt number 2: the prompt has 10,001"):
        prompts_from_texts(["a", long])


# 4. sharding variables


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"RANK": "0", "WORLD_SIZE": str(10**40)}, "WORLD_SIZE='100000000000...' (41 characters)"),
        ({"RANK": "3", "WORLD_SIZE": "3"}, "invalid shard 3/3 (RANK=3, WORLD_SIZE=3)"),
        ({"RANK": "-1", "WORLD_SIZE": "3"}, "(RANK=-1, WORLD_SIZE=3): need 0 <= i < N"),
        ({"RANK": "0", "WORLD_SIZE": "-4"}, "(RANK=0, WORLD_SIZE=-4): the number of shards"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "(RANK=0, WORLD_SIZE=0): the number of shards"),
        ({"RANK": "0", "WORLD_SIZE": "2.0"}, "WORLD_SIZE='2.0' is not a whole number"),
        ({"RANK": "0", "WORLD_SIZE": "\u0663"}, "is not a whole number"),  # Arabic-Indic 3
        ({"RANK": "0", "WORLD_SIZE": "100000"}, "N must be 1 .. 99,999"),
        ({"WORLD_SIZE": "4"}, "WORLD_SIZE is set but RANK is not"),
        ({"RANK": "1"}, "RANK is set but WORLD_SIZE is not"),
        (
            {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "0"},
            "SLURM_ARRAY_TASK_COUNT=0): the number of shards",
        ),
        (
            {
                "SLURM_ARRAY_TASK_ID": "9",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "8",
            },
            "invalid shard 8/8 (SLURM_ARRAY_TASK_ID=9 - SLURM_ARRAY_TASK_MIN=1",
        ),
        (
            {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "x" * 10**6},
            "SLURM_ARRAY_TASK_COUNT='xxxxxxxxxxxx...' (1000000 characters) is not",
        ),
    ],
)
def test_bad_shard_variables_are_named(env: dict[str, str], says: str) -> None:
    from analysis.store import resolve_shard

    with pytest.raises(AuditError) as info:
        resolve_shard(None, env=env)
    assert says in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_good_shard_variables_still_work() -> None:
    from analysis.store import Shard, resolve_shard

    assert resolve_shard(None, env={"RANK": " 7 ", "WORLD_SIZE": "99999"}) == Shard(7, 99_999)
    assert resolve_shard(None, env={"WORLD_SIZE": "1"}) == Shard(0, 1)
    slurm = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert resolve_shard(None, env=slurm) == Shard(7, 8)
    for value, says in [("3/2", "invalid shard 3/2 (--shard)"), ("0/0", "0/0 (--shard)")]:
        with pytest.raises(AuditError, match=says.replace("(", r"\(").replace(")", r"\)")):
            resolve_shard(value, env={})


# 5. the audit plan is counted, not listed


AUDIT = """configs = [{configs}]

[[models]]
name = "tiny"
model = "tiny"

[sampler]
steps = 1
height = 32
width = 32

[i2p]
images_per_prompt = {images}
clip_model = "tiny"
{limit}
"""


def _audit(
    path: Path, images: int, configs: str = '"sd", "sld-max", "sld-strong"', limit: str = ""
) -> Path:
    path.write_text(AUDIT.format(configs=configs, images=images, limit=limit))
    return path


def _i2p_prompts() -> int:
    """Non-empty I2P prompts, counted from the data file itself (what `i2p run` generates)."""
    from analysis.i2p.loader import load_i2p

    frame = load_i2p(None).frame
    return int((frame["prompt"].astype(str).str.strip() != "").sum())


def test_a_huge_audit_is_refused_in_seconds_by_dry_run_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from analysis.audit.plan import MAX_ITEMS_PER_RUN

    spec = _audit(tmp_path / "huge.toml", 100_000)
    expected = 3 * _i2p_prompts() * 100_000
    assert expected > 10**9
    for extra in (["--dry-run", "--no-estimate"], []):
        started = time.perf_counter()
        code, err = _cli(["run", str(spec), "--out", str(tmp_path / "new"), *extra], capsys)
        assert time.perf_counter() - started < 30
        assert code == 2, err
        assert err.strip() == (
            f"error: {spec}: tiny/i2p plans {expected:,} images (3 configs x "
            f"{_i2p_prompts():,} prompts x 100,000 images), over the limit of "
            f"{MAX_ITEMS_PER_RUN:,} per run"
        )
        assert not (tmp_path / "new").exists()


def test_the_counted_plan_equals_the_listed_one(tmp_path: Path) -> None:
    from analysis.audit.plan import MAX_ITEMS_PER_RUN, i2p_spec, plan_audit
    from analysis.audit.spec import load_audit
    from analysis.generation.runner import plan_items

    audit = load_audit(_audit(tmp_path / "a.toml", 3, limit="limit = 5"))
    (plan,) = plan_audit(audit, tmp_path / "out")
    listed = plan_items(i2p_spec(audit, audit.models[0]))
    assert plan.planned == len(listed) == 3 * 5 * 3 and plan.done == 0 and plan.note is None
    assert plan.left_by_config == listed["config"].value_counts().to_dict()
    # just under and just over the limit (4,703 prompts x 2,126 images = 9,998,578 per config)
    big = load_audit(_audit(tmp_path / "b.toml", MAX_ITEMS_PER_RUN // _i2p_prompts(), '"sd"'))
    started = time.perf_counter()
    (plan,) = plan_audit(big, tmp_path / "out")
    assert time.perf_counter() - started < 30  # counted: listing ~10M items takes many minutes
    assert plan.planned == _i2p_prompts() * (MAX_ITEMS_PER_RUN // _i2p_prompts())
    over = load_audit(_audit(tmp_path / "c.toml", MAX_ITEMS_PER_RUN // _i2p_prompts() + 1, '"sd"'))
    with pytest.raises(AuditError, match=f"over the limit of {MAX_ITEMS_PER_RUN:,} per run"):
        plan_audit(over, tmp_path / "out")


def test_a_plan_still_notes_a_folder_that_holds_something_else(tmp_path: Path) -> None:
    from analysis.audit.plan import plan_audit
    from analysis.audit.spec import load_audit

    audit = load_audit(_audit(tmp_path / "a.toml", 1, limit="limit = 2"))
    folder = tmp_path / "out" / "tiny" / "i2p"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (plan,) = plan_audit(audit, tmp_path / "out")
    assert plan.note is not None and "is not empty but holds no t2i-audit run" in plan.note
