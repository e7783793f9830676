"""The BAGEL backbone through clear-rl's one answering path, on a tiny random official-layout folder:
KV-cached decoding against full forwards, restoration and its latent-block bridge, the protocol tags
against the logit cut, restoration CFG, the processor and folder detection."""

from __future__ import annotations

import pytest
import torch

from clear_rl.errors import ClearRLError
from clear_rl.models.backbone import Decoder, UnifiedBackbone
from clear_rl.models.bagel import BagelUnifiedModel, build_tiny_bagel, load_bagel_unified
from clear_rl.models.io import load_unified
from clear_rl.models.tokens import CLEAR_SPECIAL_TOKENS
from clear_rl.rollout.answering import answer_batch
from clear_rl.rollout.interleaved import InterleavedGenerationConfig
from clear_rl.rollout.restoration import RestorationGuidance, RestorationSampling
from tests.conftest import make_images

QUESTIONS = ["What is shown in the picture?", "Describe the image."]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bagel") / "tiny-bagel"
    build_tiny_bagel(path, seed=0)
    return path


@pytest.fixture
def bagel(folder):
    """(model, processor), freshly loaded with clear-rl's single-token tags: tests may add hooks."""
    return load_bagel_unified(folder, device="cpu", tags="tokens")


def _answer(model, processor, oracle=None, guidance=None, sampler="ode", seed=0, size=(40, 36), **config):
    """Two rows whose VAE views share a size (both 32 x 32 on the tiny model: one batch)."""
    sampling = RestorationSampling(steps=3, sampler=sampler, guidance=guidance)
    cfg = InterleavedGenerationConfig(
        **{"max_new_tokens": 8, "do_sample": False, "restoration": sampling, **config}
    )
    images = [make_images(1, size=size[0], seed=1)[0], make_images(1, size=size[1], seed=2)[0]]
    return answer_batch(
        model,
        processor,
        images,
        QUESTIONS,
        cfg,
        generator=torch.Generator().manual_seed(seed),
        oracle_latents=oracle,
    )


def _bias(model, token_id: int, amount: float = 50.0) -> None:
    """Push one token's logit up (or down) in every text step of the tiny model."""
    boost = torch.zeros(model.bagel.language_model.lm_head.out_features)
    boost[token_id] = amount
    model.bagel.language_model.lm_head.register_forward_hook(lambda module, args, out: out + boost)


def test_the_adapter_satisfies_the_backbone_protocol(bagel):
    model, processor = bagel
    assert isinstance(model, UnifiedBackbone)
    ids = torch.tensor([[model.config.image_token_id]])
    decoder = model.decoder_class(
        model, ids, {"pixel_values": torch.zeros(1, 3, 8, 8), "image_sizes": torch.tensor([[8, 8]])},
        None, None, InterleavedGenerationConfig(),
    )  # fmt: skip
    assert isinstance(decoder, Decoder)


