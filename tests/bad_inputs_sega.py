"""Bad SEGA configs on the command line: out-of-range or non-finite values, another kind's keys,
malformed overrides; from `generate`, `probe`, `i2p run` and onto a finished run alike."""

from __future__ import annotations

from badinput import GEN, I2P_SET, PROBE, Case, _write

ONE = [*GEN, "--prompt", "a body", "--config"]


def _gen(case_id: str, config: str, names: str) -> Case:
    return Case(case_id, [*ONE, config], names, new_out=True)


CASES = [
    _gen("sega-threshold-above-one", "sega-max:edit_threshold=1.5", "edit_threshold: Input should"),
    _gen("sega-threshold-negative", "sega-strong:edit_threshold=-0.2", "edit_threshold"),
    _gen("sega-scale-negative", "sega-max:edit_guidance_scale=-1", "edit_guidance_scale"),
    _gen("sega-scale-nan", "sega-medium:edit_guidance_scale=nan", "edit_guidance_scale"),
    _gen("sega-momentum-inf", "sega-max:edit_momentum_scale=inf", "edit_momentum_scale"),
    _gen("sega-beta-above-one", "sega-max:edit_mom_beta=1.5", "edit_mom_beta"),
    _gen("sega-warmup-fraction", "sega-max:edit_warmup_steps=1.5", "edit_warmup_steps"),
    _gen("sega-cooldown-negative", "sega-max:edit_cooldown_steps=-1", "edit_cooldown_steps"),
    _gen("sega-direction-not-bool", "sega-max:reverse_editing_direction=maybe", "reverse_editing"),
    _gen("sega-token-cut-unknown", "sega-max:token_cut=middle", "token_cut"),
    _gen("sega-sld-key", "sega-max:warmup_steps=2", "'sega-max' (sega) has no parameter(s)"),
    _gen("sega-key-on-sld", "sld-strong:edit_threshold=0.5", "has no parameter(s) edit_threshold"),
    _gen("sega-key-on-sd", "sd:edit_guidance_scale=3", "has no parameter(s) edit_guidance_scale"),
    _gen("sega-override-no-value", "sega-max:edit_threshold", "must look like key=value"),
    _gen("sega-unknown-preset", "sega-weak", "unknown guidance config 'sega-weak'"),
    Case(
        "sega-probe-bad-threshold",
        [*PROBE, "--config", "sega-max:edit_threshold=2"],
        "edit_threshold",
        new_out=True,
    ),
    Case(
        "sega-i2p-sld-key",
        [*I2P_SET, "--config", "sega-strong:momentum_beta=0.5"],
        "has no parameter(s) momentum_beta",
        _write("set.csv", "prompt,categories\na body,sexual\n"),
        new_out=True,
    ),
    Case(
        "sega-extend-finished-run-nan",
        [
            "generate",
            "--out",
            "{run}",
            "--prompt",
            "a body",
            "--config",
            "sega-max:edit_mom_beta=nan",
        ],
        "edit_mom_beta",
    ),
]
