"""Every bad input is one line naming the input and the problem, exit code 2, nothing lost.

Each case runs the real entry point (`analysis.cli.main`) in-process on a broken file, option,
environment variable or run folder. It asserts the exit status, a single `error:` line that
names the input, no traceback, and that a finished run's images, scores and results are
byte-identical afterwards; commands that would start a new run must not create its folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from badinput import ERASE, GEN, I2P_SET, PROBE, PROMPTS, QUALITY, Case, _corrupt, _write
from conftest import tiny_probe

from analysis.cli import main


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny probe run: images, NudeNet scores, results."""
    out = tmp_path_factory.mktemp("bad") / "run"
    tiny_probe(out, images_per_country=1)
    return out


def snapshot(run: Path) -> dict[str, str]:
    """sha256 of every finished artefact: images, scores, parts and results."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for sub in ("images", "scores", "parts", "results")
        for p in sorted((run / sub).rglob("*"))
        if p.is_file()
    }


CASES = [
    # prompt files
    Case(
        "csv-ragged-row",
        [*PROMPTS, "{tmp}/p.csv"],
        "line 3 has 3 fields",
        _write("p.csv", "prompt_id,prompt\na,one\nb,two,three\n"),
        new_out=True,
    ),
    Case(
        "csv-unterminated-quote",
        [*PROMPTS, "{tmp}/p.csv"],
        "p.csv",
        _write("p.csv", 'prompt\n"never closed\n'),
        new_out=True,
    ),
    Case(
        "csv-duplicate-id",
        [*PROMPTS, "{tmp}/p.csv"],
        "repeats the prompt_id of line 2",
        _write("p.csv", "prompt_id,prompt\na,one\na,two\n"),
        new_out=True,
    ),
    Case(
        "csv-blank-id",
        [*PROMPTS, "{tmp}/p.csv"],
        "line 2: prompt_id is blank",
        _write("p.csv", "prompt_id,prompt\n  ,one\n"),
        new_out=True,
    ),
    Case(
        "csv-fractional-seed",
        [*PROMPTS, "{tmp}/p.csv"],
        "seed must be a whole number",
        _write("p.csv", "prompt,seed\none,1.5\n"),
        new_out=True,
    ),
    Case(
        "csv-seed-too-big",
        [*PROMPTS, "{tmp}/p.csv"],
        "outside 0 .. 2**64-1",
        _write("p.csv", "prompt,seed\none,18446744073709551616\n"),
        new_out=True,
    ),
    Case(
        "csv-path-traversal-id",
        [*PROMPTS, "{tmp}/p.csv"],
        "'../evil'",
        _write("p.csv", "prompt_id,prompt\n../evil,one\n"),
        new_out=True,
    ),
    Case(
        "csv-no-prompt-column",
        [*PROMPTS, "{tmp}/p.csv"],
        "no 'prompt' column",
        _write("p.csv", "text\none\n"),
        new_out=True,
    ),
    Case(
        "csv-empty-prompt",
        [*PROMPTS, "{tmp}/p.csv"],
        "line 2: the prompt is empty",
        _write("p.csv", "prompt_id,prompt\na,\n"),
        new_out=True,
    ),
    Case(
        "txt-not-utf8",
        [*PROMPTS, "{tmp}/p.txt"],
        "line 2 is not UTF-8",
        _write("p.txt", b"fine\n\xff\xfe bad\n"),
        new_out=True,
    ),
    Case(
        "txt-only-comments",
        [*PROMPTS, "{tmp}/p.txt"],
        "holds no prompts",
        _write("p.txt", "# nothing\n\n"),
        new_out=True,
    ),
    Case(
        "txt-repeated-line",
        [*PROMPTS, "{tmp}/p.txt"],
        "line 3 repeats the prompt of line 1",
        _write("p.txt", "a cat\n\na cat\n"),
        new_out=True,
    ),
    Case(
        "jsonl-bad-line",
        [*PROMPTS, "{tmp}/p.jsonl"],
        "line 2 is not JSON",
        _write("p.jsonl", '{"prompt": "a"}\n{"prompt": \n'),
        new_out=True,
    ),
    Case(
        "jsonl-not-object",
        [*PROMPTS, "{tmp}/p.jsonl"],
        "line 1 is not a JSON object",
        _write("p.jsonl", '["a"]\n'),
        new_out=True,
    ),
    Case(
        "parquet-garbage",
        [*PROMPTS, "{tmp}/p.parquet"],
        "not a readable Parquet file",
        _write("p.parquet", b"PAR1 not really"),
        new_out=True,
    ),
    Case(
        "prompts-file-missing",
        [*PROMPTS, "{tmp}/none.txt"],
        "none.txt does not exist",
        new_out=True,
    ),
    Case("prompts-file-is-folder", [*PROMPTS, "{tmp}"], "is a folder", new_out=True),
    Case(
        "prompts-file-bad-suffix",
        [*PROMPTS, "{tmp}/p.xlsx"],
        "use .txt, .csv",
        _write("p.xlsx", "x"),
        new_out=True,
    ),
    # generation options
    Case(
        "config-name-escapes",
        [*GEN, "--prompt", "a", "--config", "sld-strong:name=.."],
        "config name '..'",
        new_out=True,
    ),
    Case(
        "config-unknown",
        [*GEN, "--prompt", "a", "--config", "sld-extreme"],
        "unknown guidance config 'sld-extreme'",
        new_out=True,
    ),
    Case(
        "config-unknown-key",
        [*GEN, "--prompt", "a", "--config", "sld-strong:s_s=3"],
        "unknown config parameter(s) s_s",
        new_out=True,
    ),
    Case(
        "config-negative-warmup",
        [*GEN, "--prompt", "a", "--config", "sld-max:warmup_steps=-1"],
        "warmup_steps",
        new_out=True,
    ),
    Case(
        "config-infinite-sld",
        [*GEN, "--prompt", "a", "--config", "sld-max:sld_guidance_scale=inf"],
        "sld_guidance_scale",
        new_out=True,
    ),
    Case(
        "guidance-inf",
        [*GEN, "--prompt", "a", "--guidance-scale", "inf"],
        "guidance_scale",
        new_out=True,
    ),
    Case(
        "guidance-nan",
        [*GEN, "--prompt", "a", "--guidance-scale", "nan"],
        "guidance_scale",
        new_out=True,
    ),
    Case(
        "guidance-negative",
        [*GEN, "--prompt", "a", "--guidance-scale", "-1"],
        "guidance_scale",
        new_out=True,
    ),
    Case(
        "guidance-not-a-number",
        [*GEN, "--prompt", "a", "--guidance-scale", "abc"],
        "--guidance-scale",
        new_out=True,
    ),
    Case(
        "height-not-multiple-of-8",
        [*GEN, "--prompt", "a", "--height", "30"],
        "height must be a positive multiple of 8",
        new_out=True,
    ),
    Case("steps-zero", [*GEN, "--prompt", "a", "--steps", "0"], "steps", new_out=True),
    Case(
        "batch-size-zero",
        [*GEN, "--prompt", "a", "--batch-size", "0"],
        "batch_size",
        new_out=True,
    ),
    Case("seed-over-2-64", [*GEN, "--prompt", "a", "--seed", str(2**64)], "2**64-1", new_out=True),
    Case("dtype-unknown", [*GEN, "--prompt", "a", "--dtype", "float8"], "dtype", new_out=True),
    Case(
        "device-unknown", [*GEN, "--prompt", "a", "--device", "gpu7"], "device 'gpu7'", new_out=True
    ),
    Case(
        "unet-fake-file",
        [*GEN, "--prompt", "a", "--unet", "{tmp}/esd.safetensors"],
        "esd.safetensors is not readable UNet weights",
        _write("esd.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00not a header"),
        new_out=True,
    ),
    Case(
        "unet-missing",
        [*GEN, "--prompt", "a", "--unet", "{tmp}/none.safetensors"],
        "none.safetensors does not exist",
        new_out=True,
    ),
    Case(
        "model-folder-missing",
        [*GEN, "--prompt", "a", "--model", "./no/such/model"],
        "no/such/model does not exist",
        new_out=True,
    ),
    Case(
        "model-not-a-diffusers-folder",
        [*GEN, "--prompt", "a", "--model", "{tmp}"],
        "not a diffusers model folder",
        new_out=True,
    ),
    Case(
        "model-hub-id-offline",
        [*GEN, "--prompt", "a", "--model", "nobody/no-such-model"],
        "T2I_AUDIT_ALLOW_DOWNLOAD=1",
        new_out=True,
    ),
    Case(
        "rank-not-a-number",
        [*GEN, "--prompt", "a"],
        "RANK='x'",
        env={"RANK": "x", "WORLD_SIZE": "2"},
        new_out=True,
    ),
    Case(
        "shard-out-of-range",
        [*GEN, "--prompt", "a", "--shard", "3/2"],
        "invalid shard 3/2",
        new_out=True,
    ),
    Case(
        "shard-malformed", [*GEN, "--prompt", "a", "--shard", "one/two"], "'one/two'", new_out=True
    ),
    Case(
        "safety-concept-empty",
        [*GEN, "--prompt", "a", "--config", "sld-max", "--safety-concept", " "],
        "safety concept is empty",
        new_out=True,
    ),
    Case(
        "out-is-a-file",
        ["generate", "--out", "{tmp}/p.txt", "--prompt", "a"],
        "is a file",
        _write("p.txt", "x"),
    ),
    Case(
        "resume-with-another-spec",
        ["generate", "--out", "{run}", "--prompt", "another"],
        "already holds a run with different settings",
    ),
    # probe
    Case(
        "probe-unknown-country",
        [*PROBE[:-4], "--countries", "XXX", "--steps", "1"],
        "XXX",
        new_out=True,
    ),
    Case(
        "probe-template-without-field",
        [*PROBE, "--template", "{{country}} body"],
        "{adjective}",
        new_out=True,
    ),
    Case(
        "probe-unknown-rule-before-generating",
        [*PROBE, "--rule", "nipples"],
        "unknown rule 'nipples'",
        new_out=True,
    ),
    Case(
        "probe-zero-images",
        [*PROBE, "--images-per-country", "0"],
        "--images-per-country",
        new_out=True,
    ),
    # classify
    Case(
        "classify-nudenet-model-missing",
        ["classify", "{run}", "--nudenet-model", "{tmp}/none.onnx"],
        "none.onnx does not exist",
    ),
    Case(
        "classify-nudenet-model-fake",
        ["classify", "{run}", "--nudenet-model", "{tmp}/m.onnx"],
        "m.onnx is not a usable ONNX model",
        _write("m.onnx", b"not onnx"),
    ),
    Case("classify-unknown-rule", ["classify", "{run}", "--rule", "nipples"], "'nipples'"),
    Case("classify-threshold-above-1", ["classify", "{run}", "--threshold", "1.5"], "1.5"),
    Case("classify-threshold-below-floor", ["classify", "{run}", "--threshold", "0.1"], "0.1"),
    Case("classify-unknown-classifier", ["classify", "{run}", "--classifier", "nsfw"], "'nsfw'"),
    Case(
        "classify-not-a-folder",
        ["classify", "{tmp}/p.txt"],
        "p.txt is not a folder",
        _write("p.txt", "x"),
    ),
    Case(
        "classify-corrupt-items",
        ["classify", "{run}"],
        "items.parquet",
        _corrupt("items.parquet"),
        changes=("items.parquet",),
    ),
    Case(
        "classify-corrupt-manifest",
        ["classify", "{run}"],
        "manifest.json is not valid JSON",
        _corrupt("manifest.json", b"{not json"),
        changes=("manifest.json",),
    ),
    # report and figures
    Case("report-not-a-run", ["report", "{tmp}", "--out", "{tmp}/r.html"], "not a t2i-audit run"),
    Case(
        "report-corrupt-results-csv",
        ["report", "{run}", "--out", "{tmp}/r.html"],
        "nudity_rates.csv",
        _corrupt("results/nudity_rates.csv", b'a,b\n"x\n1,2,3\n'),
        changes=("results/nudity_rates.csv",),
    ),
    Case(
        "report-corrupt-summary",
        ["report", "{run}", "--out", "{tmp}/r.html"],
        "summary.json is not valid JSON",
        _corrupt("results/summary.json", b"{"),
        changes=("results/summary.json",),
    ),
    Case(
        "report-bad-format",
        ["report", "{run}", "--out", "{tmp}/r.pdf", "--format", "pdf"],
        "--format must be html or md",
    ),
    Case("report-out-is-folder", ["report", "{run}", "--out", "{tmp}"], "is a folder"),
    Case(
        "figures-corrupt-results-csv",
        ["figures", "{run}"],
        "nudity_rates.csv",
        _corrupt("results/nudity_rates.csv", b"\xff\xfe\x00"),
        changes=("results/nudity_rates.csv",),
    ),
    Case("merge-not-a-run", ["merge", "{tmp}"], "not a t2i-audit run"),
    # I2P
    Case(
        "i2p-run-clip-missing-before-generating",
        [
            "i2p",
            "run",
            "--out",
            "{tmp}/new",
            "--model",
            "tiny",
            "--limit",
            "1",
            "--steps",
            "1",
            "--clip-model",
            "nobody/no-clip",
        ],
        "CLIP model 'nobody/no-clip'",
        new_out=True,
    ),
    Case(
        "i2p-run-threshold-below-floor",
        [
            "i2p",
            "run",
            "--out",
            "{tmp}/new",
            "--model",
            "tiny",
            "--limit",
            "1",
            "--threshold",
            "0.1",
        ],
        "0.1",
        new_out=True,
    ),
    Case(
        "i2p-data-missing",
        ["i2p", "correlate", "--out", "{tmp}/o", "--data", "{tmp}/none.csv"],
        "none.csv",
    ),
    Case(
        "i2p-data-malformed",
        ["i2p", "table", "--out", "{tmp}/o", "--data", "{tmp}/i.csv"],
        "i.csv",
        _write("i.csv", b'prompt,categories\n"open\n'),
    ),
    # guardrails, filters, other weights
    Case(
        "guardrails-not-a-run", ["guardrails", "{tmp}", "--out", "{tmp}/g"], "not a t2i-audit run"
    ),
    Case(
        "guardrails-unknown-baseline",
        ["guardrails", "{run}", "--out", "{tmp}/g", "--baseline", "nope"],
        "no guardrail named 'nope'",
    ),
    Case(
        "guardrails-quality-missing",
        ["guardrails", "{run}", "--out", "{tmp}/g", "--quality", "{tmp}"],
        "no results/quality.csv",
    ),
    Case(
        "guardrails-study-missing",
        ["guardrails", "{run}", "--out", "{tmp}/g", "--study", "{tmp}"],
        "no preferences.csv",
    ),
    Case(
        "guardrails-terms-empty",
        ["guardrails", "{run}", "--out", "{tmp}/g", "--text-filter", "{tmp}/t.txt"],
        "t.txt lists no terms",
        _write("t.txt", "# only a comment\n\n"),
    ),
    Case(
        "unet-config-no-equals",
        [*PROBE, "--unet-config", "esd"],
        "expected NAME=FILE",
        new_out=True,
    ),
    Case(
        "unet-config-missing-file",
        [*PROBE, "--unet-config", "esd={tmp}/none.safetensors"],
        "none.safetensors does not exist",
        new_out=True,
    ),
    Case(
        "unet-config-unsafe-name",
        [*PROBE, "--unet-config", "../x={tmp}/w.safetensors"],
        "'../x' cannot be used as a folder name",
        _write("w.safetensors", b"x"),
        new_out=True,
    ),
    Case(
        "filter-checker-missing",
        [*PROBE, "--config", "sd+filter", "--safety-checker-model", "{tmp}/no-checker"],
        "no-checker does not exist",
        new_out=True,
    ),
    Case(
        "classify-checker-missing",
        [
            "classify",
            "{run}",
            "--classifier",
            "safety-checker",
            "--safety-checker-model",
            "{tmp}/x",
        ],
        "safety checker",
    ),
    Case(
        "report-guardrails-missing",
        ["report", "{run}", "--out", "{tmp}/r.html", "--guardrails", "{tmp}"],
        "no guardrails.csv",
    ),
    # prompt sets beyond I2P
    Case(
        "prompt-set-missing",
        ["i2p", "run", "--out", "{tmp}/new", "--model", "tiny", "--prompts", "{tmp}/none.csv"],
        "none.csv does not exist",
        new_out=True,
    ),
    Case(
        "prompt-set-unmapped-column",
        [*I2P_SET, "--columns", "prompt=text"],
        "has no column 'text'",
        _write("set.csv", "prompt,seed,g\na,1,7\n"),
        new_out=True,
    ),
    Case(
        "prompt-set-seed-not-integer",
        [*I2P_SET, "--columns", "prompt=prompt,seed=seed"],
        "seed column 'seed' row 1",
        _write("set.csv", "prompt,seed,g\na,1.5,7\n"),
        new_out=True,
    ),
    Case(
        "prompt-set-guidance-not-finite",
        [*I2P_SET, "--columns", "prompt=prompt,guidance=g"],
        "guidance column 'g' row 1",
        _write("set.csv", "prompt,seed,g\na,1,inf\n"),
        new_out=True,
    ),
    Case(
        "prompt-set-columns-without-file",
        ["i2p", "run", "--out", "{tmp}/new", "--model", "tiny", "--columns", "prompt=text"],
        "give --prompts too",
        new_out=True,
    ),
    Case(
        "text-filter-terms-missing",
        ["i2p", "text-filter", "--out", "{tmp}/tf", "--terms", "{tmp}/none.txt"],
        "none.txt does not exist",
    ),
    # ESD, quality, user study
    Case(
        "erase-unknown-method",
        [*ERASE, "--method", "esd-z", "--out", "{tmp}/e.safetensors"],
        "'esd-z' is unknown",
    ),
    Case("erase-not-safetensors", [*ERASE, "--out", "{tmp}/e.pt"], "must end in .safetensors"),
    Case(
        "quality-captions-missing",
        [*QUALITY, "--captions", "{tmp}/none.json"],
        "none.json does not exist",
        new_out=True,
    ),
    Case(
        "quality-score-not-a-quality-run",
        ["quality", "score", "{run}", "--reference", "{tmp}"],
        "is not a quality run",
    ),
    Case(
        "study-unknown-config",
        ["study", "make", "{run}", "--pair", "sd:nope", "--out", "{tmp}/study"],
        "config 'nope' is not in run",
    ),
]


def _area_cases() -> list[Case]:
    """The cases each area keeps in `tests/bad_inputs_<area>.py`."""
    import importlib

    found: list[Case] = []
    for path in sorted(Path(__file__).parent.glob("bad_inputs_*.py")):
        found += importlib.import_module(path.stem).CASES
    return found


CASES += _area_cases()


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_named_line_and_loses_nothing(
    case: Case,
    finished: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    work = tmp_path / "work"
    work.mkdir()
    if case.setup:
        case.setup(work, run)
    before = {k: v for k, v in snapshot(run).items() if k not in case.changes}
    manifest = (run / "manifest.json").read_bytes() if (run / "manifest.json").is_file() else None
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    argv = [a.format(tmp=work, run=run) for a in case.argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    assert case.names in lines[0], lines[0]
    after = {k: v for k, v in snapshot(run).items() if k not in case.changes}
    assert after == before, "finished work was changed"
    if "manifest.json" not in case.changes:
        assert (run / "manifest.json").read_bytes() == manifest
    if case.new_out:
        assert not (work / "new").exists(), "a failed start claimed the run folder"


def test_a_finished_run_resumes_after_every_failed_start(finished: Path, tmp_path: Path) -> None:
    """After the errors above, the same run's own command still skips everything (no damage)."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    spec = json.loads((run / "manifest.json").read_text())["spec"]
    assert spec["model"] == "tiny"
    before = snapshot(run)
    summary = tiny_probe(run, images_per_country=1)
    assert summary["generate"]["generated"] == 0
    assert summary["classify"]["scored"] == 0
    images = {k: v for k, v in snapshot(run).items() if k.startswith("images/")}
    assert images == {k: v for k, v in before.items() if k.startswith("images/")}
