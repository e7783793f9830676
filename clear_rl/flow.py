"""Rectified flow for the restoration branch: schedules, the ODE step, and the SDE step with log-prob.

Convention (BAGEL / CLEAR): x_t = (1 - t) x0 + t eps, t = 1 is pure noise, the network predicts
the velocity v = eps - x0, and sampling integrates from t = 1 down to t = 0. A restoration may
start from a source centred on the degraded latent d instead (s = d + eps, `flow_source:
degraded`): then v = s - x0, and the SDE step works on x - t d, where the source is standard
normal again (a translation: log-probs and step KLs are unchanged by it).

The schedule comes from diffusers' `FlowMatchEulerDiscreteScheduler` (same shift formula, same
Euler update). The SDE step with a Gaussian log-prob is ours: diffusers has no stochastic flow
sampler that returns densities, and Flow-GRPO needs one (Liu et al., "Flow-GRPO", eq. 9). Two noise
schedules: Flow-GRPO's (`flow_grpo`, std a * sqrt(t / (1 - t))) and CLEAR's released one
(`constant`: a constant sigma, the score smoothed below t = 0.1 and clamped to +-50, as
haoxiangzhao12138/CLEAR train/grpo/bagel_interleave_grpo_trainer.py `_compute_loss` @411d6bd scores
its stored transitions). Both take the step mean x - (v + std^2 / 2 * (x + (1 - t) v) / t) dt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from clear_rl.choices import NOISE_SCHEDULES, NoiseSchedule


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift s*t / (1 + (s-1) t): s > 1 spends more steps at high noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_training_timesteps(
    batch_size: int, shift: float = 1.0, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Training timesteps t = shift(sigmoid(randn)) (logit-normal, then shifted), shape (B,)."""
    noise = torch.randn(batch_size, generator=generator, device=generator.device if generator else device)
    return shift_timesteps(torch.sigmoid(noise), shift).to(device)


def sampling_schedule(num_steps: int, shift: float = 3.0) -> torch.Tensor:
    """The N+1 noise levels of N Euler steps: shift(linspace(1, 0, N+1)), from 1 down to 0 (float32).

    clear-rl counts steps (network evaluations) everywhere; BAGEL's `num_timesteps=M` is this
    schedule with N = M - 1 (`clear_rl.models.bagel.presets.timesteps_to_steps`)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1])
    return scheduler.sigmas.float()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, with t broadcast per batch row."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target v = eps - x0."""
    return noise - x0


def _per_row(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return value.reshape(-1, *([1] * (like.dim() - 1))) if value.dim() else value


def ode_step(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the probability-flow ODE: x + (t_next - t) v."""
    dt = _per_row(t_next, x) - _per_row(t, x)
    return x + dt.to(x.dtype) * v


@dataclass
class SDEStep:
    """One stochastic step: the next sample, its Gaussian mean and std, and log p(next)."""

    sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    t: torch.Tensor | float,
    t_next: torch.Tensor | float,
    noise_level: float,
    t_max: float,
    generator: torch.Generator | None = None,
    next_sample: torch.Tensor | None = None,
    source_mean: torch.Tensor | None = None,
    noise_schedule: NoiseSchedule = "flow_grpo",
) -> SDEStep:
    """One step of Flow-GRPO's reverse SDE with the Gaussian log-density of the next sample.

    std_t = a * sqrt(t / (1 - t)) (with t = 1 replaced by `t_max`, the schedule's second level,
    to stay finite); mean = x (1 + std^2/(2t) dt) + v (1 + std^2 (1-t)/(2t)) dt;
    next = mean + std sqrt(-dt) eps. The log-prob is averaged over all non-batch dims, in fp32.
    Pass `next_sample` to score a stored transition instead of drawing a new one.
    With `noise_level` 0 the step is the ODE step and `log_prob` is zero (no density exists).
    `source_mean` (the degraded latent of a `flow_source: degraded` restoration): the step is taken
    on y = x - t * source_mean, whose source is standard normal, and translated back.
    `noise_schedule="constant"`: CLEAR's released SDE, std = `noise_level` (sigma) at every t (see the
    module docstring); its log-prob differs from the release's by constants only, so ratios agree.
    """
    if noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(f"noise_schedule must be one of {list(NOISE_SCHEDULES)}, got {noise_schedule!r}")
    if source_mean is not None:
        m = source_mean.float()
        t_, t_next_ = _per_row(t, m), _per_row(t_next, m)
        step = sde_step(
            x.float() - t_ * m, v.float() - m, t, t_next, noise_level, t_max, generator,
            None if next_sample is None else next_sample.float() - t_next_ * m, None, noise_schedule,
        )  # fmt: skip
        return SDEStep(
            sample=(step.sample.float() + t_next_ * m).to(x.dtype),
            mean=step.mean + t_next_ * m,
            std=step.std,
            log_prob=step.log_prob,
        )
    x32, v32 = x.float(), v.float()
    t_ = _per_row(t, x32)
    dt = _per_row(t_next, x32) - t_
    if noise_schedule == "constant":
        mean, step_std = _constant_sigma_mean(x32, v32, t_, dt, noise_level)
    else:
        std = noise_level * torch.sqrt(t_ / (1.0 - torch.where(t_ >= 1.0, torch.full_like(t_, t_max), t_)))
        mean = x32 * (1.0 + std**2 / (2.0 * t_) * dt) + v32 * (1.0 + std**2 * (1.0 - t_) / (2.0 * t_)) * dt
        step_std = std * torch.sqrt(-dt)
    if next_sample is None:
        device = generator.device if generator is not None else x32.device
        eps = torch.randn(x32.shape, generator=generator, device=device, dtype=torch.float32).to(x32.device)
        next_sample = mean + step_std * eps
    next32 = next_sample.detach().float()
    reduce_dims = tuple(range(1, x32.dim()))
    if noise_level == 0:
        log_prob = torch.zeros(x32.shape[0], device=x32.device)
    else:
        log_prob = (
            -((next32 - mean) ** 2) / (2.0 * step_std**2)
            - torch.log(step_std)
            - 0.5 * math.log(2.0 * math.pi)
        ).mean(dim=reduce_dims)
    return SDEStep(sample=next_sample.to(x.dtype), mean=mean, std=step_std.expand_as(mean), log_prob=log_prob)


def _constant_sigma_mean(
    x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, dt: torch.Tensor, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLEAR's released SDE step (dt < 0): the mean x - (v + sigma^2 / 2 * s) |dt| with the score term
    s = (x + (1 - t) v) / t, blended below t = 0.1 towards (1 - t) v (weight t / 0.1) and clamped to
    +-50, as its trainer computes it; the step's std sigma * sqrt(|dt|)."""
    t_safe = t.clamp(min=1e-4)
    standard = (x + (1.0 - t_safe) * v) / t_safe
    weight = t / 0.1
    smoothed = weight * (1.0 - t) * v + (1.0 - weight) * standard
    score = torch.where(t < 0.1, smoothed, standard).clamp(-50.0, 50.0)
    mean = x - (v + sigma**2 / 2.0 * score) * (-dt)
    return mean, sigma * torch.sqrt(-dt)


def step_mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two Gaussian steps of equal std, averaged over non-batch dims: (mu - mu_ref)^2 / (2 std^2)."""
    kl = (mean.float() - ref_mean.float()) ** 2 / (2.0 * std.float() ** 2)
    return kl.mean(dim=tuple(range(1, kl.dim())))
