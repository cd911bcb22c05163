"""Bad inputs of issue 24's misc area: filter arms, text files, shard variables, audit size."""

from __future__ import annotations

from badinput import GEN, PROMPTS, Case, _write

HUGE_AUDIT = """configs = ["sd", "sld-max", "sld-strong"]

[[models]]
name = "tiny"
model = "tiny"

[sampler]
steps = 1
height = 32
width = 32

[i2p]
images_per_prompt = 100000
clip_model = "tiny"
"""
LATIN1_TERMS = b"nude\ngory caf\xe9\n"  # byte 13 is Latin-1 e-acute

CASES = [
    Case(
        "misc-generate-filter-without-config",
        [*GEN, "--prompt", "a", "--config", "+filter"],
        "--config '+filter': name the one config",
        new_out=True,
    ),
    Case(
        "misc-generate-filter-twice-in-one-arm",
        [*GEN, "--prompt", "a", "--config", "sd+filter+filter"],
        "--config 'sd+filter+filter': name the one config",
        new_out=True,
    ),
    Case(
        "misc-generate-text-filter-arm",
        [*GEN, "--prompt", "a", "--config", "sd+text-filter"],
        "guardrails --text-filter FILE",
        new_out=True,
    ),
    Case(
        "misc-generate-filter-repeated",
        [*GEN, "--prompt", "a", "--config", "sd+filter", "--config", "sd+filter"],
        "--config 'sd+filter' is given twice",
        new_out=True,
    ),
    Case(
        "misc-generate-filter-real-checker-missing",
        [*GEN, "--prompt", "a", "--model", "sd1-arch", "--config", "sd+filter"],
        "safety checker 'CompVis/stable-diffusion-safety-checker' is not available",
        env={"HF_HUB_CACHE": "/nonexistent/t2i-audit-empty-cache"},
        new_out=True,
    ),
    Case(
        "misc-guardrails-terms-not-utf8",
        ["guardrails", "{run}", "--out", "{tmp}/new", "--text-filter", "{tmp}/terms.txt"],
        "terms.txt: line 2 is not UTF-8 text (byte 13",
        _write("terms.txt", LATIN1_TERMS),
        new_out=True,
    ),
    Case(
        "misc-i2p-text-filter-terms-not-utf8",
        ["i2p", "text-filter", "--out", "{tmp}/new", "--terms", "{tmp}/terms.txt"],
        "terms.txt: line 2 is not UTF-8 text (byte 13",
        _write("terms.txt", LATIN1_TERMS),
        new_out=True,
    ),
    Case(
        "misc-prompts-one-huge-line",
        [*PROMPTS, "{tmp}/p.txt"],
        "p.txt: line 1 is longer than 10,000 characters",
        _write("p.txt", b"x" * 5_000_000),
        new_out=True,
    ),
    Case(
        "misc-prompts-jsonl-long-prompt",
        [*PROMPTS, "{tmp}/p.jsonl"],
        "line 2: the prompt has 10,001 characters",
        _write("p.jsonl", '{"prompt": "a"}\n{"prompt": "' + "y" * 10_001 + '"}\n'),
        new_out=True,
    ),
    Case(
        "misc-prompts-jsonl-not-utf8",
        [*PROMPTS, "{tmp}/p.jsonl"],
        "p.jsonl: line 1 is not UTF-8 text (byte 12",
        _write("p.jsonl", b'{"prompt": "\xff"}\n'),
        new_out=True,
    ),
    Case(
        "misc-world-size-absurd",
        [*GEN, "--prompt", "a"],
        "WORLD_SIZE='100000000000...' (41 characters) is out of range",
        env={"RANK": "0", "WORLD_SIZE": str(10**40)},
        new_out=True,
    ),
    Case(
        "misc-rank-not-below-world-size",
        [*GEN, "--prompt", "a"],
        "invalid shard 2/2 (RANK=2, WORLD_SIZE=2)",
        env={"RANK": "2", "WORLD_SIZE": "2"},
        new_out=True,
    ),
    Case(
        "misc-world-size-negative",
        [*GEN, "--prompt", "a"],
        "(RANK=0, WORLD_SIZE=-3): the number of shards N must be 1 .. 99,999",
        env={"RANK": "0", "WORLD_SIZE": "-3"},
        new_out=True,
    ),
    Case(
        "misc-slurm-count-not-a-number",
        [*GEN, "--prompt", "a"],
        "SLURM_ARRAY_TASK_COUNT='4.5' is not a whole number",
        env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4.5"},
        new_out=True,
    ),
    Case(
        "misc-world-size-without-rank",
        [*GEN, "--prompt", "a"],
        "WORLD_SIZE is set but RANK is not",
        env={"WORLD_SIZE": "8"},
        new_out=True,
    ),
    Case(
        "misc-shard-zero-of-zero",
        [*GEN, "--prompt", "a", "--shard", "0/0"],
        "invalid shard 0/0 (--shard)",
        new_out=True,
    ),
    Case(
        "misc-audit-huge-plan-dry-run",
        ["run", "{tmp}/a.toml", "--out", "{tmp}/new", "--dry-run", "--no-estimate"],
        "a.toml: tiny/i2p plans 1,410,900,000 images",
        _write("a.toml", HUGE_AUDIT),
        new_out=True,
    ),
    Case(
        "misc-audit-huge-plan-run",
        ["run", "{tmp}/a.toml", "--out", "{tmp}/new"],
        "over the limit of 2,000,000 per run",
        _write("a.toml", HUGE_AUDIT),
        new_out=True,
    ),
    Case(
        "misc-audit-file-not-utf8-on-line-2",
        ["run", "{tmp}/a.toml", "--out", "{tmp}/new", "--dry-run"],
        "a.toml:2: not a TOML file (not UTF-8 text: byte 22",
        _write("a.toml", b'configs = ["sd"]\n# caf\xe9\n'),
        new_out=True,
    ),
    Case(
        "misc-audit-file-too-big",
        ["run", "{tmp}/a.toml", "--out", "{tmp}/new", "--dry-run"],
        "over the limit of 1,048,576 bytes",
        _write("a.toml", "# " + "x" * 2_000_000 + "\n"),
        new_out=True,
    ),
]
