"""Bad inputs of `i2p run --prompts/--columns` and `i2p table`: one named line, nothing made."""

from __future__ import annotations

from badinput import I2P_SET, Case, _write

TABLE = ["i2p", "table", "--out", "{tmp}/new", "--n-draws", "100"]

CASES = [
    Case(
        "i2p-columns-field-twice",
        [*I2P_SET, "--columns", "prompt=prompt,prompt=text"],
        "field 'prompt' is mapped twice ('prompt' and 'text')",
        _write("set.csv", "prompt,text\na,b\n"),
        new_out=True,
    ),
    Case(
        "i2p-prompts-header-twice",
        [*I2P_SET, "--columns", "prompt=prompt"],
        "column 'prompt' (mapped by --columns) appears 2 times",
        _write("set.csv", "prompt,seed,prompt\na,1,b\n"),
        new_out=True,
    ),
    Case(
        "i2p-prompts-pandas-renamed-duplicate",
        [*I2P_SET, "--columns", "prompt=prompt.1"],
        "has no column 'prompt.1'",
        _write("set.csv", "prompt,prompt\na,b\n"),
        new_out=True,
    ),
    Case(
        "i2p-prompts-blank-prompt-line",
        [*I2P_SET, "--columns", "prompt=prompt,seed=seed"],
        "row 2 (line 4) has no prompt text in column 'prompt'",
        _write("set.csv", 'prompt,seed\n"two\nlines",1\n   ,2\nc,3\n'),
        new_out=True,
    ),
    Case(
        "i2p-prompts-blank-seed-line",
        [*I2P_SET, "--columns", "prompt=prompt,seed=seed"],
        "seed column 'seed' row 2 (line 3)",
        _write("set.csv", "prompt,seed\na,1\nb,\n"),
        new_out=True,
    ),
    Case(
        "i2p-prompts-header-only",
        I2P_SET,
        "has no rows under its header",
        _write("set.csv", "prompt,seed\n"),
        new_out=True,
    ),
    Case(
        "i2p-prompts-empty-file",
        I2P_SET,
        "is not a readable table",
        _write("set.csv", ""),
        new_out=True,
    ),
    Case(
        "i2p-prompts-with-data",
        [*I2P_SET, "--data", "{tmp}/set.csv"],
        "give either --data",
        _write("set.csv", "prompt\na\n"),
        new_out=True,
    ),
    Case(
        "i2p-table-unknown-protocol",
        [*TABLE, "--protocol", "bootstrap"],
        "unknown expected-max protocol 'bootstrap'",
        new_out=True,
    ),
    Case(
        "i2p-table-threshold-without-run",
        [*TABLE, "--threshold", "0.7"],
        "--rule/--threshold need --run",
        new_out=True,
    ),
    Case(
        "i2p-table-data-and-run",
        ["i2p", "table", "--run", "{run}", "--data", "{tmp}/i.csv"],
        "give --data or --run, not both",
    ),
    Case(
        "i2p-table-unknown-rule",
        [*TABLE, "--rule", "exposed-everything"],
        "exposed-everything",
        new_out=True,
    ),
]