def test_prompts_are_framed_as_bagel_frames_them(bagel):
    model, processor = bagel
    messages = [
        {"role": "system", "content": "Check the image."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (
        text == "<|im_start|>Check the image.<|im_end|><|image_pad|><|im_start|>What?<|im_end|><|im_start|>"
    )
    batch = processor(images=make_images(1, 50), text=[text])
    h, w = batch["image_sizes"][0].tolist()
    assert h % 4 == 0 and w % 4 == 0 and max(h, w) <= 32  # the tiny ViT: patch 4, 8 patches a side
    assert (batch.input_ids == model.config.image_token_id).sum() == 1


@pytest.mark.parametrize("restore", ["never", "always"])
def test_kv_cached_greedy_decoding_equals_full_forwards(bagel, restore):
    model, processor = bagel
    cached = _answer(model, processor, restore=restore).output
    full = _answer(model, processor, restore=restore, use_cache=False).output
    assert torch.equal(cached.completion_ids, full.completion_ids)
    torch.testing.assert_close(cached.token_logprobs, full.token_logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached.restored_latents, full.restored_latents, atol=1e-4, rtol=0)
    assert cached.restored.tolist() == [restore == "always"] * 2


def test_image_restore_restores_bridges_a_latent_block_and_continues(bagel):
    model, processor = bagel
    _bias(model, model.token_ids.image_restore)  # the model itself writes the tag first
    out = _answer(model, processor, restore="model", max_new_tokens=5).output
    assert out.restored.all()
    slot = model.num_restored_tokens
    for row in range(2):
        ids = out.completion_ids[row][out.completion_mask[row].bool()].tolist()
        assert ids[0] == model.token_ids.image_restore
        assert ids[1 : 1 + slot] == [model.token_ids.restored_pad] * slot
        assert len(ids) > 1 + slot  # text continues after the bridged block
    assert int(out.restored_mask.sum()) == 2 * slot and not out.text_mask[out.restored_mask].any()
    assert out.restored_latents.abs().sum() > 0


def test_reencode_reads_the_decoded_restoration_back_as_a_vit_block(bagel):
    model, processor = bagel
    _bias(model, model.token_ids.image_restore)
    bridged = _answer(model, processor, restore="model", max_new_tokens=4).output
    cached = _answer(model, processor, restore="model", max_new_tokens=4, readback="reencode").output
    full = _answer(model, processor, restore="model", max_new_tokens=4, readback="reencode", use_cache=False)
    # The decoded restoration (the input's VAE view size) is read as an input image's ViT view.
    height, width = processor.vit_view(make_images(1, size=40, seed=1)[0]).shape[1:]
    patch = model.bagel.config.vit_json["patch_size"]
    vit_tokens = (width // patch) * (height // patch)
    for row in range(2):
        ids = cached.completion_ids[row][cached.completion_mask[row].bool()].tolist()
        assert ids[1 : 1 + vit_tokens] == [model.token_ids.restored_pad] * vit_tokens
    assert int(cached.restored_mask.sum()) == 2 * vit_tokens
    torch.testing.assert_close(cached.restored_latents, bridged.restored_latents)  # same restoration
    assert torch.equal(cached.completion_ids, full.output.completion_ids)
    torch.testing.assert_close(cached.token_logprobs, full.output.token_logprobs, atol=1e-4, rtol=0)
    # What follows the slot reads the ViT block, not the latent block.
    after_bridge = bridged.token_logprobs[bridged.text_mask][1:]
    after_reencode = cached.token_logprobs[cached.text_mask][1:]
    assert not torch.allclose(after_bridge, after_reencode)


def test_reencode_on_bagel_needs_its_processor(bagel):
    model, _ = bagel
    ids = torch.tensor([[model.config.image_token_id]])
    vit = {"pixel_values": torch.zeros(1, 3, 8, 8), "image_sizes": torch.tensor([[8, 8]])}
    with pytest.raises(ValueError, match="BagelProcessor"):
        model.decoder_class(model, ids, vit, None, None, InterleavedGenerationConfig(readback="reencode"))


def test_later_text_depends_on_the_restored_latent(bagel):
    model, processor = bagel
    first = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    logprobs = []
    for latents in (first, first + 1.0):
        out = _answer(
            model, processor, oracle=latents, restore="oracle", max_new_tokens=3, do_sample=True
        ).output
        after = out.text_mask.clone()
        after[:, 0] = False  # the tag comes before the slot
        logprobs.append(out.token_logprobs[after])
    assert not torch.allclose(logprobs[0], logprobs[1])


def test_protocol_tags_are_single_tokens_in_unused_rows_and_survive_the_cut(bagel):
    model, processor = bagel
    tokenizer = processor.tokenizer
    rows = model.bagel.config.llm_json["vocab_size"]
    for tag in CLEAR_SPECIAL_TOKENS:
        ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and model.config.text_vocab_size <= ids[0] < rows, tag
    cut = set(model.cut_token_ids())
    assert rows - 1 in cut and not cut & set(vars(model.token_ids).values())
    _bias(model, rows - 1, 100.0)  # an unused row the cut hides...
    _bias(model, model.token_ids.answer_start, 50.0)  # ...and a tag, which it must not
    out = _answer(model, processor, restore="never", max_new_tokens=2).output
    assert out.completion_ids[:, 0].tolist() == [model.token_ids.answer_start] * 2
    assert not (out.completion_ids == rows - 1).any()


def test_cfg_with_unit_scales_equals_no_cfg_and_is_off_in_sde(bagel):
    model, processor = bagel
    unit = RestorationGuidance(cfg_text=1.0, cfg_img=1.0)
    plain = _answer(model, processor, restore="always", guidance=None).output.restored_latents
    assert torch.equal(
        _answer(model, processor, restore="always", guidance=unit).output.restored_latents, plain
    )
    guided = _answer(model, processor, restore="always", guidance=RestorationGuidance(interval=(0.0, 1.0)))
    assert not torch.allclose(guided.output.restored_latents, plain)
    sde = [
        _answer(model, processor, restore="always", sampler="sde", guidance=g).output for g in (None, unit)
    ]
    assert torch.equal(sde[0].restored_latents, sde[1].restored_latents)


def test_guidance_combines_as_bagel():
    """One latent token (C=1, 2x2): text_channel renorms v_text to at most v's norm, then image CFG."""
    v, v_text, v_image = (
        torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(3)
    )
    text = v_text + 3.0 * (v - v_text)
    text = text * min(1.0, float(v.norm() / text.norm()))
    expected = v_image + 1.5 * (text - v_image)
    torch.testing.assert_close(RestorationGuidance().combine(v, v_text, v_image), expected)
    capped = RestorationGuidance(cfg_text=3.0, cfg_img=1.0, renorm="global").combine(v, v_text, v_image)
    assert capped.norm() <= v.norm() * (1 + 1e-5)
    assert not RestorationGuidance().active(0.4) and RestorationGuidance().active(0.41)
    assert not RestorationGuidance(cfg_text=1.0).active(0.9)  # as BAGEL: image CFG only with text CFG


def test_folders_are_detected_and_backbones_checked(folder, tiny, tmp_path):
    model, processor = load_unified(folder)
    assert isinstance(model, BagelUnifiedModel) and model.latent_shape == (4, 16, 16)
    with pytest.raises(ClearRLError, match="backbone"):
        load_unified(folder, backbone="composed")
    with pytest.raises(ClearRLError, match="unknown backbone"):
        load_unified(folder, backbone="bagle")
    from clear_rl.models.io import save_unified

    save_unified(*tiny, tmp_path / "composed")
    with pytest.raises(ClearRLError, match="llm_config.json"):
        load_unified(tmp_path / "composed", backbone="bagel")
    with pytest.raises(ClearRLError, match="preset 'clear-release' is an inference preset of BAGEL"):
        load_unified(tmp_path / "composed", preset="clear-release")


def test_recipes_choose_the_backbone_with_a_checked_key():
    from clear_rl.recipe import ModelConfig, build_dataclass

    assert (
        build_dataclass(ModelConfig, {"path": "/models/CLEAR-RL", "backbone": "bagel"}, "model").backbone
        == "bagel"
    )
    with pytest.raises(Exception, match="backbone"):
        build_dataclass(ModelConfig, {"path": "/models/CLEAR-RL", "backbone": "bagle"}, "model")
    with pytest.raises(Exception, match="model.path"):
        build_dataclass(ModelConfig, {"tiny": {}, "backbone": "bagel"}, "model")
    preset = build_dataclass(ModelConfig, {"path": "/models/CLEAR-RL", "preset": "bagel-upstream"}, "model")
    assert preset.preset == "bagel-upstream"
    with pytest.raises(Exception, match="preset"):
        build_dataclass(ModelConfig, {"path": "/models/CLEAR-RL", "preset": "clear-relase"}, "model")
    with pytest.raises(Exception, match="model.path"):
        build_dataclass(ModelConfig, {"tiny": {}, "preset": "clear-release"}, "model")
