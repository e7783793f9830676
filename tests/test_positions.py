"""Restored blocks get image positions under M-RoPE (Qwen2.5-VL), in training and in generation.

A tiny Qwen2.5-VL is built in code from a `Qwen2_5_VLConfig` (no weights, no processor: the
Qwen processor needs torchvision), so prompts, `pixel_values` and `image_grid_thw` are made by
hand the way the processor lays them out: `<|vision_start|>`, one `<|image_pad|>` per merged
2x2 patch group, `<|vision_end|>`.
"""

from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from clear_rl.models.assemble import compose_unified
from clear_rl.models.positions import (
    RolloutPositions,
    multimodal_position_ids,
    positions_for_forward,
    restored_block_grid,
)
from clear_rl.models.tiny import build_tiny_tokenizer
from clear_rl.rollout.interleaved import InterleavedGenerationConfig, generate_interleaved
from clear_rl.rollout.restoration import RestorationSampling

VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
PATCH_DIM = 3 * 2 * 2 * 2  # channels * temporal patch * patch * patch
MERGE = 2


@pytest.fixture(scope="module")
def qwen():
    """(composed model over a tiny Qwen2.5-VL, its tokenizer), eval mode."""
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": VISION_TOKENS}, replace_extra_special_tokens=False
    )
    start, image, end, video = tokenizer.convert_tokens_to_ids(VISION_TOKENS)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "max_position_embeddings": 2048,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 2,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
            "window_size": 8,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [0],
        },
        vision_start_token_id=start,
        image_token_id=image,
        vision_end_token_id=end,
        video_token_id=video,
    )
    vlm = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        norm_num_groups=16,
        layers_per_block=1,
        sample_size=32,
    )
    head = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16}
    model, _ = compose_unified(vlm, SimpleNamespace(tokenizer=tokenizer), vae, vae_image_size=32, head=head)
    return model.eval(), tokenizer


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _prompts(tokenizer, grids=((1, 4, 6), (1, 4, 4)), questions=("What is it?", "Count them all.")):
    """A left-padded prompt batch, one image per row (grids in patches), and its image inputs."""
    start, image, end = tokenizer.convert_tokens_to_ids(VISION_TOKENS[:3])
    rows = []
    for (_, h, w), question in zip(grids, questions):
        n = h * w // MERGE**2
        rows.append(
            _ids(tokenizer, "<|user|>\n")
            + [start, *[image] * n, end]
            + _ids(tokenizer, question + "</s>\n<|assistant|>\n")
        )
    length = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    grid_thw = torch.tensor(grids)
    pixels = torch.randn(int(grid_thw.prod(-1).sum()), PATCH_DIM, generator=torch.Generator().manual_seed(0))
    return input_ids, mask, {"pixel_values": pixels, "image_grid_thw": grid_thw}


def _with_restoration(model, tokenizer, input_ids, mask, n_pad: int):
    """Append `<think>x</think><image_restore>` + n_pad placeholders + `<answer>A</answer>`, right-padded."""
    tail = torch.tensor(
        _ids(tokenizer, "<think>x</think><image_restore>")
        + [model.config.restored_pad_token_id] * n_pad
        + _ids(tokenizer, "<answer>A</answer>")
    )
    tail = tail.expand(input_ids.shape[0], -1)
    return torch.cat([input_ids, tail], 1), torch.cat([mask, torch.ones_like(tail)], 1)


def _as_images(model, input_ids, image_grid_thw, restored_thw):
    """The same sequences with each restored block replaced by an image of `restored_thw`: the reference."""
    pad, image = model.config.restored_pad_token_id, model.config.image_token_id
    grids = []
    for row in range(input_ids.shape[0]):  # one prompt image, then one restored block, per row
        grids += [image_grid_thw[row], torch.tensor(restored_thw)]
    ids = torch.where(input_ids == pad, image, input_ids)
    return ids, torch.stack(grids)


