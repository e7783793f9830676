"""Readbacks of the restored slot (bridge vs decode + re-encode), the oracle slot, the degraded view."""

import numpy as np
import pytest
import torch
from PIL import Image

from clear_rl.models import build_tiny_model
from clear_rl.rollout.interleaved import InterleavedGenerationConfig, generate_interleaved
from clear_rl.rollout.restoration import RestorationSampling
from tests.conftest import make_prompts

QUESTIONS = ["What color is the circle?", "How many shapes are there in the picture?", "Which one?"]


@pytest.fixture(scope="module")
def prone():
    """The tiny model, made to emit `<image_restore>` first, so that text follows every slot."""
    model, processor = build_tiny_model(seed=0)
    boost = torch.zeros(model.vlm.lm_head.out_features)
    boost[model.token_ids.image_restore] = 50.0
    model.vlm.lm_head.register_forward_hook(lambda module, args, out: out + boost)
    return model.eval(), processor


def _generate(model, processor, seed=0, image_seed=0, **options):
    batch, vae_pixels = make_prompts(processor, QUESTIONS, seed=image_seed)
    config_keys = set(InterleavedGenerationConfig.__dataclass_fields__)
    config = {"max_new_tokens": 12, "restoration": RestorationSampling(steps=2), "do_sample": False}
    config.update({k: v for k, v in options.items() if k in config_keys})
    extra = {k: v for k, v in options.items() if k not in config_keys}
    return generate_interleaved(
        model,
        batch.input_ids,
        batch.attention_mask,
        InterleavedGenerationConfig(**config),
        vae_pixel_values=vae_pixels,
        generator=torch.Generator().manual_seed(seed),
        pixel_values=batch.pixel_values,
        **extra,
    )


def _expected_vision_tokens(model, processor, latents):
    """Independently: VAE decode -> 8-bit RGB -> the VLM's image processor -> tower + projector."""
    pixels = model.decode_latents(latents).float()
    arrays = ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]
    pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = model.vlm.model.get_image_features(pixel_values=pixel_values).pooler_output
    return torch.stack(list(features))


class _SlotRecorder:
    """Records the LLM's input embeddings at `<|restored_pad|>` positions, per row, as the LLM sees them."""

    def __init__(self, model):
        self.pad_id = model.token_ids.restored_pad
        self.ids: list[torch.Tensor] = []
        self.slots: dict[int, list[torch.Tensor]] = {}
        self.handles = [
            model.vlm.register_forward_pre_hook(self._ids, with_kwargs=True),
            model.vlm.model.language_model.register_forward_pre_hook(self._embeds, with_kwargs=True),
        ]

    def _ids(self, module, args, kwargs):
        self.ids.append(kwargs["input_ids"])

    def _embeds(self, module, args, kwargs):
        ids, embeds = self.ids[-1], kwargs["inputs_embeds"]
        for row in range(ids.shape[0]):
            mask = ids[row] == self.pad_id
            if bool(mask.any()):
                self.slots.setdefault(row, []).append(embeds[row, mask].detach())

    def remove(self):
        for handle in self.handles:
            handle.remove()


def test_reencode_puts_exactly_the_vision_tokens_of_the_decoded_latent_in_the_slot(fresh_tiny):
    model, processor = fresh_tiny
    recorder = _SlotRecorder(model)
    out = _generate(model, processor, restore="always", readback="reencode", image_processor=processor)
    recorder.remove()
    expected = _expected_vision_tokens(model, processor, out.restored_latents)
    vision_tokens = model.config.vlm_config.image_seq_length
    assert expected.shape[1] == vision_tokens == 64
    assert bool(out.restored.all())
    for row in range(len(QUESTIONS)):
        assert int(out.restored_mask[row].sum()) == vision_tokens
        (seen,) = recorder.slots[row]  # the KV-cached slot block enters the LLM once
        torch.testing.assert_close(seen, expected[row], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.restored_embeds, expected, atol=1e-5, rtol=1e-5)
    # ... and not the bridge's embeddings of the same latent.
    bridged = model.bridge(out.restored_latents)
    assert not torch.allclose(bridged, expected, atol=1e-3)


def test_reencode_vae_bridges_the_restoration_read_back_through_8_bit_pixels(fresh_tiny):
    """The composed model's `reencode-vae`: the slot holds the bridge of the decoded, 8-bit, re-encoded
    latent (not of the sampled one), and a KV-cached rollout equals recomputing it."""
    from clear_rl.models.readback import vae_roundtrip

    model, processor = fresh_tiny
    recorder = _SlotRecorder(model)
    out = _generate(model, processor, restore="always", readback="reencode-vae")
    recorder.remove()
    expected = model.bridge(vae_roundtrip(model, out.restored_latents))
    assert bool(out.restored.all())
    for row in range(len(QUESTIONS)):
        (seen,) = recorder.slots[row]
        torch.testing.assert_close(seen, expected[row], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.bridge(out.restored_latents), expected, atol=1e-4)
    recomputed = _generate(model, processor, restore="always", readback="reencode-vae", use_cache=False)
    assert torch.equal(out.completion_ids, recomputed.completion_ids)
    torch.testing.assert_close(out.token_logprobs, recomputed.token_logprobs, atol=1e-4, rtol=0)


