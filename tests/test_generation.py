"""Interleaved generation: KV cache correctness, restore policies, placeholders, trajectories."""

import pytest
import torch

from clear_rl.rollout.interleaved import InterleavedGenerationConfig, generate_interleaved
from clear_rl.rollout.restoration import RestorationSampling
from tests.conftest import make_prompts

QUESTIONS = ["What color is the circle?", "How many shapes are there in the picture?", "Which one?"]


def _restore_prone(model, bias: float = 5.0):
    """Raise the `<image_restore>` logit so that sampled rows restore at different steps, or not at all."""
    boost = torch.zeros(model.vlm.lm_head.out_features)
    boost[model.token_ids.image_restore] = bias
    model.vlm.lm_head.register_forward_hook(lambda module, args, out: out + boost)
    return model


def _generate(model, processor, seed=0, **config):
    batch, vae_pixels = make_prompts(processor, QUESTIONS)
    sampling = RestorationSampling(steps=3, sampler=config.pop("sampler", "ode"))
    cfg = InterleavedGenerationConfig(**{"max_new_tokens": 16, "restoration": sampling, **config})
    return generate_interleaved(
        model,
        batch.input_ids,
        batch.attention_mask,
        cfg,
        vae_pixel_values=vae_pixels,
        generator=torch.Generator().manual_seed(seed),
        pixel_values=batch.pixel_values,
    )


@pytest.mark.parametrize(
    "restore, degraded_view", [("never", "keep"), ("always", "keep"), ("always", "drop")]
)
def test_greedy_kv_cache_matches_recomputing_the_prefix(tiny, restore, degraded_view):
    model, processor = tiny
    view = {"restore": restore, "degraded_view": degraded_view}
    cached = _generate(model, processor, do_sample=False, **view)
    recomputed = _generate(model, processor, do_sample=False, use_cache=False, **view)
    assert torch.equal(cached.completion_ids, recomputed.completion_ids)
    torch.testing.assert_close(cached.token_logprobs, recomputed.token_logprobs, atol=1e-4, rtol=0)
    if restore == "always":
        torch.testing.assert_close(cached.restored_latents, recomputed.restored_latents, atol=1e-4, rtol=0)


@pytest.mark.parametrize("degraded_view", ["keep", "drop"])
def test_rows_that_restore_and_rows_that_do_not_share_a_batch(fresh_tiny, degraded_view):
    model, processor = fresh_tiny
    _restore_prone(model, bias=2.0)
    sampling = {
        "do_sample": True,
        "temperature": 1.5,
        "top_k": 50,
        "top_p": 0.9,
        "degraded_view": degraded_view,
    }
    # Find a seed with which some rows restore mid-sequence while others never do: the KV-cached
    # batch (with masked holes for the others) must equal recomputing each step from scratch.
    for seed in range(20):
        cached = _generate(model, processor, seed=seed, **sampling)
        if 0 < int(cached.restored.sum()) < len(QUESTIONS):
            break
    assert 0 < int(cached.restored.sum()) < len(QUESTIONS), "no seed gave a mixed batch"
    recomputed = _generate(model, processor, seed=seed, use_cache=False, **sampling)
    assert torch.equal(cached.completion_ids, recomputed.completion_ids)
    torch.testing.assert_close(cached.token_logprobs, recomputed.token_logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached.restored_latents, recomputed.restored_latents, atol=1e-4, rtol=0)


def test_restore_policies(fresh_tiny):
    model, processor = fresh_tiny
    _restore_prone(model)
    always = _generate(model, processor, restore="always", do_sample=True)
    never = _generate(model, processor, restore="never", do_sample=True)
    assert bool(always.restored.all()) and not bool(never.restored.any())
    assert not bool((never.completion_ids == model.token_ids.image_restore).any())
    assert never.trajectory is None and not bool(never.restored_mask.any())


def test_placeholders_follow_image_restore_and_are_not_text(tiny):
    model, processor = tiny
    out = _generate(model, processor, restore="always", do_sample=True, sampler="sde")
    n = model.num_restored_tokens
    for row in range(len(QUESTIONS)):
        ids = out.completion_ids[row]
        start = int((ids == model.token_ids.image_restore).float().argmax())
        assert bool((ids[start + 1 : start + 1 + n] == model.token_ids.restored_pad).all())
        assert int(out.restored_mask[row].sum()) == n
        assert bool(out.restored_mask[row, start + 1 : start + 1 + n].all())
    assert not bool(out.text_mask[out.restored_mask].any())
    assert bool((out.token_logprobs[out.restored_mask] == 0).all())
    assert bool((out.token_logprobs[out.text_mask] < 0).all())


def test_sde_trajectory_is_kept_with_log_probs(tiny):
    model, processor = tiny
    out = _generate(model, processor, restore="always", sampler="sde")
    steps = 3
    assert out.trajectory.shape == (len(QUESTIONS), steps + 1, *model.latent_shape)
    assert out.trajectory_log_probs.shape == (len(QUESTIONS), steps)
    assert bool((out.trajectory_log_probs != 0).all())
    torch.testing.assert_close(out.trajectory[:, -1], out.restored_latents)
    torch.testing.assert_close(out.timesteps[[0, -1]], torch.tensor([1.0, 0.0]))
    ode = _generate(model, processor, restore="always", sampler="ode")
    assert bool((ode.trajectory_log_probs == 0).all())


def test_same_seed_same_rollout_and_stops_end_rows(tiny):
    model, processor = tiny
    a = _generate(model, processor, seed=7, do_sample=True)
    b = _generate(model, processor, seed=7, do_sample=True)
    c = _generate(model, processor, seed=8, do_sample=True)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    stops = {processor.tokenizer.eos_token_id, model.token_ids.answer_end}
    for row in range(len(QUESTIONS)):
        length = int(a.completion_mask[row].sum())
        written = a.completion_ids[row, :length].tolist()
        # Nothing follows a stop token, and the budget bounds the model-written tokens.
        assert not any(t in stops for t in written[:-1])
        assert int(a.text_mask[row].sum()) <= 16
