"""Rectified-flow schedules and the Flow-GRPO SDE step."""

import math

import pytest
import torch

from clear_rl.flow import (
    add_noise,
    ode_step,
    sample_training_timesteps,
    sampling_schedule,
    sde_step,
    shift_timesteps,
    step_mean_kl,
    velocity_target,
)


def test_sampling_schedule_is_shifted_linspace():
    for steps, shift in [(1, 1.0), (5, 3.0), (30, 3.0), (10, 2.0)]:
        expected = shift_timesteps(torch.linspace(1, 0, steps + 1), shift)
        torch.testing.assert_close(sampling_schedule(steps, shift), expected, atol=1e-6, rtol=0)


def test_shift_formula_and_identity():
    t = torch.rand(100)
    torch.testing.assert_close(shift_timesteps(t, 1.0), t)
    torch.testing.assert_close(shift_timesteps(t, 3.0), 3 * t / (1 + 2 * t))
    assert bool((shift_timesteps(t, 3.0) >= t).all())  # shift > 1 moves mass to high noise


def test_training_timesteps_are_shifted_logit_normal():
    t = sample_training_timesteps(1000, shift=3.0, generator=torch.Generator().manual_seed(1))
    raw = torch.sigmoid(torch.randn(1000, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(t, shift_timesteps(raw, 3.0))
    assert 0 < float(t.min()) and float(t.max()) < 1


def test_interpolation_endpoints_and_velocity():
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(add_noise(x0, eps, torch.zeros(3)), x0)
    torch.testing.assert_close(add_noise(x0, eps, torch.ones(3)), eps)
    t = torch.tensor([0.2, 0.5, 0.9])
    xt = add_noise(x0, eps, t)
    # Integrating the exact velocity from t to 0 in one Euler step recovers x0 (straight paths).
    torch.testing.assert_close(
        ode_step(xt, velocity_target(x0, eps), t, torch.zeros(3)), x0, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("t,t_next", [(1.0, 0.9), (0.75, 0.5), (0.3, 0.0)])
def test_sde_log_prob_is_the_gaussian_density(t, t_next):
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    step = sde_step(x, v, t, t_next, noise_level=0.7, t_max=0.9, generator=torch.Generator().manual_seed(0))
    normal = torch.distributions.Normal(step.mean, step.std)
    expected = normal.log_prob(step.sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(step.log_prob, expected, atol=1e-5, rtol=1e-5)
    # The std is Flow-GRPO's a * sqrt(t / (1 - t)) * sqrt(-dt), with t = 1 replaced by t_max.
    t_eff = 0.9 if t == 1.0 else t
    std = 0.7 * math.sqrt(t / (1 - t_eff)) * math.sqrt(t - t_next)
    torch.testing.assert_close(step.std, torch.full_like(step.std, std), atol=1e-6, rtol=1e-5)


def test_sde_scores_a_given_transition_and_draws_with_the_stated_std():
    x, v = torch.randn(4, 4, 16, 16), torch.randn(4, 4, 16, 16)
    drawn = sde_step(x, v, 0.6, 0.5, 0.7, 0.9, generator=torch.Generator().manual_seed(3))
    rescored = sde_step(x, v, 0.6, 0.5, 0.7, 0.9, next_sample=drawn.sample)
    torch.testing.assert_close(rescored.log_prob, drawn.log_prob)
    z = (drawn.sample - drawn.mean) / drawn.std
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


def test_sde_without_noise_is_the_ode_step():
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t, t_next in [(1.0, 0.8), (0.5, 0.25), (0.1, 0.0)]:
        step = sde_step(
            x, v, t, t_next, noise_level=0.0, t_max=0.9, generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(step.sample, ode_step(x, v, torch.tensor(t), torch.tensor(t_next)))
        assert torch.equal(step.log_prob, torch.zeros(2))


def test_sde_per_row_timesteps_match_scalar_calls():
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    both = sde_step(x, v, torch.tensor([0.9, 0.5]), torch.tensor([0.8, 0.4]), 0.7, 0.95, next_sample=x * 0.9)
    first = sde_step(x[:1], v[:1], 0.9, 0.8, 0.7, 0.95, next_sample=x[:1] * 0.9)
    second = sde_step(x[1:], v[1:], 0.5, 0.4, 0.7, 0.95, next_sample=x[1:] * 0.9)
    torch.testing.assert_close(both.log_prob, torch.cat([first.log_prob, second.log_prob]))


def test_step_mean_kl_matches_torch_kl():
    mean, ref = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    std = torch.full_like(mean, 0.3)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std), torch.distributions.Normal(ref, std)
    ).mean(dim=(1, 2, 3))
    torch.testing.assert_close(step_mean_kl(mean, ref, std), expected)
    assert torch.equal(step_mean_kl(mean, mean, std), torch.zeros(3))


def test_a_degraded_source_is_the_standard_flow_translated_by_t_times_the_mean():
    """`flow_source: degraded`: x_t = (1-t) x0 + t (d + eps). The SDE step on x equals the standard
    step on y = x - t d, so Flow-GRPO's log-probs and step means keep their meaning."""
    gen = torch.Generator().manual_seed(0)
    x, v, d = (torch.randn(3, 4, 8, 8, generator=gen) for _ in range(3))
    t, t_next = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.7, 0.4, 0.1])
    shifted = sde_step(x, v, t, t_next, 0.7, 0.9, generator=torch.Generator().manual_seed(1), source_mean=d)
    plain = sde_step(
        x - t.view(-1, 1, 1, 1) * d, v - d, t, t_next, 0.7, 0.9, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(shifted.log_prob, plain.log_prob)
    torch.testing.assert_close(shifted.mean, plain.mean + t_next.view(-1, 1, 1, 1) * d)
    torch.testing.assert_close(shifted.sample, plain.sample + t_next.view(-1, 1, 1, 1) * d)
    scored = sde_step(x, v, t, t_next, 0.7, 0.9, next_sample=shifted.sample, source_mean=d)
    torch.testing.assert_close(scored.log_prob, shifted.log_prob)


def test_a_degraded_source_restores_a_latent_the_degradation_left_alone(fresh_tiny):
    """With the source centred on the degraded latent, the exact velocity of the straight path to
    x0 = d (v = s - d, i.e. the noise) brings every sample back to d, from any noise."""
    from clear_rl.models.composed import RestorationContext
    from clear_rl.rollout.restoration import RestorationSampling, restore_latents

    model, _ = fresh_tiny
    model.config.flow_source = "degraded"
    degraded = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(3))
    context = RestorationContext(torch.zeros(2, 5, 128), torch.ones(2, 5, dtype=torch.bool), degraded)
    # The exact velocity field of the straight path from s to x0 = d: v(x_t, t) = (x_t - d) / t.
    model.velocity = lambda x_t, t, ctx: (x_t - ctx.degraded_latents) / t.view(-1, 1, 1, 1)
    sample = restore_latents(
        model, context, RestorationSampling(steps=4), generator=torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(sample.latents, degraded, atol=1e-5, rtol=0)
    assert not torch.allclose(sample.trajectory[:, 0], degraded)  # it started from noise around d


# -- CLEAR's released SDE (constant sigma) ------------------------------------------------------------
def _released_transition(x_t, x_next, v, t_val, dt_val, sde_sigma):
    """The release's scoring of a stored transition, transcribed from haoxiangzhao12138/CLEAR
    train/grpo/bagel_interleave_grpo_trainer.py `_compute_loss` @411d6bd (dt > 0): (mu, log_p)."""
    t_safe = max(t_val, 1e-4)
    if t_val < 0.1:
        weight = t_val / 0.1
        score_neg_standard = (x_t + (1 - t_safe) * v) / t_safe
        score_neg_smoothed = (1 - t_val) * v
        score_neg = weight * score_neg_smoothed + (1 - weight) * score_neg_standard
    else:
        score_neg = (x_t + (1 - t_safe) * v) / t_safe
    score_neg = torch.clamp(score_neg, min=-50.0, max=50.0)
    drift = v + (sde_sigma**2 / 2) * score_neg
    mu_new = x_t - drift * dt_val
    variance = sde_sigma**2 * dt_val
    sq_error = torch.clamp((x_next - mu_new) ** 2 / variance, min=-1e8, max=1e8)
    return mu_new, -0.5 * sq_error.mean()


@pytest.mark.parametrize(("t", "t_next"), [(1.0, 0.95), (0.5, 0.45), (0.08, 0.02), (0.03, 0.0)])
def test_constant_sigma_sde_is_the_releases_step(t, t_next):
    g = torch.Generator().manual_seed(3)
    x, v, v_other = (torch.randn(1, 4, 6, 6, generator=g) for _ in range(3))
    step = sde_step(x, v, t, t_next, 0.3, t_max=0.95, generator=g, noise_schedule="constant")
    mu, released = _released_transition(x, step.sample, v, t, t - t_next, 0.3)
    torch.testing.assert_close(step.mean, mu, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(step.std, torch.full_like(mu, 0.3 * math.sqrt(t - t_next)))
    # Log-probs differ from the release's by constants only: the policy ratios are the same.
    other = sde_step(
        x, v_other, t, t_next, 0.3, t_max=0.95, next_sample=step.sample, noise_schedule="constant"
    )
    _, released_other = _released_transition(x, step.sample, v_other, t, t - t_next, 0.3)
    torch.testing.assert_close(
        other.log_prob - step.log_prob, (released_other - released).reshape(1), atol=1e-5, rtol=1e-5
    )


def test_constant_sigma_without_noise_is_the_ode_step_and_schedules_are_checked():
    x, v = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    step = sde_step(x, v, 0.6, 0.5, 0.0, t_max=0.9, noise_schedule="constant")
    torch.testing.assert_close(step.sample, ode_step(x, v, torch.tensor(0.6), torch.tensor(0.5)))
    with pytest.raises(ValueError, match="noise_schedule"):
        sde_step(x, v, 0.6, 0.5, 0.3, t_max=0.9, noise_schedule="cosine")


# -- which stored steps the flow loss re-runs -----------------------------------------------------------
def test_round_robin_steps_advance_once_per_restoring_rollout():
    from clear_rl.trainers.flow_steps import choose_flow_steps

    restored = torch.tensor([True, False, True, True])
    chosen, counter = choose_flow_steps(restored, 5, 1, "round_robin", torch.Generator(), counter=3)
    assert (
        chosen[:, 0].tolist() == [3, 0, 4, 0] and counter == 6
    )  # 5 % 5 wraps; a skipped row keeps the count
    pairs, _ = choose_flow_steps(torch.tensor([True]), 5, 2, "round_robin", torch.Generator(), counter=4)
    assert pairs.tolist() == [[0, 4]]  # K consecutive steps from the counter's, sorted


def test_random_steps_are_the_seeded_draws_they_always_were():
    from clear_rl.trainers.flow_steps import choose_flow_steps

    chosen, counter = choose_flow_steps(
        torch.ones(3, dtype=torch.bool), 6, 2, "random", torch.Generator().manual_seed(7), 9
    )
    g = torch.Generator().manual_seed(7)
    expected = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(3)]).sort(dim=1).values
    assert torch.equal(chosen, expected) and counter == 9
