"""Sampling the restoration branch: noise -> clean latent, conditioned on the LLM context.

Used by interleaved generation (rollouts and evaluation) and by stage 2, whose restored slot
holds latents the head itself denoised. The ODE sampler is for evaluation; the SDE sampler keeps
per-step log-probs for Flow-GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from clear_rl.flow import ode_step, sampling_schedule, sde_step
from clear_rl.models.composed import ComposedUnifiedModel, RestorationContext

Sampler = Literal["ode", "sde"]


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
    num_steps: int | None = None,
    shift: float | None = None,
    sampler: Sampler = "ode",
    noise_level: float = 0.7,
    generator: torch.Generator | None = None,
) -> RestorationSample:
    """Integrate the restoration head's flow from noise to a clean latent for every context row."""
    num_steps = num_steps or model.config.num_inference_steps
    shift = model.config.flow_shift if shift is None else shift
    timesteps = sampling_schedule(num_steps, shift).to(context.hidden_states.device)
    rows = context.hidden_states.shape[0]
    shape = (rows, *model.latent_shape)
    x = torch.randn(shape, generator=generator, device=generator.device if generator else None)
    x = x.to(device=context.hidden_states.device, dtype=torch.float32)
    mean = model.flow_source_mean(context.degraded_latents)
    if mean is not None:  # `flow_source: degraded`: the flow starts around the degraded latent
        mean = mean.to(x.device)
        x = x + mean
    states, log_probs = [x], []
    for i in range(num_steps):
        t, t_next = timesteps[i], timesteps[i + 1]
        v = model.velocity(x, t.expand(rows), context).float()
        if sampler == "sde":
            step = sde_step(
                x, v, t, t_next, noise_level, t_max=float(timesteps[1]), generator=generator, source_mean=mean
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