@pytest.mark.parametrize("grid", [None, (2, 3), (3, 1)])
def test_restored_block_gets_the_positions_of_an_image_of_its_grid_in_its_place(qwen, grid):
    model, tokenizer = qwen
    rows, cols = grid or restored_block_grid(model)
    input_ids, mask, images = _prompts(tokenizer)
    input_ids, mask = _with_restoration(model, tokenizer, input_ids, mask, rows * cols)
    positions, deltas = multimodal_position_ids(model, input_ids, mask, restored_grid=grid, **images)

    ref_ids, ref_grids = _as_images(
        model, input_ids, images["image_grid_thw"], (1, rows * MERGE, cols * MERGE)
    )
    types = (ref_ids == model.config.image_token_id).int()
    expected, expected_deltas = model.vlm.model.get_rope_index(
        ref_ids, mm_token_type_ids=types, image_grid_thw=ref_grids, attention_mask=mask
    )
    torch.testing.assert_close(positions, expected, atol=0, rtol=0)
    torch.testing.assert_close(deltas, expected_deltas.view(-1, 1), atol=0, rtol=0)

    # Spelled out: t constant, h = start + row, w = start + col (row-major), and the text after
    # the block continues from its largest position + 1, as after an image.
    block = model.restored_token_mask(input_ids)
    restore_at = (input_ids == model.token_ids.image_restore).float().argmax(1)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    for b in range(input_ids.shape[0]):
        start = int(positions[0, b, restore_at[b]]) + 1
        t, h, w = positions[:, b, block[b]]
        assert bool((t == start).all())
        assert torch.equal(h, start + r.flatten()) and torch.equal(w, start + c.flatten())
        after = positions[:, b, int(block[b].nonzero()[-1]) + 1 :]
        assert bool((after == after[0]).all())  # text: the three axes agree
        assert after[0].tolist() == list(
            range(start + max(rows, cols), start + max(rows, cols) + after.shape[1])
        )


def test_forward_places_restored_blocks_as_images(qwen):
    model, tokenizer = qwen
    input_ids, mask, images = _prompts(tokenizer)
    input_ids, mask = _with_restoration(model, tokenizer, input_ids, mask, model.num_restored_tokens)
    latents = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    ref_ids, ref_grids = _as_images(
        model, input_ids, images["image_grid_thw"], (1, *[s * MERGE for s in restored_block_grid(model)])
    )
    reference, _ = model.vlm.model.get_rope_index(
        ref_ids,
        mm_token_type_ids=(ref_ids == model.config.image_token_id).int(),
        image_grid_thw=ref_grids,
        attention_mask=mask,
    )
    # What the VLM alone does with the processor's token types (the completion is text to it).
    text_types = (input_ids == model.config.image_token_id).int()

    def run(**kw) -> torch.Tensor:
        return model(
            input_ids=input_ids, attention_mask=mask, restored_latents=latents, **images, **kw
        ).logits

    with torch.no_grad():
        ours = run()
        explicit = run(position_ids=reference)
        with model.bridged_embeddings(input_ids, latents):  # the VLM's own positions, same embeddings
            vlm_default = model.vlm(
                input_ids=input_ids, attention_mask=mask, mm_token_type_ids=text_types, **images
            ).logits
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], explicit[valid], atol=1e-5, rtol=0)
    assert float((ours[valid] - vlm_default[valid]).abs().max()) > 1e-3  # the positions matter


def test_vit_token_dropout_hides_the_image_but_keeps_the_layout(qwen):
    model, tokenizer = qwen
    input_ids, mask, images = _prompts(tokenizer)
    input_ids, mask = _with_restoration(model, tokenizer, input_ids, mask, model.num_restored_tokens)
    dropped = mask.clone()
    dropped[0] *= (~model.image_token_mask(input_ids[0])).long()
    full, _ = multimodal_position_ids(model, input_ids, mask, **images)
    hidden, _ = multimodal_position_ids(model, input_ids, dropped, **images)
    torch.testing.assert_close(hidden, full, atol=0, rtol=0)


def test_malformed_blocks_and_grids_are_errors(qwen):
    model, tokenizer = qwen
    input_ids, mask, images = _prompts(tokenizer)
    short, short_mask = _with_restoration(model, tokenizer, input_ids, mask, model.num_restored_tokens - 1)
    with pytest.raises(ValueError, match="not one restored block"):
        multimodal_position_ids(model, short, short_mask, **images)
    with pytest.raises(ValueError, match="grids but the sequences hold"):
        multimodal_position_ids(model, input_ids, mask, image_grid_thw=images["image_grid_thw"].repeat(2, 1))
    with pytest.raises(ValueError, match="more images"):
        multimodal_position_ids(model, input_ids, mask, image_grid_thw=images["image_grid_thw"][:1])


