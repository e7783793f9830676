"""Sampling the restoration branch: noise -> clean latent, conditioned on the LLM context.

`RestorationSampling` is the one description of how a restoration is sampled, used by
interleaved generation (rollouts and evaluation), by stage 2 (whose restored slot holds latents
the head itself denoised) and by stage 3. The ODE sampler is for evaluation; the SDE sampler
keeps per-step log-probs for Flow-GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from clear_rl.flow import ode_step, sampling_schedule, sde_step
from clear_rl.models.composed import ComposedUnifiedModel, RestorationContext

Sampler = Literal["ode", "sde"]
SAMPLERS = ("ode", "sde")


@dataclass(frozen=True)
class RestorationSampling:
    """How a restoration is sampled. `None` steps or shift: the model config's defaults.

    In recipes these are the `restoration_steps`, `restoration_shift`, `restoration_sampler` and
    `restoration_noise_level` keys of a stage's `training:` section (see `RestorationSamplingArguments`).
    """

    steps: int | None = None  # denoising steps (CLEAR: 30)
    shift: float | None = None  # timestep shift of the sampling schedule (CLEAR: 3.0)
    sampler: Sampler = "ode"  # "sde": Flow-GRPO's SDE, with per-step log-probs
    noise_level: float = 0.7  # Flow-GRPO's `a` of the SDE sampler

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"restoration steps must be >= 1, got {self.steps}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"restoration sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if self.noise_level < 0:
            raise ValueError(f"restoration noise level must be >= 0, got {self.noise_level}")

    def resolved(self, model: ComposedUnifiedModel) -> RestorationSampling:
        """These settings with the model's defaults filled in."""
        return replace(
            self,
            steps=self.steps or model.config.num_inference_steps,
            shift=model.config.flow_shift if self.shift is None else self.shift,
        )

    def schedule(self, model: ComposedUnifiedModel) -> torch.Tensor:
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
    model: ComposedUnifiedModel,
    context: RestorationContext,
    sampling: RestorationSampling | None = None,
    generator: torch.Generator | None = None,
) -> RestorationSample:
    """Integrate the restoration head's flow from noise to a clean latent for every context row."""
    sampling = (sampling or RestorationSampling()).resolved(model)
    timesteps = sampling_schedule(sampling.steps, sampling.shift).to(context.hidden_states.device)
    rows = context.hidden_states.shape[0]
    shape = (rows, *model.latent_shape)
    x = torch.randn(shape, generator=generator, device=generator.device if generator else None)
    x = x.to(device=context.hidden_states.device, dtype=torch.float32)
    mean = model.flow_source_mean(context.degraded_latents)
    if mean is not None:  # `flow_source: degraded`: the flow starts around the degraded latent
        mean = mean.to(x.device)
        x = x + mean
    states, log_probs = [x], []
    for i in range(sampling.steps):
        t, t_next = timesteps[i], timesteps[i + 1]
        v = model.velocity(x, t.expand(rows), context).float()
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
