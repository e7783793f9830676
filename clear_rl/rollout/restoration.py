"""Sampling the restoration branch: noise -> clean latent, conditioned on the LLM context.

`RestorationSampling` is the one description of how a restoration is sampled, used by
interleaved generation (rollouts and evaluation), by stage 2 (whose restored slot holds latents
the head itself denoised) and by stage 3. The ODE sampler is for evaluation; the SDE sampler
keeps per-step log-probs for Flow-GRPO.

Steps: `steps=N` (`restoration_steps: N`) is N Euler steps, N network evaluations, for every backbone
and stage: the schedule has N + 1 noise levels from 1 to 0. BAGEL's own code counts timesteps instead
(`num_timesteps=N` is `linspace(1, 0, N)`, N - 1 steps); its presets translate (models/bagel/presets.py).

Classifier-free guidance (`RestorationGuidance`, BAGEL's): where the backbone's context offers the
two unconditional contexts (BAGEL: without text, built as `contexts` says, and without the images),
the ODE sampler combines three velocities per step inside the guidance interval. CLEAR's evaluation
settings are the defaults (a BAGEL model's preset sets them in eval); the SDE sampler (GRPO
rollouts) never guides, and a backbone whose context offers no such contexts (the composed model)
samples unguided.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from clear_rl.choices import CFG_CONTEXTS, RENORMS, SAMPLERS, CfgContexts, Renorm, Sampler
from clear_rl.flow import NOISE_SCHEDULES, NoiseSchedule, ode_step, sampling_schedule, sde_step
from clear_rl.models.backbone import RestorationContextLike, UnifiedBackbone
from clear_rl.models.bagel.presets import PresetGuidance


@dataclass(frozen=True)
class RestorationGuidance:
    """BAGEL's restoration CFG: v_text = v_tu + s_text (v - v_tu); v = v_iu + s_img (v_text - v_iu).

    `v_tu` / `v_iu` are the velocities without the last text / without the images. Renorm caps
    the guided velocity's norm at the conditional one's: per latent token over its 2x2xC values
    (`channel`; `text_channel` renorms v_text before the image step) or over the whole latent
    (`global`), clamped below at `renorm_min`. Guidance applies for t in (interval[0], interval[1]];
    a scale of 1.0 switches its branch off, and as in BAGEL image guidance applies only with text
    guidance on (cfg_text > 1). `contexts` says which text the text-unconditional context drops
    (models/bagel/guidance.py): `drop-thought` (CLEAR's eval), `drop-tag` (CLEAR's
    `consider_think=False`) or `upstream` (ByteDance's inferencer). Defaults: CLEAR's evaluation.
    """

    cfg_text: float = 3.0
    cfg_img: float = 1.5
    renorm: Renorm = "text_channel"
    renorm_min: float = 0.0
    interval: tuple[float, float] = (0.4, 1.0)
    token_patch: int = 2  # latent patch of one token (BAGEL's latent_patch_size), for per-token norms
    contexts: CfgContexts = "drop-thought"

    @classmethod
    def from_preset(cls, values: PresetGuidance) -> RestorationGuidance:
        """The guidance a BAGEL preset sets (`BagelPreset.guidance`)."""
        return cls(
            cfg_text=values.cfg_text,
            cfg_img=values.cfg_img,
            renorm=values.renorm,
            renorm_min=values.renorm_min,
            interval=tuple(values.interval),
            contexts=values.contexts,
        )

    def __post_init__(self) -> None:
        if self.contexts not in CFG_CONTEXTS:
            raise ValueError(
                f"restoration guidance contexts must be one of {list(CFG_CONTEXTS)}, got {self.contexts!r}"
            )
        if self.renorm not in RENORMS:
            raise ValueError(
                f"restoration guidance renorm must be one of {list(RENORMS)}, got {self.renorm!r}"
            )
        if self.cfg_text < 1.0 or self.cfg_img < 1.0:
            raise ValueError(
                f"restoration guidance scales must be >= 1.0 (1.0: off), got cfg_text={self.cfg_text}, "
                f"cfg_img={self.cfg_img}"
            )
        low, high = self.interval
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(
                f"restoration guidance interval must satisfy 0 <= low < high <= 1, got {self.interval}"
            )

    def active(self, t: float) -> bool:
        """Whether guidance applies at noise level t (as BAGEL: only with text guidance on)."""
        return self.cfg_text > 1.0 and self.interval[0] < t <= self.interval[1]

    def _token_norm(self, v: torch.Tensor) -> torch.Tensor:
        """(R, C, h, w) -> each latent token's norm (over its p x p x C values), broadcast to v."""
        r, c, h, w = v.shape
        p = self.token_patch
        patches = v.reshape(r, c, h // p, p, w // p, p)
        norms = patches.pow(2).sum(dim=(1, 3, 5), keepdim=True).sqrt()
        return norms.expand_as(patches).reshape(r, c, h, w)

    def combine(
        self, v: torch.Tensor, v_text_uncond: torch.Tensor, v_image_uncond: torch.Tensor
    ) -> torch.Tensor:
        """The guided velocity (R, C, h, w) from the conditional one and the two unconditional ones."""
        text = v_text_uncond + self.cfg_text * (v - v_text_uncond)
        if self.renorm == "text_channel":
            scale = self._token_norm(v) / (self._token_norm(text) + 1e-8)
            text = text * scale.clamp(min=self.renorm_min, max=1.0)
        guided = v_image_uncond + self.cfg_img * (text - v_image_uncond) if self.cfg_img > 1.0 else text
        if self.renorm == "text_channel":
            return guided
        if self.renorm == "global":
            base = v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            norm = guided.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        else:
            base, norm = self._token_norm(v), self._token_norm(guided)
        return guided * (base / (norm + 1e-8)).clamp(min=self.renorm_min, max=1.0)


@dataclass(frozen=True)
class RestorationSampling:
    """How a restoration is sampled. `None` steps or shift: the model config's defaults.

    In recipes these are the `restoration_steps`, `restoration_shift`, `restoration_sampler` and
    `restoration_noise_level` keys of a stage's `training:` section (see `RestorationSamplingArguments`).
    """

    steps: int | None = None  # Euler steps (network evaluations); None: the model's
    shift: float | None = None  # timestep shift of the sampling schedule (CLEAR: 3.0)
    sampler: Sampler = "ode"  # "sde": Flow-GRPO's SDE, with per-step log-probs
    noise_level: float = 0.7  # the SDE's noise: Flow-GRPO's `a`, or the constant sigma
    noise_schedule: NoiseSchedule = "flow_grpo"  # or "constant": CLEAR's released SDE (flow.py)
    # Restoration CFG where the backbone offers the unconditional contexts (BAGEL), ODE only;
    # None: off.
    guidance: RestorationGuidance | None = field(default_factory=RestorationGuidance)

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"restoration steps must be >= 1, got {self.steps}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"restoration sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if self.noise_level < 0:
            raise ValueError(f"restoration noise level must be >= 0, got {self.noise_level}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(
                f"restoration noise schedule must be one of {list(NOISE_SCHEDULES)}, got {self.noise_schedule!r}"
            )

    def resolved(self, model: UnifiedBackbone) -> RestorationSampling:
        """These settings with the model's defaults filled in."""
        return replace(
            self,
            steps=self.steps or model.config.num_inference_steps,
            shift=model.config.flow_shift if self.shift is None else self.shift,
        )

    def schedule(self, model: UnifiedBackbone) -> torch.Tensor:
        """(steps + 1,) noise levels from 1 to 0."""
        resolved = self.resolved(model)
        return sampling_schedule(resolved.steps, resolved.shift)


@dataclass
class RestorationSample:
    """Restored latents and, for GRPO, the trajectory that produced them."""

    latents: torch.Tensor  # (R, C, h, w) the final x0
    trajectory: torch.Tensor  # (R, N+1, C, h, w): x at every noise level, from pure noise to x0
    timesteps: torch.Tensor  # (N+1,) noise levels, 1 -> 0
    log_probs: torch.Tensor  # (R, N) per-step log-probs (zeros for the ODE sampler)


def restore_latents(
    model: UnifiedBackbone,
    context: RestorationContextLike,
    sampling: RestorationSampling | None = None,
    generator: torch.Generator | None = None,
) -> RestorationSample:
    """Integrate the restoration head's flow from noise to a clean latent for every context row."""
    sampling = (sampling or RestorationSampling()).resolved(model)
    timesteps = sampling_schedule(sampling.steps, sampling.shift).to(context.device)
    rows = context.num_rows
    shape = (rows, *model.latent_shape)
    x = torch.randn(shape, generator=generator, device=generator.device if generator else None)
    x = x.to(device=context.device, dtype=torch.float32)
    mean = model.flow_source_mean(context.degraded_latents)
    if mean is not None:  # `flow_source: degraded`: the flow starts around the degraded latent
        mean = mean.to(x.device)
        x = x + mean
    states, log_probs = [x], []
    guidance = sampling.guidance if sampling.sampler == "ode" else None  # never in SDE rollouts
    for i in range(sampling.steps):
        t, t_next = timesteps[i], timesteps[i + 1]
        v = guided_velocity(model, x, t.expand(rows), context, guidance)
        if sampling.sampler == "sde":
            step = sde_step(
                x,
                v,
                t,
                t_next,
                sampling.noise_level,
                t_max=float(timesteps[1]),
                generator=generator,
                source_mean=mean,
                noise_schedule=sampling.noise_schedule,
            )
            x, log_prob = step.sample, step.log_prob
        else:
            x, log_prob = ode_step(x, v, t, t_next), torch.zeros(rows, device=x.device)
        states.append(x)
        log_probs.append(log_prob)
    return RestorationSample(
        latents=x,
        trajectory=torch.stack(states, dim=1),
        timesteps=timesteps,
        log_probs=torch.stack(log_probs, dim=1),
    )


def guided_velocity(
    model: UnifiedBackbone,
    x: torch.Tensor,
    t: torch.Tensor,
    context: RestorationContextLike,
    guidance: RestorationGuidance | None,
) -> torch.Tensor:
    """The velocity at noise level `t` (R,), guided where `guidance` is on at this `t` and the
    context offers its unconditional contexts (`guidance_contexts`: without the last text, without
    the images); else the plain conditional velocity."""
    v = model.velocity(x, t, context).float()
    unconditional = getattr(context, "guidance_contexts", None)
    if guidance is None or unconditional is None or not guidance.active(float(t[0])):
        return v
    without_text, without_images = unconditional
    v_text = model.velocity(x, t, without_text).float() if guidance.cfg_text > 1.0 else v
    v_image = model.velocity(x, t, without_images).float() if guidance.cfg_img > 1.0 else v
    return guidance.combine(v, v_text, v_image)