def test_reencode_cache_matches_recomputing_and_differs_from_bridge(prone):
    model, processor = prone
    options = {"restore": "always", "readback": "reencode", "image_processor": processor}
    cached = _generate(model, processor, **options)
    recomputed = _generate(model, processor, use_cache=False, **options)
    assert torch.equal(cached.completion_ids, recomputed.completion_ids)
    torch.testing.assert_close(cached.token_logprobs, recomputed.token_logprobs, atol=1e-4, rtol=0)
    bridge = _generate(model, processor, restore="always")
    assert bridge.restored_embeds is None
    torch.testing.assert_close(bridge.restored_latents, cached.restored_latents)  # same restorations
    after = cached.text_mask & ~_up_to_restore(model, cached.completion_ids)
    assert int(after.sum()) > 0
    assert not torch.allclose(bridge.token_logprobs[after], cached.token_logprobs[after], atol=1e-4)


def _up_to_restore(model, ids):
    """Completion positions up to and including each row's `<image_restore>`."""
    is_restore = ids == model.token_ids.image_restore
    return is_restore.long().cumsum(1).sub(is_restore.long()) == 0


def _oracle(model, processor, latents, image_seed=0, **options):
    return _generate(
        model, processor, image_seed=image_seed, restore="oracle", oracle_latents=latents, **options
    )


def test_oracle_reads_only_the_given_latent(prone):
    model, processor = prone
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(len(QUESTIONS), *model.latent_shape, generator=generator)
    other = torch.randn(len(QUESTIONS), *model.latent_shape, generator=generator)
    base = _oracle(model, processor, latents)
    assert bool(base.restored.all()) and base.trajectory is None
    torch.testing.assert_close(base.restored_latents, latents)
    # The images' own tokens are hidden from every position: other images, same answers.
    other_images = _oracle(model, processor, latents, image_seed=5)
    assert torch.equal(base.completion_ids, other_images.completion_ids)
    torch.testing.assert_close(base.token_logprobs, other_images.token_logprobs, atol=1e-5, rtol=0)
    # ... while the slot's latent is read.
    other_latents = _oracle(model, processor, other)
    after = base.text_mask & ~_up_to_restore(model, base.completion_ids)
    assert int(after.sum()) > 0
    assert not torch.allclose(base.token_logprobs[after], other_latents.token_logprobs[after], atol=1e-4)
    # The KV cache path and recomputing the prefix agree under the hidden image.
    recomputed = _oracle(model, processor, latents, use_cache=False)
    assert torch.equal(base.completion_ids, recomputed.completion_ids)
    torch.testing.assert_close(base.token_logprobs, recomputed.token_logprobs, atol=1e-4, rtol=0)


def test_oracle_with_reencode_reads_the_vision_tokens_of_the_given_latent(tiny):
    model, processor = tiny
    latents = torch.randn(len(QUESTIONS), *model.latent_shape, generator=torch.Generator().manual_seed(2))
    out = _oracle(model, processor, latents, readback="reencode", image_processor=processor)
    torch.testing.assert_close(
        out.restored_embeds, _expected_vision_tokens(model, processor, latents), atol=1e-5, rtol=1e-5
    )


def test_drop_changes_only_what_follows_the_slot(prone):
    model, processor = prone
    keep = _generate(model, processor, restore="always", degraded_view="keep")
    drop = _generate(model, processor, restore="always", degraded_view="drop")
    before = _up_to_restore(model, keep.completion_ids)
    assert torch.equal(before, _up_to_restore(model, drop.completion_ids))
    torch.testing.assert_close(keep.token_logprobs[before], drop.token_logprobs[before])
    torch.testing.assert_close(keep.restored_latents, drop.restored_latents)
    after = keep.text_mask & ~before
    assert int(after.sum()) > 0
    assert not torch.allclose(keep.token_logprobs[after], drop.token_logprobs[after], atol=1e-4)


def test_settings_that_cannot_run_fail_clearly(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="image_processor"):
        _generate(model, processor, restore="always", readback="reencode")
    with pytest.raises(ValueError, match="oracle_latents"):
        _generate(model, processor, restore="oracle")
    with pytest.raises(ValueError, match=r"oracle_latents must have shape \(3, 4, 16, 16\)"):
        _oracle(model, processor, torch.zeros(2, *model.latent_shape))
    with pytest.raises(ValueError, match="readback must be one of"):
        _generate(model, processor, readback="decode")
