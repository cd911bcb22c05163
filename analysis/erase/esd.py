"""ESD concept erasure (Gandikota et al., ICCV 2023): fine-tune a UNet copy to un-guide a concept.

A frozen copy of the UNet gives eps(z_t, t, "") and eps(z_t, t, c); the trained copy's
eps(z_t, t, c) is pulled by MSE to a - eta * (eps(c) - eps("")), the anchor a being eps("")
(paper) or eps(c) (esd_sd.py), where z_t is the concept prompt sampled with CFG to a random step
of the recipe's schedule (see `recipes` for the two published variants). Only the trained
tensors are saved, under diffusers UNet state-dict keys, with the recipe in the safetensors
metadata so an audit can say which erased model it measured.

Every random draw of iteration i comes from a generator seeded by (seed, i) alone, so a run is
bit-identical on one device, and a resume from a checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.erase.output import (
    atomic_write,
    base_source,
    check_finished,
    check_output,
    record_fingerprint,
    write_weights,
)
from analysis.erase.recipes import RECIPES, EsdSettings, Recipe
from analysis.errors import AuditError, Interrupted
from analysis.generation.models import LoadedModel
from analysis.store.weights import unet_sha256

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def trainable_names(unet: Any, method: str, recipe: Recipe) -> list[str]:
    """Names of the parameters a method trains, in the UNet's parameter order.

    esd-x: every attn2 (cross-attention) tensor. esd-u: the recipe's complement of attn2 (the
    paper's 'noxattn' also keeps the time embedding and output conv/norm frozen; the diffusers
    script trains only Linear/Conv2d weights and biases, so norms stay frozen).
    """
    if method == "esd-x":
        return [n for n, _ in unet.named_parameters() if "attn2" in n]
    if recipe.esd_u_params == "noxattn":
        frozen = ("time_embedding.", "conv_norm_out.", "conv_out.")
        return [
            n for n, _ in unet.named_parameters() if "attn2" not in n and not n.startswith(frozen)
        ]
    kinds = (torch.nn.Linear, torch.nn.Conv2d)
    names = {
        f"{mod_name}.{p_name}"
        for mod_name, module in unet.named_modules()
        if isinstance(module, kinds) and "attn2" not in mod_name
        for p_name, _ in module.named_parameters(recurse=False)
    }
    return [n for n, _ in unet.named_parameters() if n in names]


def _generator(seed: int, iteration: int) -> torch.Generator:
    """A CPU generator for one iteration, from (seed, iteration) alone (resume-safe)."""
    state = np.random.SeedSequence([seed, iteration]).generate_state(1, np.uint64)[0]
    return torch.Generator("cpu").manual_seed(int(state))


@dataclass
class Draw:
    """One iteration's training point: z_t, the UNet timestep, and how it was reached."""

    z: torch.Tensor
    t: int
    ddim_steps_run: int


