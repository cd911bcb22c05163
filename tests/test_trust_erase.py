"""ESD trust, round two: settings are finite, a diverging run writes nothing, --out is checked
before training and a finished file is replaced only by its own recipe, the --unet loader refuses
files that would not change the model or would change it silently, and each recipe samples z_t
with the UNet, scheduler and timesteps its authors' script uses (computed here independently)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from test_erase_esd import _cli

from analysis.erase import EsdSettings, EsdTrainer, read_recipe, train_esd
from analysis.erase.esd import check_output
from analysis.errors import AuditError
from analysis.generation.conditioning import encode_text
from analysis.generation.models import load_model

FAST = {"ddim_steps": 4, "resolution": 16}
# CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json, the scheduler esd_sd.py keeps
SD14_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


# 1. settings: finite and in range, one gate for the library and the CLI


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", float("inf")),
        ("lr", float("nan")),
        ("negative_guidance", float("nan")),
        ("negative_guidance", float("-inf")),
        ("negative_guidance", -0.5),
        ("start_guidance", float("inf")),
        ("lr", 0.0),
    ],
)
def test_settings_refuse_non_finite_or_out_of_range_floats(field, value):
    with pytest.raises(ValidationError, match=field):
        EsdSettings(concept="nudity", **{field: value})


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--negative-guidance", "nan", "--negative-guidance must be a finite number, got nan"),
        ("--start-guidance", "inf", "--start-guidance must be a finite number, got inf"),
        ("--lr", "inf", "--lr must be a finite number, got inf"),
    ],
)
def test_cli_names_the_non_finite_option_and_creates_nothing(tmp_path, flag, value, message):
    out = tmp_path / "sub" / "e.safetensors"
    argv = ["erase", "esd", "--concept", "nudity", flag, value, "--out", str(out)]
    argv += ["--iterations", "2", "--ddim-steps", "2", "--resolution", "16"]
    with pytest.raises(AuditError, match=message):
        _cli()(args=argv, standalone_mode=False)
    assert not list(tmp_path.iterdir())


def test_a_diverging_loss_stops_at_the_first_non_finite_loss_and_writes_nothing(tiny, tmp_path):
    """lr 1e30 blows the weights up after one Adam step: the run must stop at the first
    non-finite loss (every loss reported before it finite) and write neither output nor NaNs."""
    out = tmp_path / "e.safetensors"
    seen: list[float] = []
    settings = EsdSettings(concept="nudity", recipe="diffusers", iterations=3, lr=1e30, **FAST)
    with pytest.raises(AuditError, match=r"diverged: the loss is (nan|inf) at iteration (\d)"):
        train_esd(tiny, settings, out, on_step=lambda i, loss: seen.append(loss))
    assert seen and all(np.isfinite(seen))
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_weights_overflowing_in_the_last_step_are_not_written(tiny, tmp_path, monkeypatch):
    """A last step whose update overflows leaves a finite loss but infinite weights."""
    step = EsdTrainer.step

    def overflowing(self, i):
        loss = step(self, i)
        if i == self.iterations - 1:
            with torch.no_grad():
                self.params[-1].fill_(float("inf"))
        return loss

    monkeypatch.setattr(EsdTrainer, "step", overflowing)
    out = tmp_path / "e.safetensors"
    with pytest.raises(AuditError, match="is not finite after iteration 1"):
        train_esd(tiny, EsdSettings(concept="nudity", iterations=2, **FAST), out)
    assert not out.exists()


# 2. --out: writable and not an input, checked before training; finished files are kept


def _no_training(monkeypatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(EsdTrainer, "step", lambda self, i: calls.append(i) or 0.0)
    return calls


def test_an_unwritable_out_is_refused_before_training(tiny, tmp_path, monkeypatch):
    calls = _no_training(monkeypatch)
    blocker = tmp_path / "f.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(AuditError, match=r"f\.txt is a file"):
        train_esd(tiny, EsdSettings(concept="c", **FAST), blocker / "deep" / "e.safetensors")
    assert calls == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    with pytest.raises(AuditError, match="is not writable"):
        check_output(folder / "e.safetensors")


def test_out_may_not_be_an_input(tiny, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    model = dataclasses.replace(tiny, provenance={**tiny.provenance, "path": str(base)})
    with pytest.raises(AuditError, match="is an input of this command"):
        train_esd(model, EsdSettings(concept="c", **FAST), base / "unet" / "e.safetensors")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"model")
    with pytest.raises(AuditError, match="is an input of this command"):
        check_output(tmp_path / "." / "w.safetensors", [str(weights)])
    assert weights.read_bytes() == b"model" and not (base / "unet").exists()


def test_a_finished_file_is_replaced_only_by_its_own_recipe(tiny, tmp_path, monkeypatch):
    out = tmp_path / "e.safetensors"
    settings = EsdSettings(concept="nudity", iterations=2, lr=1e-3, **FAST)
    train_esd(tiny, settings, out)
    done = out.read_bytes()
    calls = _no_training(monkeypatch)

    other = settings.model_copy(update={"recipe": "diffusers"})
    with pytest.raises(AuditError, match=rf"--out {out} .* recipe is 'paper' there, 'diffusers'"):
        train_esd(tiny, other, out)
    with pytest.raises(AuditError, match=r"lr is 0\.001 there, 0\.002 now"):
        train_esd(tiny, settings.model_copy(update={"lr": 2e-3}), out, resume=False)
    again = train_esd(tiny, settings, out)
    assert again["skipped"] is True and calls == []
    assert out.read_bytes() == done

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, plain)
    with pytest.raises(AuditError, match="exists and is not an ESD file"):
        train_esd(tiny, settings, plain)


def test_cli_says_already_done(tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    argv = ["erase", "esd", "--concept", "nudity", "--iterations", "1", "--ddim-steps", "2"]
    argv += ["--resolution", "16", "--out", str(out)]
    _cli()(args=argv, standalone_mode=False)
    first = out.read_bytes()
    _cli()(args=argv, standalone_mode=False)
    assert "already done" in capsys.readouterr().out
    assert out.read_bytes() == first


# 3. the --unet loader


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({}, "holds no tensors"),
        ({"down.nothing.weight": torch.zeros(2)}, "none of its 1 tensors is a key"),
        ({"conv_in.weight": torch.zeros(1, dtype=torch.int8)}, "is torch.int8, not floating"),
        ({"conv_in.bias": torch.ones(1, dtype=torch.bool)}, "is torch.bool, not floating"),
        ({"conv_in.bias": torch.tensor([float("nan")])}, "holds NaN or infinite values"),
    ],
)
def test_the_unet_loader_refuses_files_that_would_not_change_the_model_or_cast(
    tmp_path, tensors, message
):
    path = tmp_path / "u.safetensors"
    save_file(tensors, path)
    with pytest.raises(AuditError, match=rf"--unet {path}.*{message}"):
        load_model("tiny", unet=str(path))


def test_an_esd_file_with_no_tensors_is_refused(tiny, tmp_path):
    """The case that audited the base model under the ESD file's name: recipe, no tensors."""
    out = tmp_path / "esd.safetensors"
    train_esd(tiny, EsdSettings(concept="nudity", iterations=1, **FAST), out)
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
    empty = tmp_path / "empty.safetensors"
    save_file({}, empty, metadata=meta)
    assert read_recipe(empty)["concept"] == "nudity"
    with pytest.raises(AuditError, match="holds no tensors"):
        load_model("tiny", unet=str(empty))
    assert load_model("tiny", unet=str(out)).provenance["unet"]["tensors"] > 0