def _full_pass_logprobs(model, input_ids, mask, images, out, temperature: float = 1.0, never: bool = False):
    """Each completion token's sampling log-prob recomputed in one teacher-forced pass.

    Generation bans placeholders and image tokens, and `<image_restore>` once a row restored, before
    it scales by the temperature (`<image_restore>` everywhere with `never`); so does this.
    """
    prompt_len, length = input_ids.shape[1], out.completion_ids.shape[1]
    with torch.no_grad():
        logits = model(
            input_ids=torch.cat([input_ids, out.completion_ids], 1),
            attention_mask=torch.cat([mask, out.completion_mask], 1),
            restored_latents=out.restored_latents,
            **images,
        ).logits[:, prompt_len - 1 : prompt_len + length - 1]
    ids = model.token_ids
    is_restore = (out.completion_ids == ids.image_restore).long()
    after_restore = (is_restore.cumsum(1) - is_restore).bool() | never  # strictly after the tag
    logits = logits.float().clone()
    logits[..., ids.restored_pad] = float("-inf")
    logits[..., model.config.image_token_id] = float("-inf")
    logits[..., ids.image_restore] = torch.where(after_restore, float("-inf"), logits[..., ids.image_restore])
    scaled = logits / temperature
    return torch.log_softmax(scaled, -1).gather(-1, out.completion_ids[..., None]).squeeze(-1)


def _generate(model, input_ids, mask, images, seed: int = 3, **config):
    cfg = InterleavedGenerationConfig(
        **{"max_new_tokens": 12, "restoration": RestorationSampling(steps=2), **config}
    )
    degraded = torch.randn(
        input_ids.shape[0], *model.latent_shape, generator=torch.Generator().manual_seed(2)
    )
    return generate_interleaved(
        model,
        input_ids,
        mask,
        cfg,
        degraded_latents=degraded,
        generator=torch.Generator().manual_seed(seed),
        **images,
    )


@pytest.mark.parametrize("restore", ["always", "never"])
def test_cached_generation_sees_the_positions_of_a_full_pass(qwen, restore):
    """Each written token's log-prob in a KV-cached rollout equals its log-prob in one full forward."""
    model, tokenizer = qwen
    input_ids, mask, images = _prompts(tokenizer)
    out = _generate(model, input_ids, mask, images, do_sample=False, restore=restore)
    assert bool(out.restored.all()) == (restore == "always")
    recomputed = _generate(model, input_ids, mask, images, do_sample=False, restore=restore, use_cache=False)
    assert torch.equal(out.completion_ids, recomputed.completion_ids)
    expected = _full_pass_logprobs(model, input_ids, mask, images, out, never=restore == "never")
    text = out.text_mask
    torch.testing.assert_close(out.token_logprobs[text], expected[text], atol=1e-4, rtol=0)


def test_a_mixed_batch_with_holes_sees_the_positions_of_a_full_pass(qwen):
    """Rows that restore at different steps, or not at all, share a cache and keep their positions."""
    model, tokenizer = qwen
    grids, questions = ((1, 4, 6), (1, 4, 4), (1, 2, 4)), ("What is it?", "Count them all.", "Which?")
    input_ids, mask, images = _prompts(tokenizer, grids, questions)
    boost = torch.zeros(model.vlm.lm_head.out_features)
    boost[model.token_ids.image_restore] = 3.0
    handle = model.vlm.lm_head.register_forward_hook(lambda module, args, out: out + boost)
    sampling = {"do_sample": True, "temperature": 1.5, "restore": "model"}
    try:
        for seed in range(20):
            out = _generate(model, input_ids, mask, images, seed=seed, **sampling)
            if 0 < int(out.restored.sum()) < len(grids):
                break
        assert 0 < int(out.restored.sum()) < len(grids), "no seed gave a mixed batch"
        recomputed = _generate(model, input_ids, mask, images, seed=seed, use_cache=False, **sampling)
        expected = _full_pass_logprobs(model, input_ids, mask, images, out, temperature=1.5)
    finally:
        handle.remove()
    assert torch.equal(out.completion_ids, recomputed.completion_ids)
    text = out.text_mask
    torch.testing.assert_close(out.token_logprobs[text], expected[text], atol=1e-4, rtol=0)


def test_one_dimensional_rope_vlms_keep_consecutive_positions(tiny):
    model, processor = tiny
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert multimodal_position_ids(model, ids, mask) is None
    assert positions_for_forward(model, ids, mask, {}) is None
    positions = RolloutPositions(model, {})
    assert positions(ids, mask, 2).tolist() == [[1, 2], [3, 4]]
