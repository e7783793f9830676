"""BAGEL's model core: the full-size module tree against the official key list, the packed layout
(positions, masks, routing), and KV-cached forwards against full ones, on a tiny random BAGEL."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clear_rl.models.bagel import (
    BagelConfig,
    BagelModel,
    LatentSegment,
    TextSegment,
    VitSegment,
    build_tiny_bagel,
)
from clear_rl.models.bagel.io import RECOMPUTED_KEYS
from clear_rl.models.bagel.latents import TimestepEmbedder, patchify_latent, sincos_table, unpatchify_latent
from clear_rl.models.bagel.vision import patchify_image

OFFICIAL_KEYS = Path(__file__).with_name("data") / "bagel_7b_mot_keys.tsv"
ATOL = 1e-5


def official_shapes() -> dict[str, tuple[int, ...]]:
    rows = (line.split("\t") for line in OFFICIAL_KEYS.read_text().splitlines() if line.strip())
    return {key: tuple(int(d) for d in shape.strip("()").split(",") if d.strip()) for key, shape in rows}


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_tiny_bagel(seed=0)
    return model.eval(), tokenizer


def ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"])


def image(seed: int, height: int = 16, width: int = 24) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latent(seed: int, channels: int = 4, side: int = 8) -> torch.Tensor:
    return torch.randn(channels, side, side, generator=torch.Generator().manual_seed(seed))


# -- the full-size module tree ---------------------------------------------------------------------
def test_full_size_key_set_and_shapes_equal_the_official_checkpoint():
    """BAGEL-7B-MoT on the meta device (no memory): every key of ema.safetensors with its shape,
    except the two sin-cos tables, which are non-persistent buffers of the official shapes."""
    with torch.device("meta"):
        model = BagelModel(BagelConfig())
    official = official_shapes()
    assert len(official) == 1223
    ours = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    assert ours == {k: s for k, s in official.items() if k not in RECOMPUTED_KEYS}
    assert tuple(model.vit_pos_embed.pos_embed.shape) == official["vit_pos_embed.pos_embed"]
    assert tuple(model.latent_pos_embed.pos_embed.shape) == official["latent_pos_embed.pos_embed"]
    # The file has no encoder.layers.26 (the official loaders' dropped layer): 26 SigLIP layers here.
    assert len(model.vit_model.vision_model.encoder.layers) == 26
    assert not any(".layers.26." in k and k.startswith("vit_model") for k in official)
    # The VAE sits beside the tree, outside the checkpoint's state dict.
    assert not any(k.startswith("vae.") for k in ours)
    assert sum(p.numel() for p in model.parameters()) == sum(
        math.prod(s) for k, s in official.items() if k not in RECOMPUTED_KEYS
    )


# -- the pieces' maths ---------------------------------------------------------------------------
def test_vit_patch_vectors_are_in_kh_kw_c_order_of_the_converted_conv():
    """BAGEL stores SigLIP's Conv2d patch embedding as a Linear with weight permute(0, 2, 3, 1):
    patchify_image's vectors must meet it in that order."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
    linear = torch.nn.Linear(48, 8)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(8, -1))
        linear.bias.copy_(conv.bias)
    x = image(1)
    expected = conv(x[None])[0].flatten(1).T  # (rows * cols, 8), row-major
    torch.testing.assert_close(linear(patchify_image(x, 4)), expected, atol=ATOL, rtol=0)


def test_latent_patchify_order_and_inverse():
    x = latent(2)
    tokens = patchify_latent(x, 2)
    assert tokens.shape == (16, 16)
    # token (h, w) holds x[c, 2h + ph, 2w + pw] at index (ph * 2 + pw) * C + c
    assert tokens[1 * 4 + 2, (1 * 2 + 0) * 4 + 3] == x[3, 2 * 1 + 1, 2 * 2 + 0]
    torch.testing.assert_close(unpatchify_latent(tokens, 4, 8, 8, 2), x, atol=0, rtol=0)