class EsdTrainer:
    """The trained and frozen UNets, the optimizer, and one ESD step at a time."""

    def __init__(self, model: LoadedModel, settings: EsdSettings) -> None:
        from analysis.generation.conditioning import encode_text

        if getattr(model, "family", "sd1") == "sdxl":
            raise AuditError("ESD training supports SD 1.x/2.x UNets; this model is SDXL")
        if model.dtype != torch.float32:
            raise AuditError(
                f"ESD trains float32 weights; load the model as float32 (got {model.dtype}) "
                "and use precision bf16/fp16 for autocast"
            )
        self.model, self.settings = model, settings
        self.recipe = RECIPES[settings.recipe]
        values = settings.resolved()
        self.iterations = int(values["iterations"])
        self.lr = float(values["lr"])
        self.eta = float(values["negative_guidance"])
        self.device = model.device
        self.autocast = AUTOCAST.get(settings.precision)
        if self.autocast is not None and self.device.type != "cuda":
            raise AuditError(
                f"precision {settings.precision} needs a cuda device, not {self.device}"
            )
        size = settings.resolution or model.unet.config.sample_size * model.vae_scale_factor
        if size % model.vae_scale_factor:
            raise AuditError(
                f"resolution {size} is not a multiple of the VAE factor {model.vae_scale_factor}"
            )
        self.resolution = size
        self.latent_shape = (1, model.unet.config.in_channels) + (
            size // model.vae_scale_factor,
        ) * 2
        self.scheduler, self.step_kwargs = esd_scheduler(self.recipe, model.scheduler.config)
        self.scheduler.set_timesteps(settings.ddim_steps)
        with torch.no_grad():
            self.cond = encode_text(model, [settings.concept])
            self.uncond = encode_text(model, [""])
        self.frozen = model.unet
        self.trained = copy.deepcopy(model.unet).requires_grad_(False).train()
        if settings.gradient_checkpointing:
            self.trained.enable_gradient_checkpointing()
        self.names = trainable_names(self.trained, settings.method, self.recipe)
        params = dict(self.trained.named_parameters())
        self.params = [params[n].requires_grad_(True) for n in self.names]
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr)
        self.scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _eps(self, unet: Any, z: torch.Tensor, t: Any, emb: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return unet(z, t, encoder_hidden_states=emb).sample.float()

    def draw(self, iteration: int) -> Draw:
        """z_t and t for `iteration`, sampled as the recipe's authors did."""
        gen = _generator(self.settings.seed, iteration)
        steps = self.settings.ddim_steps
        index = int(torch.randint(0, steps, (1,), generator=gen))
        if self.recipe.timesteps == "paper":
            # ldm DDIM with till_T=k stops after the step whose index is k-1; the DDPM
            # timestep is drawn from the k-th bin of 1000/S timesteps (train-esd.py).
            run = steps - max(index, 1) + 1
            train_steps = self.scheduler.config.num_train_timesteps
            low = round(index / steps * train_steps)
            high = round((index + 1) / steps * train_steps)
            t = int(torch.randint(low, high, (1,), generator=gen))
        else:  # esd_sd.py: timesteps[:r] are run, z_t is queried at timesteps[r]
            run, t = index, int(self.scheduler.timesteps[index])
        noise = torch.randn(self.latent_shape, generator=gen, dtype=torch.float32)
        sampler = self.trained if self.recipe.sample_with == "trained" else self.frozen
        z = self.sample(sampler, noise.to(self.device), run)
        return Draw(z=z, t=t, ddim_steps_run=run)

    @torch.no_grad()
    def sample(self, unet: Any, latents: torch.Tensor, steps_run: int) -> torch.Tensor:
        """The concept prompt sampled with CFG for the first `steps_run` steps of the schedule.

        Like each pipeline call of esd_sd.py, the scheduler is reset first: PNDM's multistep
        history must not leak from one draw into the next.
        """
        emb = torch.cat([self.uncond, self.cond])
        g = self.settings.start_guidance
        self.scheduler.set_timesteps(self.settings.ddim_steps)
        for t in self.scheduler.timesteps[:steps_run]:
            x = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps_u, eps_c = self._eps(unet, x, t, emb).chunk(2)
            eps = eps_u + g * (eps_c - eps_u)
            latents = self.scheduler.step(eps, t, latents, **self.step_kwargs).prev_sample
        return latents

    def loss(self, z: torch.Tensor, t: int) -> torch.Tensor:
        """MSE(eps_trained(z, t, c), a - eta * (eps_c - eps0)), a the recipe's anchor (eps0 in
        the paper, eps_c in esd_sd.py), with eps0, eps_c from the frozen UNet."""
        with torch.no_grad():
            eps_0 = self._eps(self.frozen, z, t, self.uncond)
            eps_c = self._eps(self.frozen, z, t, self.cond)
            anchor = eps_0 if self.recipe.target == "uncond" else eps_c
            target = anchor - self.eta * (eps_c - eps_0)
        return torch.nn.functional.mse_loss(self._eps(self.trained, z, t, self.cond), target)

    def step(self, iteration: int) -> float:
        """One optimizer step on iteration's draw; returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        drawn = self.draw(iteration)
        loss = self.loss(drawn.z, drawn.t)
        if not torch.isfinite(loss):  # stop here: one more step would write NaN weights
            raise AuditError(
                f"ESD training diverged: the loss is {loss.item()} at iteration {iteration} "
                f"(--lr {self.lr}, --negative-guidance {self.eta}, --start-guidance "
                f"{self.settings.start_guidance}); nothing was written, try a lower --lr"
            )
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return float(loss.detach())

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """The trained tensors on the CPU, under diffusers UNet state-dict keys."""
        return {
            n: p.detach().cpu().contiguous().clone()
            for n, p in zip(self.names, self.params, strict=True)
        }

    def state(self, next_iteration: int, losses: list[float]) -> dict[str, Any]:
        return {
            "next_iteration": next_iteration,
            "params": self.trained_tensors(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "losses": list(losses),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, param in zip(self.names, self.params, strict=True):
                param.copy_(state["params"][name].to(param.device))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def esd_scheduler(recipe: Recipe, config: Any) -> tuple[Any, dict[str, Any]]:
    """The scheduler a recipe samples z_t with, and its `step` keyword arguments.

    paper: ldm's DDIM (eta 0, no x0 clipping, final alpha = alphas_cumprod[0]). diffusers:
    esd_sd.py keeps SD 1.4's pipeline scheduler, PNDM with skip_prk_steps and steps_offset 1
    ('leading' spacing), so its list repeats a timestep; the model's betas are kept.
    """
    from diffusers import DDIMScheduler, PNDMScheduler

    if recipe.sampler == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False), {
            "eta": 0.0
        }
    pndm = PNDMScheduler.from_config(
        config,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    return pndm, {}


LOSS_TARGETS = {
    "uncond": "eps('') - eta * (eps(c) - eps(''))",
    "concept": "eps(c) - eta * (eps(c) - eps(''))",
}


def recipe_record(trainer: EsdTrainer, base_sha256: str) -> dict[str, Any]:
    """What the output file records: enough to name, reproduce and trace the erased model."""
    import diffusers

    import analysis

    s, prov = trainer.settings, trainer.model.provenance
    base = base_source(prov)
    return {
        "method_family": "esd",
        "concept": s.concept,
        "method": s.method,
        "recipe": s.recipe,
        "recipe_source": trainer.recipe.source,
        "iterations": trainer.iterations,
        "lr": trainer.lr,
        "negative_guidance": trainer.eta,
        "start_guidance": s.start_guidance,
        "ddim_steps": s.ddim_steps,
        "resolution": trainer.resolution,
        "sample_with": trainer.recipe.sample_with,
        "sampler": trainer.recipe.sampler,
        "loss_target": LOSS_TARGETS[trainer.recipe.target],
        "differences_from_source": list(trainer.recipe.differences),
        "trained_params": "attn2" if s.method == "esd-x" else trainer.recipe.esd_u_params,
        "trained_tensors": len(trainer.names),
        "seed": s.seed,
        "precision": s.precision,
        "optimizer": "Adam",
        "base_model": prov.get("spec"),
        "base_model_source": base,
        "base_unet_sha256": base_sha256,
        "device": str(trainer.device),
        "toolkit_version": analysis.__version__,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
    }


def checkpoint_path(out: Path) -> Path:
    """Where the resumable state of a run writing `out` lives (beside it)."""
    return out.with_name(out.stem + ".resume.pt")


def _load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AuditError(
            f"checkpoint {path} is unreadable ({exc}); delete it to start over"
        ) from exc
    if state.get("fingerprint") != fingerprint:
        theirs = state.get("fingerprint") or {}
        differ = sorted(
            k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k)
        )
        raise AuditError(
            f"checkpoint {path} is from a different ESD run (differs in {', '.join(differ)}); "
            "delete it or pass --no-resume to start over"
        )
    return state


def train_esd(
    model: LoadedModel,
    settings: EsdSettings,
    out: Path,
    *,
    resume: bool = True,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ESD on `model`, write the trained tensors to `out`; returns the recorded recipe.

    A checkpoint is written beside `out` every `checkpoint_every` iterations and removed when
    the output is written; with `resume`, a matching checkpoint is continued. An `out` that is
    already this recipe's finished file is kept (returned with `skipped`); nothing is created
    before every check has passed.
    """
    prov = model.provenance
    out = check_output(out, [prov.get("path"), (prov.get("unet") or {}).get("path")])
    trainer = EsdTrainer(model, settings)
    record = recipe_record(trainer, unet_sha256(model.unet))
    if check_finished(out, record):
        return {**record, "skipped": True, "resumed_from": None, "final_loss": None}
    fingerprint = record_fingerprint(record)
    ckpt = checkpoint_path(out)
    start, losses = 0, []
    state = _load_checkpoint(ckpt, fingerprint) if resume else None
    if state is not None:
        trainer.load_state(state)
        start, losses = int(state["next_iteration"]), list(state["losses"])
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = start  # the iteration the newest checkpoint resumes from
    try:
        with _progress(progress, trainer.iterations, start, settings.concept) as advance:
            for i in range(start, trainer.iterations):
                loss = trainer.step(i)
                losses.append(loss)
                if on_step is not None:
                    on_step(i, loss)
                done = i + 1
                if done % settings.checkpoint_every == 0 and done < trainer.iterations:
                    blob = {"fingerprint": fingerprint, **trainer.state(done, losses)}
                    atomic_write(ckpt, lambda p, b=blob: torch.save(b, p))
                    saved = done
                advance(loss)
    except KeyboardInterrupt:
        kept = (
            f"{saved} of {trainer.iterations} iterations are kept in {ckpt}"
            if saved and ckpt.is_file()
            else f"no checkpoint yet (one is written every {settings.checkpoint_every} iterations)"
        )
        raise Interrupted(
            f"interrupted: {kept}; nothing was written to {out}; re-run the same command to resume"
        ) from None
    tensors = trainer.trained_tensors()
    bad = next((n for n, v in tensors.items() if not torch.isfinite(v).all()), None)
    if bad is not None:  # the last step's update itself overflowed
        raise AuditError(
            f"ESD training diverged: {bad} is not finite after iteration {trainer.iterations - 1} "
            f"(--lr {trainer.lr}); nothing was written to {out}, try a lower --lr"
        )
    write_weights(out, tensors, record)
    ckpt.unlink(missing_ok=True)
    final = losses[-1] if losses else None
    record = {**record, "skipped": False, "resumed_from": start, "final_loss": final}
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


@contextlib.contextmanager
def _progress(
    enabled: bool, total: int, done: int, concept: str
) -> Iterator[Callable[[float], None]]:
    """A rich bar with loss, elapsed time and ETA; nothing when disabled."""
    if not enabled:
        yield lambda loss: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]ESD[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task(repr(concept)[:40], total=total, completed=done, loss="-")
        yield lambda loss: bar.update(task, advance=1, loss=f"{loss:.4g}")