# 4./5. z_t: which UNet, which scheduler, which timesteps (the authors' scripts, recomputed)


def _unet_calls(unet) -> tuple[list[int], object]:
    """Timesteps of every forward call of `unet` (a hook; the caller removes it)."""
    seen: list[int] = []

    def hook(module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.append(int(torch.as_tensor(t).reshape(-1)[0]))

    return seen, unet.register_forward_pre_hook(hook, with_kwargs=True)


def _draw_calls(trainer: EsdTrainer, iteration: int):
    frozen, h1 = _unet_calls(trainer.frozen)
    trained, h2 = _unet_calls(trainer.trained)
    try:
        drawn = trainer.draw(iteration)
    finally:
        h1.remove()
        h2.remove()
    return drawn, frozen, trained


def _authors_pndm_timesteps(steps: int) -> list[int]:
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler(**SD14_SCHEDULER)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def test_the_authors_pndm_list_repeats_a_timestep():
    """Hand check of the independent oracle: step 20, offset 1, the second timestep twice."""
    ts = _authors_pndm_timesteps(50)
    assert ts[:5] == [981, 961, 961, 941, 921] and ts[-1] == 1 and len(ts) == 51


def test_diffusers_recipe_samples_with_the_frozen_unet_on_sd14_pndm_timesteps(tiny):
    """esd_sd.py: r = randint(0, S-1); the frozen base runs timesteps[:r] (pipeline call with
    run_till_timestep=r) and every model is queried at timesteps[r]."""
    trainer = EsdTrainer(
        tiny, EsdSettings(concept="nudity", recipe="diffusers", ddim_steps=50, resolution=16)
    )
    authors = _authors_pndm_timesteps(50)
    runs = []
    for i in range(3):  # r = 26, 14, 45
        drawn, frozen, trained = _draw_calls(trainer, i)
        r = drawn.ddim_steps_run
        runs.append(r)
        assert trained == []
        assert frozen == authors[:r]
        assert drawn.t == authors[r]
    assert max(runs) >= 3  # the draws reach past the repeated timestep
    loss_calls, handle = _unet_calls(trainer.frozen)
    try:
        trainer.loss(drawn.z, drawn.t)
    finally:
        handle.remove()
    assert loss_calls == [authors[r]] * 2


def _ldm_steps_run(k: int, steps: int) -> int:
    """ldm DDIMSampler.ddim_sampling with till_T=k: steps with index S-1 down, break once
    index + 1 == k (k=0 never breaks)."""
    run = 0
    for i in range(steps):
        run += 1
        if steps - i - 1 + 1 == k:
            break
    return run


def test_paper_recipe_samples_with_the_trained_unet_on_ldm_ddim_timesteps(tiny):
    """train-esd.py: k = randint(S); z_t from the *trained* model's DDIM (ldm timesteps
    range(0, 1000, 1000 // S) + 1, flipped) stopped by till_T=k; queried at a DDPM timestep in
    [round(1000 k / S), round(1000 (k + 1) / S))."""
    steps = 50
    trainer = EsdTrainer(tiny, EsdSettings(concept="nudity", ddim_steps=steps, resolution=16))
    ldm = [int(t) for t in (np.arange(0, 1000, 1000 // steps) + 1)[::-1]]
    for i in range(4):
        drawn, frozen, trained = _draw_calls(trainer, i)
        run = drawn.ddim_steps_run
        assert frozen == []
        assert trained == ldm[:run]
        ks = [k for k in range(steps) if _ldm_steps_run(k, steps) == run]
        bins = [range(round(1000 * k / steps), round(1000 * (k + 1) / steps)) for k in ks]
        assert any(drawn.t in b for b in bins), (run, drawn.t, ks)


def test_diffusers_recipe_z_t_equals_the_pipeline_with_sd14_pndm(tiny):
    """Oracle: diffusers' StableDiffusionPipeline (what esd_sd.py calls) with SD 1.4's PNDM
    scheduler and CFG 3, latents captured after n steps, against our sampler's z_t."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    settings = EsdSettings(concept="nudity", recipe="diffusers", **FAST)
    trainer = EsdTrainer(tiny, settings)
    noise = torch.randn(trainer.latent_shape, generator=torch.Generator().manual_seed(5))
    captured = {0: noise}

    def grab(pipe, i, t, kwargs):
        captured[i + 1] = kwargs["latents"].clone()
        return kwargs

    parts = tiny.components()
    parts["scheduler"] = PNDMScheduler(**SD14_SCHEDULER)
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe(
        "nudity",
        negative_prompt="",
        height=16,
        width=16,
        num_inference_steps=4,
        guidance_scale=3.0,
        latents=noise.clone(),
        output_type="latent",
        callback_on_step_end=grab,
    )
    for n in range(4):  # r ranges over 0..S-1
        trainer.sample(trainer.trained, torch.randn_like(noise), 3)  # leaves PNDM history behind
        ours = trainer.sample(trainer.frozen, noise.clone(), n)
        torch.testing.assert_close(ours, captured[n], rtol=1e-5, atol=1e-5)


def test_diffusers_recipe_loss_is_esd_sd_py_target(tiny):
    """esd_sd.py: MSE(esd(c), erase_from - eta * (erase - null)), erase_from = erase = eps(c)."""
    settings = EsdSettings(concept="nudity", recipe="diffusers", negative_guidance=2.0, **FAST)
    trainer = EsdTrainer(tiny, settings)
    drawn = trainer.draw(1)
    emb_c, emb_0 = encode_text(tiny, ["nudity"]), encode_text(tiny, [""])
    with torch.no_grad():
        e_0 = trainer.frozen(drawn.z, drawn.t, encoder_hidden_states=emb_0).sample
        e_c = trainer.frozen(drawn.z, drawn.t, encoder_hidden_states=emb_c).sample
        e_n = trainer.trained(drawn.z, drawn.t, encoder_hidden_states=emb_c).sample
    reference = float(((e_n - (e_c - 2.0 * (e_c - e_0))) ** 2).mean())
    assert trainer.loss(drawn.z, drawn.t).item() == pytest.approx(reference, rel=1e-6)


def test_the_recorded_recipe_names_sampler_target_and_differences(tiny, tmp_path):
    out = tmp_path / "e.safetensors"
    train_esd(tiny, EsdSettings(concept="nudity", recipe="diffusers", iterations=1, **FAST), out)
    recipe = read_recipe(out)
    assert recipe["sampler"] == "pndm" and recipe["sample_with"] == "frozen"
    assert recipe["loss_target"] == "eps(c) - eta * (eps(c) - eps(''))"
    assert any("1024" in d for d in recipe["differences_from_source"])
