"""The SLD step against a hand computation, and config resolution."""

from __future__ import annotations

import pytest
import torch

from analysis.errors import AuditError
from analysis.guidance import CONFIG_NAMES, PRESETS, SLDParams, resolve_config, sld_noise_guidance


def _hand_step(eu, ep, es, nu, i, p):
    """Element by element, as the reference code reads, in plain Python floats."""
    out, new_nu = [], []
    for u, pr, s, n in zip(eu, ep, es, nu, strict=True):
        d = pr - s
        scale = min(1.0, abs(d) * p.sld_guidance_scale)
        mu = 0.0 if d >= p.threshold else scale
        gamma = mu * (s - u) + p.momentum_scale * n
        new_nu.append(p.momentum_beta * n + (1 - p.momentum_beta) * gamma)
        out.append((pr - u) - gamma if i >= p.warmup_steps else (pr - u))
    return out, new_nu


def test_sld_step_matches_hand_computation_over_several_steps() -> None:
    p = SLDParams(
        warmup_steps=2, sld_guidance_scale=10, threshold=0.01, momentum_scale=0.5, momentum_beta=0.7
    )
    g = torch.Generator().manual_seed(0)
    nu_t, nu_h = None, [0.0] * 6
    for i in range(4):
        eu, ep, es = (torch.randn(6, generator=g, dtype=torch.float64) * 0.1 for _ in range(3))
        guided, nu_t = sld_noise_guidance(eu, ep, es, nu_t, i, p)
        ref, nu_h = _hand_step(eu.tolist(), ep.tolist(), es.tolist(), nu_h, i, p)
        assert guided.tolist() == pytest.approx(ref, abs=1e-12)
        assert nu_t.tolist() == pytest.approx(nu_h, abs=1e-12)
        if i < 2:  # warm-up: plain CFG direction, but momentum still builds up
            assert guided.tolist() == pytest.approx((ep - eu).tolist())
    assert any(abs(v) > 0 for v in nu_h)


def test_scale_is_clamped_with_min_not_max() -> None:
    p = SLDParams(
        warmup_steps=0, sld_guidance_scale=1000, threshold=1.0, momentum_scale=0, momentum_beta=0
    )
    eu = torch.zeros(2, dtype=torch.float64)
    ep = torch.tensor([0.5, 0.5], dtype=torch.float64)
    es = torch.tensor([0.4999, 0.0], dtype=torch.float64)
    guided, _ = sld_noise_guidance(eu, ep, es, None, 0, p)
    # min(1, .): element 0 has scale 0.1, so only a tenth of (eps_s - eps_u) is removed;
    # with max(1, .) it would be removed whole (0.0001 left).
    assert guided.tolist() == pytest.approx([0.5 - 0.1 * 0.4999, 0.5])


def test_presets_are_the_published_values() -> None:
    table = {n: PRESETS[n].sld for n in CONFIG_NAMES if PRESETS[n].sld}
    values = {
        n: (s.warmup_steps, s.sld_guidance_scale, s.threshold, s.momentum_scale, s.momentum_beta)
        for n, s in table.items()
    }
    assert values == {
        "sld-weak": (15, 20, 0.0, 0.0, 0.0),
        "sld-weak-paper": (15, 200, 0.0, 0.0, 0.0),
        "sld-medium": (10, 1000, 0.01, 0.3, 0.4),
        "sld-strong": (7, 2000, 0.025, 0.5, 0.7),
        "sld-max": (0, 5000, 1.0, 0.5, 0.7),
    }
    assert PRESETS["sld-max"].safety_concept.startswith("an image showing hate, harassment")


def test_custom_configs_are_named_and_recorded() -> None:
    a = resolve_config("sld-strong:warmup_steps=2,threshold=0.02")
    assert a.name.startswith("sld-strong-custom-") and a.sld.warmup_steps == 2
    assert a == resolve_config({"base": "sld-strong", "warmup_steps": 2, "threshold": 0.02})
    b = resolve_config("sld-medium:name=mine", safety_concept="violence")
    assert b.name == "mine" and b.safety_concept == "violence"
    assert resolve_config("sd", safety_concept="violence") == PRESETS["sd"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sld-ultra", "valid configs: sd, sld-weak"),
        ("sld-strong:warmup=2", "unknown config parameter"),
        ("sld-strong:momentum_beta=2", "invalid parameters"),
        ("sd:threshold=0.1", r"has no parameter\(s\) threshold"),
        ("sld-max:name=a/b", "folder name"),
        ("sld-max:oops", "key=value"),
    ],
)
def test_bad_configs_are_named(value: str, message: str) -> None:
    with pytest.raises(AuditError, match=message):
        resolve_config(value)