def test_time_embedder_is_dit_sinusoid_cos_first():
    embedder = TimestepEmbedder(8, frequency_dim=256)
    t = torch.tensor([0.0, 0.25, 1.0])
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None] * freqs[None]
    expected = embedder.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
    torch.testing.assert_close(embedder(t), expected, atol=ATOL, rtol=0)


def test_sincos_table_first_half_encodes_the_column_then_the_row():
    """MAE/DiT's 2-D table (row h * side + w): first half sin/cos of w, second half of h."""
    table = sincos_table(8, 4)
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    h, w = 2, 3
    row = table[h * 4 + w].double()
    expected = torch.cat(
        [torch.sin(w * omega), torch.cos(w * omega), torch.sin(h * omega), torch.cos(h * omega)]
    )
    torch.testing.assert_close(row, expected, atol=1e-6, rtol=0)


def test_text_segments_are_framed_as_bagel_frames_them(tiny):
    model, tokenizer = tiny
    segment = model.text_segment(tokenizer, "What is shown?")
    assert segment.input_ids.tolist() == ids(tokenizer, "<|im_start|>What is shown?<|im_end|>").tolist()
    assert segment.input_ids[0] == model.config.im_start_id == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert (
        model.text_segment(tokenizer, "What", framed=False).input_ids.tolist()
        == ids(tokenizer, "What").tolist()
    )


