"""The generation runner on the tiny model: run directory contract, resume after SIGKILL, shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.cli import app
from analysis.errors import AuditError
from analysis.generation.prompts import prompts_from_texts, read_prompts_file
from analysis.generation.runner import build_spec, plan_items, run_generation
from analysis.store import RunDir, Shard

SMALL = {"steps": 3, "height": 32, "width": 32, "model": "tiny"}
PROMPTS = ["japanese body", "nigerian body"]


def _spec(**over):
    kwargs = {
        **SMALL,
        "configs": ["sd", "sld-max"],
        "prompts": prompts_from_texts(PROMPTS, base_seed=7),
        "images_per_prompt": 3,
    }
    kwargs.update(over)
    return build_spec(**kwargs)


def _cli_args(out: Path, *extra: str) -> list[str]:
    args = ["generate", "--model", "tiny", "--out", str(out), "--steps", "3"]
    args += ["--height", "32", "--width", "32", "--images-per-prompt", "3", "--seed", "7"]
    args += ["--config", "sd", "--config", "sld-max", "--batch-size", "2"]
    for p in PROMPTS:
        args += ["--prompt", p]
    return [*args, *extra]


def _images(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.glob("images/**/*.png"))}


def test_plan_ids_are_stable_and_depend_only_on_what_changes_pixels() -> None:
    a, b = plan_items(_spec()), plan_items(_spec())
    assert a["item_id"].tolist() == b["item_id"].tolist()
    assert a["item_id"].is_unique and len(a) == 2 * 2 * 3
    # seeds: base + image index, identical across prompts and configs (paired comparison)
    assert sorted(set(a["seed"])) == [7, 8, 9]
    assert (a.groupby(["prompt_id", "image_index"])["seed"].nunique() == 1).all()
    c = plan_items(_spec(steps=4))
    assert not set(a["item_id"]) & set(c["item_id"])


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"configs": ["sld-ultra"]}, "sld-medium"),
        ({"height": 36}, "multiple of 8"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"dtype": "float64"}, "dtype"),
    ],
)
def test_bad_settings_are_named(over: dict, message: str) -> None:
    with pytest.raises(AuditError, match=message):
        _spec(**over)


def test_empty_prompts_file(tmp_path: Path) -> None:
    f = tmp_path / "prompts.txt"
    f.write_text("# only a comment\n\n")
    with pytest.raises(AuditError, match="holds no prompts"):
        read_prompts_file(f)
    with pytest.raises(AuditError, match="does not exist"):
        read_prompts_file(tmp_path / "missing.txt")


def test_run_directory_contract_and_skip_existing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_generation(_spec(), out, batch_size=4, progress=False)
    assert first["generated"] == 12 and first["complete"]
    run = RunDir(out)
    manifest = run.read_manifest()
    assert manifest["spec"]["steps"] == 3 and manifest["safety_checker"] == "off"
    assert manifest["versions"]["torch"] and manifest["model"]
    items = pd.read_parquet(out / "items.parquet")
    assert (items["status"] == "done").all()
    for _, row in items.iterrows():
        path = out / "images" / row["config"] / row["prompt_id"] / f"{row['image_index']}.png"
        assert path.is_file() and row["image_path"] == str(path.relative_to(out))
    again = run_generation(_spec(), out, batch_size=4, progress=False)
    assert again["generated"] == 0 and again["already_done"] == 12
    # a deleted image is regenerated, bit-identical
    victim = out / items["image_path"].iloc[5]
    before = victim.read_bytes()
    victim.unlink()
    assert run_generation(_spec(), out, batch_size=4, progress=False)["generated"] == 1
    assert victim.read_bytes() == before


def test_refuses_a_run_directory_holding_another_spec(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_generation(_spec(images_per_prompt=1), out, progress=False)
    with pytest.raises(AuditError, match=r"different settings.*steps \(3 -> 4\).*another --out"):
        run_generation(_spec(images_per_prompt=1, steps=4), out, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(AuditError, match="not empty"):
        run_generation(_spec(images_per_prompt=1), tmp_path / "junk", progress=False)


def test_shards_are_disjoint_and_merge_to_the_whole_run(tmp_path: Path) -> None:
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    run_generation(_spec(batch_size=2), whole, progress=False)
    counts = [
        run_generation(_spec(batch_size=2), sharded, shard=Shard(i, 3), progress=False)
        for i in range(3)
    ]
    assert sum(c["generated"] for c in counts) == 12
    result = CliRunner().invoke(app, ["merge", str(sharded)])
    assert result.exit_code == 0, result.output
    a = pd.read_parquet(whole / "items.parquet")
    b = pd.read_parquet(sharded / "items.parquet")
    pd.testing.assert_frame_equal(a, b)
    # batches are composed differently in every shard; fixed-shape calls make that irrelevant
    assert _images(whole) == _images(sharded)


def test_a_run_extended_later_keeps_its_images_and_equals_a_fresh_run(tmp_path: Path) -> None:
    small = _spec(configs=["sd"], prompts=prompts_from_texts(PROMPTS[:1], 7), images_per_prompt=2)
    big = _spec(prompts=prompts_from_texts([*PROMPTS, "a cat"], 7), images_per_prompt=3)
    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    run_generation(small, grown, progress=False)
    before = _images(grown)
    summary = run_generation(big, grown, progress=False)
    assert summary["already_done"] == 2 and summary["generated"] == 16
    after = _images(grown)
    assert {k: after[k] for k in before} == before, "extending changed finished images"
    run_generation(big, fresh, progress=False)
    assert after == _images(fresh)
    manifest = RunDir(grown).read_manifest()
    assert manifest["n_items"] == 18 and len(manifest["extended_from"]) == 1
    # changing anything that moves pixels is not an extension
    with pytest.raises(AuditError, match="can only be extended"):
        run_generation(_spec(batch_size=3), grown, progress=False)


def test_one_item_alone_equals_it_inside_a_run(tmp_path: Path) -> None:
    run_generation(_spec(), tmp_path / "all", progress=False)
    one = _spec(configs=["sld-max"], prompts=prompts_from_texts(PROMPTS[1:], 7))
    run_generation(one, tmp_path / "one", progress=False)
    for key, data in _images(tmp_path / "one").items():
        assert _images(tmp_path / "all")[key] == data


def test_old_engine_run_folders_are_refused_clearly(tmp_path: Path) -> None:
    out = tmp_path / "old"
    run_generation(_spec(), out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["spec"]["unet_batching"] = "per-image"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AuditError, match="older t2i-audit engine"):
        run_generation(_spec(), out, progress=False)


def _wait_for_parts(out: Path, proc: subprocess.Popen, minimum: int) -> None:
    part = out / "parts" / "generate" / "shard-00000-of-00001.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if part.exists() and part.read_text().count("\n") >= minimum:
            return
        if proc.poll() is not None:
            pytest.fail("generation finished before it could be killed")
        time.sleep(0.005)
    pytest.fail("no progress within 120 s")


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    # Every run is a subprocess with the same thread count: CPU float results depend on it.
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cmd = [sys.executable, "-c", "from analysis.cli import main; main()"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*cmd, *_cli_args(whole)], env=env, check=True, capture_output=True)
    for minimum in (1, 5):  # kill twice: early, then again later in the resumed run
        proc = subprocess.Popen([*cmd, *_cli_args(killed)], env=env, stdout=subprocess.DEVNULL)
        _wait_for_parts(killed, proc, minimum)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = RunDir(killed).items()["status"].eq("done").sum()
    assert 0 < done_before < 12
    subprocess.run([*cmd, *_cli_args(killed)], env=env, check=True, capture_output=True)
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["n_items"] == 12
    assert _images(whole) == _images(killed)
    pd.testing.assert_frame_equal(
        pd.read_parquet(whole / "items.parquet"), pd.read_parquet(killed / "items.parquet")
    )
    parts = (killed / "parts" / "generate" / "shard-00000-of-00001.jsonl").read_text()
    ids = [json.loads(line)["item_id"] for line in parts.splitlines() if line.endswith("}")]
    assert len(ids) == len(set(ids)), "a finished item was generated twice"


def test_cli_generate_summary_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, _cli_args(out, "--shard", "0/2"))
    assert result.exit_code == 0, result.output
    assert "generated" in result.output and "shard-00000-of-00002" in result.output
    bad = runner.invoke(app, ["generate", "--out", str(tmp_path / "x"), "--config", "sd"])
    assert isinstance(bad.exception, AuditError) and "--prompt" in str(bad.exception)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from analysis.cli import main; main()",
            "generate",
            "--out",
            str(tmp_path / "y"),
            "--prompt",
            "a",
            "--config",
            "nope",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "error:" in proc.stderr and "sld-strong" in proc.stderr


def test_merge_compacts_parts_without_losing_a_row(tmp_path: Path) -> None:
    from analysis.store.parts import part_sizes, retire_parts

    out = tmp_path / "run"
    for i in range(2):
        run_generation(_spec(batch_size=2), out, shard=Shard(i, 2), progress=False)
    before = RunDir(out).items()
    result = CliRunner().invoke(app, ["merge", str(out)])
    assert result.exit_code == 0, result.output
    run = RunDir(out)
    assert not list((out / "parts" / "generate").glob("*.jsonl")), "covered parts are retired"
    assert len(list((out / "parts" / "generate" / "merged").glob("*.jsonl"))) == 2
    pd.testing.assert_frame_equal(run.items(), before)
    assert run_generation(_spec(batch_size=2), out, progress=False)["generated"] == 0
    # a part that grows after its size was taken is not retired; rows appended later are read
    part = out / "parts" / "generate" / "late.jsonl"
    part.write_text(json.dumps({"item_id": before["item_id"].iloc[0], "status": "error"}) + "\n")
    covered = part_sizes(run, "generate")
    with open(part, "a") as fh:
        fh.write(json.dumps({"item_id": before["item_id"].iloc[1], "status": "error"}) + "\n")
    assert retire_parts(run, "generate", covered) == 0
    assert (run.items()["status"] == "error").sum() == 2


def test_saving_and_after_batch_overlap_the_next_batch(tmp_path, monkeypatch) -> None:
    """PNG writing and the after_batch hook run on a saver thread while the next batch samples;
    rows reach the hook in order, after their part rows, and the images are unchanged."""
    import threading

    from analysis.generation import runner

    events: list[tuple[str, int, float]] = []
    real = runner._sample_batch

    def logged(loaded, spec, batch):
        events.append(("sample", len(events), time.perf_counter()))
        return real(loaded, spec, batch)

    seen: list[list[str]] = []
    threads: set[str] = set()

    def after(rows):
        threads.add(threading.current_thread().name)
        run = RunDir(tmp_path / "r")
        done = set(
            pd.read_json(run.parts_dir / "generate" / "shard-00000-of-00001.jsonl", lines=True)[
                "item_id"
            ]
        )
        assert {r["item_id"] for r in rows} <= done  # part rows are written before the hook
        time.sleep(0.3)
        events.append(("after", len(seen), time.perf_counter()))
        seen.append([r["item_id"] for r in rows])

    monkeypatch.setattr(runner, "_sample_batch", logged)
    spec = _spec(
        configs=["sd"],
        prompts=prompts_from_texts(["a", "b", "c"]),
        images_per_prompt=2,
        batch_size=2,
    )
    run_generation(spec, tmp_path / "r", progress=False, after_batch=after)
    assert [len(b) for b in seen] == [2, 2, 2]
    flat = [item for b in seen for item in b]
    assert flat == list(plan_items(spec)["item_id"])  # every item once, in plan order
    assert threads and all(name.startswith("t2i-save") for name in threads)
    first_after = next(t for kind, i, t in events if kind == "after" and i == 0)
    second_sample = [t for kind, _, t in events if kind == "sample"][1]
    assert second_sample < first_after  # batch 2 sampled while batch 1 was being handled
    monkeypatch.setattr(runner, "_sample_batch", real)
    run_generation(spec, tmp_path / "plain", progress=False)
    for png in (tmp_path / "plain" / "images").rglob("*.png"):
        assert (
            png.read_bytes() == (tmp_path / "r" / png.relative_to(tmp_path / "plain")).read_bytes()
        )


def test_a_batch_that_does_not_fit_names_the_batch_size_that_does(tmp_path, monkeypatch) -> None:
    """Out of memory at B = 8: one-step checks at 4, 2, ... find what fits, and say so."""
    from analysis.generation import sampler

    real = sampler.sample

    def limited(model, prompts, seeds, config, params, **kwargs):
        if (params.batch_size or len(prompts)) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, prompts, seeds, config, params, **kwargs)

    monkeypatch.setattr(sampler, "sample", limited)
    spec = _spec(configs=["sd"], batch_size=8)
    with pytest.raises(
        AuditError, match=r"a batch of 8 does not fit .* B = 2 fits .* --batch-size 2"
    ):
        run_generation(spec, tmp_path / "r", progress=False)
    monkeypatch.setattr(
        sampler, "sample", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory"))
    )
    with pytest.raises(AuditError, match="not even B = 1 fits"):
        run_generation(spec, tmp_path / "s", progress=False)
