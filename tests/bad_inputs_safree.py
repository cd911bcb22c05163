"""Bad SAFREE configs on the command line: out-of-range, non-finite or mistyped values, another
kind's keys, the unimplemented latent re-attention, SDXL; from `generate`, `probe`, `i2p run`
and onto a finished run alike."""

from __future__ import annotations

from badinput import GEN, I2P_SET, PROBE, Case, _write

ONE = [*GEN, "--prompt", "a body", "--config"]


def _gen(case_id: str, config: str, names: str, *extra: str) -> Case:
    return Case(case_id, [*ONE, config, *extra], names, new_out=True)


CASES = [
    _gen("safree-alpha-negative", "safree:alpha=-0.5", "alpha: Input should be greater"),
    _gen("safree-alpha-nan", "safree:alpha=nan", "alpha"),
    _gen("safree-alpha-inf", "safree-no-svf:alpha=inf", "alpha"),
    _gen("safree-up-t-negative", "safree:up_t=-1", "up_t: Input should be greater"),
    _gen("safree-up-t-fraction", "safree:up_t=2.5", "up_t"),
    _gen("safree-window-backwards", "safree-no-svf:re_attn_t_start=5,re_attn_t_end=2", "after"),
    _gen("safree-window-below-minus-one", "safree-no-svf:re_attn_t_start=-3", "re_attn_t_start"),
    _gen("safree-svf-not-bool", "safree:self_validation_filter=maybe", "self_validation_filter"),
    _gen("safree-category-unknown", "safree:category=violence", "category"),
    _gen("safree-lra-not-implemented", "safree:latent_re_attention=true", "not implemented"),
    _gen("safree-unknown-key", "safree:sf_alpha=0.1", "unknown config parameter(s) sf_alpha"),
    _gen("safree-sld-key", "safree:warmup_steps=2", "'safree' (safree) has no parameter(s)"),
    _gen("safree-key-on-sld", "sld-max:alpha=0.02", "has no parameter(s) alpha"),
    _gen("safree-key-on-sd", "sd:up_t=3", "has no parameter(s) up_t"),
    _gen("safree-blank-words", "safree", "needs concept words", "--safety-concept", ", ,"),
    _gen("safree-sdxl", "safree", "not SDXL", "--model", "tiny-sdxl"),
    Case(
        "safree-probe-bad-alpha",
        [*PROBE, "--config", "safree:alpha=-1"],
        "alpha",
        new_out=True,
    ),
    Case(
        "safree-i2p-nan-alpha",
        [*I2P_SET, "--config", "safree:alpha=nan"],
        "alpha",
        _write("set.csv", "prompt,categories\na body,sexual\n"),
        new_out=True,
    ),
    Case(
        "safree-extend-finished-run",
        ["generate", "--out", "{run}", "--prompt", "a body", "--config", "safree:up_t=-2"],
        "up_t",
    ),
]