# -- layout --------------------------------------------------------------------------------------
def test_positions_blocks_and_routing(tiny):
    model, tokenizer = tiny
    text = ids(tokenizer, "<|im_start|>What is shown?<|im_end|>")
    n = text.numel()
    packed = model.pack(
        [[TextSegment(text), VitSegment(image(0)), LatentSegment(latent(0)), TextSegment(text[:3])]]
    )
    vit_tokens = (16 // 4) * (24 // 4)
    lat_tokens = 16
    expected = (
        list(range(n))
        + [n] * (vit_tokens + 2)  # the whole ViT block, markers included, at one position
        + [n + 1] * (lat_tokens + 2)
        + [n + 2, n + 3, n + 4]
    )
    assert packed.position_ids.tolist() == expected
    assert packed.next_positions.tolist() == [n + 5]
    # markers are text tokens (understanding weights); only the latent tokens take the generation expert
    gen = packed.is_gen.nonzero().squeeze(1).tolist()
    start = n + vit_tokens + 2 + 1
    assert gen == list(range(start, start + lat_tokens))
    cfg = model.config
    assert (
        packed.text_ids[n].item() == cfg.vision_start_id
        and packed.text_ids[n + 1].item() == cfg.vision_end_id
    )


def test_attention_mask_rules(tiny):
    model, tokenizer = tiny
    text = ids(tokenizer, "<|im_start|>hi<|im_end|>")
    samples = [
        [
            TextSegment(text),
            VitSegment(image(0, 8, 8)),
            LatentSegment(latent(0, side=4), 0.7, noised=True),
            TextSegment(text),
        ],
        [TextSegment(text[:2])],
    ]
    packed = model.pack(samples)
    mask = packed.attention_mask()
    spans = packed.spans
    t0, vit, noised, t1, other = spans
    # text is causal
    assert mask[t0.start + 1, t0.start] and not mask[t0.start, t0.start + 1]
    # an image block is bidirectional inside, markers included, and sees the text before it
    assert mask[vit.start : vit.end, vit.start : vit.end].all()
    assert mask[vit.start : vit.end, t0.start : t0.end].all()
    assert not mask[t0.start : t0.end, vit.start : vit.end].any()
    # a noised latent block sees everything before it and itself, and no later token sees it
    assert mask[noised.start : noised.end, : noised.end].all()
    assert not mask[t1.start : t1.end, noised.start : noised.end].any()
    assert mask[t1.start : t1.end, vit.start : vit.end].all()
    # samples never see each other
    assert not mask[other.start : other.end, : t1.end].any()
    assert not mask[: t1.end, other.start : other.end].any()


# -- forward -------------------------------------------------------------------------------------
def test_text_only_forward_ignores_the_generation_expert(tiny):
    model, tokenizer = tiny
    samples = [[TextSegment(ids(tokenizer, "<|im_start|>Describe it.<|im_end|>")), VitSegment(image(3))]]
    with torch.no_grad():
        before = model(samples).last_hidden_state
        saved = model.language_model.model.layers[0].mlp_moe_gen.up_proj.weight.clone()
        model.language_model.model.layers[0].mlp_moe_gen.up_proj.weight.mul_(3.0)
        after = model(samples).last_hidden_state
        with_latent = [[*samples[0], LatentSegment(latent(1))]]
        changed = model(with_latent).last_hidden_state
        model.language_model.model.layers[0].mlp_moe_gen.up_proj.weight.copy_(saved)
        reference = model(with_latent).last_hidden_state
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert not torch.allclose(changed[-18:], reference[-18:])


def test_a_noised_block_is_invisible_to_later_text(tiny):
    model, tokenizer = tiny
    text = ids(tokenizer, "<|im_start|>What now?<|im_end|>")

    def run(x: torch.Tensor, noised: bool) -> torch.Tensor:
        out = model([[TextSegment(text), LatentSegment(x, 0.5, noised=noised), TextSegment(text)]])
        return out.last_hidden_state[-text.numel() :]

    with torch.no_grad():
        torch.testing.assert_close(run(latent(1), True), run(latent(2), True), atol=0, rtol=0)
        assert not torch.allclose(run(latent(1), False), run(latent(2), False))


def test_packed_samples_equal_each_sample_alone(tiny):
    model, tokenizer = tiny
    a = [
        TextSegment(ids(tokenizer, "<|im_start|>one<|im_end|>")),
        VitSegment(image(4)),
        LatentSegment(latent(4)),
    ]
    b = [
        TextSegment(ids(tokenizer, "<|im_start|>a longer second question<|im_end|>")),
        LatentSegment(latent(5), 0.3),
    ]
    with torch.no_grad():
        both = model([a, b]).last_hidden_state
        alone = torch.cat([model([a]).last_hidden_state, model([b]).last_hidden_state])
    torch.testing.assert_close(both, alone, atol=ATOL, rtol=0)


def test_cached_text_after_an_image_block_equals_the_full_forward(tiny):
    model, tokenizer = tiny
    prefix = [
        TextSegment(ids(tokenizer, "<|im_start|>You are a helpful assistant.<|im_end|>")),
        LatentSegment(latent(6)),  # the degraded image as a clean VAE block
        VitSegment(image(6)),  # and as a ViT block
    ]
    question = TextSegment(ids(tokenizer, "<|im_start|>What is shown?<|im_end|>"))
    answer = TextSegment(ids(tokenizer, "The answer is A."))
    with torch.no_grad():
        full = model([[*prefix, question, answer]])
        cache = model.prefill([prefix]).cache
        step = model([[question]], cache=cache, update_cache=True)
        last = model([[answer]], cache=cache, update_cache=True)
    n_q, n_a = question.input_ids.numel(), answer.input_ids.numel()
    hidden = full.last_hidden_state
    torch.testing.assert_close(step.last_hidden_state, hidden[-n_a - n_q : -n_a], atol=ATOL, rtol=0)
    torch.testing.assert_close(last.last_hidden_state, hidden[-n_a:], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.text_logits(last), model.text_logits(full)[-n_a:], atol=1e-4, rtol=0)
    assert len(cache) == full.packed.length
    assert step.packed.position_ids.tolist() == full.packed.position_ids[-n_a - n_q : -n_a].tolist()


def test_latents_through_the_generation_expert_attend_to_a_cached_prefix(tiny):
    """The restoration branch: x_t's velocity from the cache equals the full forward's, for two
    samples at once, and the cache is left as it was."""
    model, tokenizer = tiny
    contexts = [
        [TextSegment(ids(tokenizer, "<|im_start|>Restore the image.<|im_end|>")), VitSegment(image(7))],
        [
            TextSegment(ids(tokenizer, "<|im_start|>Fix it<|im_end|>")),
            LatentSegment(latent(7)),
            VitSegment(image(8)),
        ],
    ]
    x_t = torch.stack([latent(8), latent(9)])
    t = torch.tensor([0.9, 0.4])
    with torch.no_grad():
        full = model([[*c, LatentSegment(x_t[i], t[i], noised=True)] for i, c in enumerate(contexts)])
        expected = torch.stack([model.latent_velocities(full)[0], model.latent_velocities(full)[2]])
        cache = model.prefill(contexts).cache
        length, keys = len(cache), cache.keys[0].clone()
        velocity = model.velocity(x_t, t, cache)
    torch.testing.assert_close(velocity, expected, atol=ATOL, rtol=0)
    assert velocity.abs().sum() > 0
    assert len(cache) == length and torch.equal(cache.keys[0], keys)


def test_bridge_is_the_clean_latent_block_embedding(tiny):
    model, _ = tiny
    x0 = torch.stack([latent(10), latent(11)])
    with torch.no_grad():
        embeddings = model.bridge(x0)
        packed = model.pack([[LatentSegment(x0[0])], [LatentSegment(x0[1])]])
        embedded = model.embed(packed)[packed.latent_index].view(2, -1, model.config.hidden_size)
    assert embeddings.shape == (2, 16, model.config.hidden_size)
    torch.testing.assert_close(embeddings, embedded, atol=ATOL, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    model, tokenizer = tiny
    samples = [
        [
            TextSegment(ids(tokenizer, "<|im_start|>grad<|im_end|>")),
            VitSegment(image(12)),
            LatentSegment(latent(12), 0.5, noised=True),
        ]
    ]

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        model.zero_grad()
        model.train()
        model.gradient_checkpointing_enable(checkpointing)
        out = model(samples)
        loss = (
            model.text_logits(out).logsumexp(-1).mean()
            + torch.stack(model.latent_velocities(out)).square().mean()
        )
        loss.backward()
        model.gradient_checkpointing_enable(False)
        model.eval()
        return [p.grad.clone() for p in model.language_model.model.layers.parameters()]

    for plain, checkpointed in zip(grads(False), grads(True)):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=0)
    model.zero_grad(set_to_none=True)


def test_lora_on_both_experts_counts_what_peft_adds(tiny):
    """memory.py's LoRA formula against peft on the tiny model, with the `_moe_gen` twins named."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    from clear_rl.models.bagel.memory import lora_parameter_count, lora_target_modules

    model = copy.deepcopy(tiny[0])
    inject_adapter_in_model(LoraConfig(r=4, target_modules=lora_target_modules()), model)
    added = {name: p.numel() for name, p in model.named_parameters() if ".lora_" in name}
    assert sum(added.values()) == lora_parameter_count(tiny[0], rank=4)
    # 7 linears x 2 experts x 2 layers, each with lora_A and lora_B; none in the ViT
    assert len(added) == 7 * 2 * 2 * 2
    assert any("q_proj_moe_gen.lora_A" in name for name in added)
    assert any("mlp_moe_gen.down_proj.lora_B" in name for name in added)


def test_full_size_memory_figures():
    """memory.py at BAGEL-7B-MoT's size: LoRA r=16 on both experts' seven linears is
    16 * 28 * 2 * (7168 + 4096 + 4096 + 7168 + 3 * 22528) parameters; bf16 is 2 B per parameter."""
    from clear_rl.models.bagel.memory import NF4_DOUBLE_QUANT, memory_report

    report = memory_report(sequence_lengths=(4096,))
    counts = report["counts"]
    assert report["lora_params"] == 16 * 28 * 2 * (7168 + 4096 + 4096 + 7168 + 3 * 22528) == 80_740_352
    assert counts.understanding_expert == counts.generation_expert
    assert counts.bagel == sum(math.prod(s) for k, s in official_shapes().items() if k not in RECOMPUTED_KEYS)
    assert report["resident_bf16"] == 2 * counts.total
    quantized = report["quantized_weights"]
    assert report["resident_nf4"] == int(NF4_DOUBLE_QUANT * quantized + 2 * (counts.total - quantized))
    assert report["kv_bytes_per_token"] == 57344
    step = report["steps"][("nf4", 4096)]
    assert step.weights == report["resident_nf4"] and step.lora_states == 16 * 80_740_352
