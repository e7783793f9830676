"""The composed unified model: bridge wiring, head conditioning, save/load, LoRA, errors."""

import json

import pytest
import torch

from clear_rl.errors import ClearRLError
from clear_rl.models import ComposedUnifiedModel, patchify_latents
from clear_rl.models.adapters import LoraSettings, apply_lora, set_trainable_parts
from clear_rl.models.assemble import compose_unified, load_vlm
from clear_rl.models.composed.parts import composed_part_paths
from clear_rl.models.io import load_unified, save_unified
from clear_rl.models.tokens import CLEAR_SPECIAL_TOKENS
from tests.conftest import make_prompts


def _with_restoration(model, processor, batch):
    """Append `<think>x</think><image_restore>` + placeholders + `<answer>A</answer>` to each prompt."""
    tail = (
        "<think>x</think><image_restore>"
        + "<|restored_pad|>" * model.num_restored_tokens
        + "<answer>A</answer>"
    )
    ids = processor.tokenizer(tail, add_special_tokens=False, return_tensors="pt").input_ids
    ids = ids.expand(batch.input_ids.shape[0], -1)
    return torch.cat([batch.input_ids, ids], 1), torch.cat([batch.attention_mask, torch.ones_like(ids)], 1)


def test_protocol_tokens_are_single_special_tokens(tiny):
    model, processor = tiny
    for token in CLEAR_SPECIAL_TOKENS:
        assert len(processor.tokenizer(token, add_special_tokens=False).input_ids) == 1
    ids = model.token_ids
    assert processor.tokenizer.convert_ids_to_tokens([ids.image_restore, ids.restored_pad]) == [
        "<image_restore>",
        "<|restored_pad|>",
    ]
    assert model.vlm.get_input_embeddings().num_embeddings >= len(processor.tokenizer)


def test_patchify_groups_2x2_neighbourhoods():
    latents = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    tokens = patchify_latents(latents)
    assert tokens.shape == (1, 4, 8)
    # First token: channel 0 then channel 1 of the top-left 2x2 block, row-major.
    assert tokens[0, 0].tolist() == [0, 1, 4, 5, 16, 17, 20, 21]


def test_bridged_latents_change_later_logits_only(tiny):
    model, processor = tiny
    batch, _ = make_prompts(processor, ["What color is it?", "Count them."])
    input_ids, mask = _with_restoration(model, processor, batch)
    latents = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=batch.pixel_values,
            restored_latents=latents,
        )
        b = model(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=batch.pixel_values,
            restored_latents=latents + 1,
        )
    first_pad = int(model.restored_token_mask(input_ids)[0].float().argmax())
    diff = (a.logits - b.logits).abs().amax(-1)
    assert float(diff[:, :first_pad].max()) == 0.0  # causal: nothing before the slot changes
    assert float(diff[:, -1].min()) > 1e-4  # the answer position reads the restored latent


def test_placeholders_without_latents_or_of_wrong_count_are_errors(tiny):
    model, processor = tiny
    batch, _ = make_prompts(processor, ["What color is it?"])
    input_ids, mask = _with_restoration(model, processor, batch)
    with pytest.raises(ValueError, match="no restored_latents"):
        model(input_ids=input_ids, attention_mask=mask, pixel_values=batch.pixel_values)
    one_pad_short = input_ids[:, :-1].clone()
    one_pad_short = torch.cat([one_pad_short[:, : -model.num_restored_tokens], one_pad_short[:, -4:]], 1)
    with pytest.raises(ValueError, match="multiple of"):
        model(
            input_ids=torch.cat([batch.input_ids, one_pad_short[:, -(model.num_restored_tokens + 3) :]], 1),
            pixel_values=batch.pixel_values,
            restored_latents=torch.zeros(1, *model.latent_shape),
        )


def test_head_context_stops_at_image_restore(tiny):
    model, processor = tiny
    batch, vae_pixels = make_prompts(processor, ["What color is it?"])
    input_ids, mask = _with_restoration(model, processor, batch)
    hidden = torch.randn(1, input_ids.shape[1], model.config.get_text_config().hidden_size)
    degraded = model.encode_latents(vae_pixels)
    context = model.restoration_context(input_ids, mask, hidden, degraded)
    # The completion's <image_restore> (the system prompt names the tag too, earlier).
    restore_at = int((input_ids[0] == model.token_ids.image_restore).nonzero().max())
    assert restore_at > int(model.image_token_mask(input_ids)[0].nonzero().max())
    assert (
        context.attention_mask[0, : restore_at + 1].all()
        and not context.attention_mask[0, restore_at + 1 :].any()
    )
    x_t, t = torch.randn(1, *model.latent_shape), torch.tensor([0.5])
    with torch.no_grad():
        v = model.velocity(x_t, t, context)
        changed_after = hidden.clone()
        changed_after[:, restore_at + 1 :] += 5
        v_after = model.velocity(x_t, t, model.restoration_context(input_ids, mask, changed_after, degraded))
        v_other_image = model.velocity(
            x_t, t, model.restoration_context(input_ids, mask, hidden, degraded + 1)
        )
    assert v.shape == x_t.shape
    torch.testing.assert_close(v, v_after)  # positions after <image_restore> are not context
    assert float((v - v_other_image).abs().max()) > 1e-4  # the degraded image's latent is an input


def _public(config: dict) -> dict:
    """A config as JSON holds it, minus bookkeeping (`_name_or_path`, `_class_name`, the load dtype)."""
    clean = {
        k: _public(v) if isinstance(v, dict) else v
        for k, v in config.items()
        if not str(k).startswith("_") and k != "dtype"
    }
    return json.loads(json.dumps(clean, default=str))


def test_save_and_load_round_trip_every_part(tiny, tmp_path):
    model, processor = tiny
    save_unified(model, processor, tmp_path / "model")
    loaded, loaded_processor = load_unified(tmp_path / "model")
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert _public(loaded.config.to_dict()) == _public(model.config.to_dict())
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers()):
        assert torch.equal(a, b), name
    batch, vae_pixels = make_prompts(processor, ["What color is it?"])
    input_ids, mask = _with_restoration(model, processor, batch)
    latents = torch.randn(1, *model.latent_shape)
    with torch.no_grad():
        for m in (model, loaded.eval()):
            m._check = m(
                input_ids=input_ids,
                attention_mask=mask,
                pixel_values=batch.pixel_values,
                restored_latents=latents,
            )
        torch.testing.assert_close(model._check.logits, loaded._check.logits, atol=0, rtol=0)
        torch.testing.assert_close(model.encode_latents(vae_pixels), loaded.encode_latents(vae_pixels))
        torch.testing.assert_close(model.decode_latents(latents), loaded.decode_latents(latents))


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(ClearRLError, match="not found"):
        load_unified(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClearRLError, match="no config.json"):
        load_unified(tmp_path / "empty")


def test_lora_trains_only_adapters(fresh_tiny):
    model, _ = fresh_tiny
    peft_model = apply_lora(model, LoraSettings(r=4))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    # The protocol tokens' embedding and output rows train too (they were added untrained).
    assert sum("trainable_tokens_delta" in n for n in trainable) == 2
    assert any("restoration_head" in n for n in trainable) and any("language_model" in n for n in trainable)
    assert not any("vision_tower" in n or ".vae." in n for n in trainable)


def test_trainable_parts_freeze_the_rest(fresh_tiny):
    model, _ = fresh_tiny
    set_trainable_parts(model, ["bridge", "head"])
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"latent_bridge", "restoration_head"}
    set_trainable_parts(model, ["llm"])
    llm_prefix = composed_part_paths(model)["llm"][0]
    assert all(
        n.startswith((llm_prefix, "vlm.lm_head")) for n, p in model.named_parameters() if p.requires_grad
    )
    with pytest.raises(ClearRLError, match="valid parts"):
        set_trainable_parts(model, ["decoder"])


def test_4bit_without_cuda_is_a_clear_error(tiny, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error is for CPU-only machines")
    model, processor = tiny
    model.vlm.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    with pytest.raises(ClearRLError, match="CUDA"):
        load_vlm(tmp_path / "vlm", load_in_4bit=True)
    with pytest.raises(ClearRLError, match="VLM folder not found"):
        load_vlm(tmp_path / "nope")


def test_a_full_precision_folder_loads_with_its_vlm_quantized_on_request(tiny, tmp_path, monkeypatch):
    """load_in_4bit on a saved composed model (an aligned one, which later stages start from)
    quantizes its VLM's language model only; without CUDA it is refused naming the GPU."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    model, processor = tiny
    save_unified(model, processor, tmp_path / "aligned")
    if not torch.cuda.is_available():
        with pytest.raises(ClearRLError, match="CUDA"):
            load_unified(tmp_path / "aligned", load_in_4bit=True)
    seen = {}

    def from_pretrained(folder, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ComposedUnifiedModel, "from_pretrained", from_pretrained)
    with pytest.raises(RuntimeError, match="stop before loading"):
        load_unified(tmp_path / "aligned", load_in_4bit=True)
    settings = seen["quantization_config"]
    assert settings.load_in_4bit and settings.bnb_4bit_quant_type == "nf4"
    names = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    quantized = {name for name in names if should_convert_module(name, settings.llm_int8_skip_modules)}
    assert quantized and all(name.startswith("vlm.model.language_model.") for name in quantized)


def test_a_4bit_composite_saves_how_to_requantize_its_vlm_only(tiny, tmp_path):
    from transformers import BitsAndBytesConfig
    from transformers.quantizers.quantizers_utils import should_convert_module

    model, processor = tiny
    vlm = model.vlm
    vlm.config.quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    try:  # the bookkeeping of a 4-bit VLM; loading one needs CUDA (tests/test_gpu_recipes.py)
        composite, _ = compose_unified(vlm, processor, model.vae, vae_image_size=model.config.vae_image_size)
    finally:
        del vlm.config.quantization_config
    settings = composite.config.quantization_config
    assert settings["load_in_4bit"] and settings["bnb_4bit_quant_type"] == "nf4"
    skip = settings["llm_int8_skip_modules"]
    names = {name for name, module in composite.named_modules() if isinstance(module, torch.nn.Linear)}
    quantized = {name for name in names if should_convert_module(name, skip)}
    assert quantized and all(name.startswith("vlm.model.language_model.") for name in quantized)
    assert not any(should_convert_module(n, skip) for n in names if "vision_tower" in n or "lm_head" in n)
    save_unified(composite, processor, tmp_path / "q")
    assert "quantization_config" in json.loads((tmp_path / "q" / "config.json").read_text())
    if not torch.cuda.is_available():
        with pytest.raises(ClearRLError, match="4-bit base; loading it needs a CUDA GPU"):
            load_unified(tmp_path / "q")


def test_model_is_a_registered_transformers_model(tiny, tmp_path):
    from transformers import AutoModel

    model, processor = tiny
    save_unified(model, processor, tmp_path / "m")
    assert isinstance(AutoModel.from_pretrained(tmp_path / "m"), ComposedUnifiedModel)


def test_decoding_for_rewards_keeps_protocol_tags_and_drops_placeholders(tiny):
    model, processor = tiny
    text = (
        "<think>dark</think><image_restore>" + "<|restored_pad|>" * 3 + "<think>ok</think><answer>B</answer>"
    )
    ids = processor.tokenizer(text, add_special_tokens=False).input_ids
    decoded = processor.tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "<think>dark</think><image_restore><think>ok</think><answer>B</answer>"


def test_forward_reruns_denoising_steps_with_its_own_context(tiny):
    model, processor = tiny
    batch, vae_pixels = make_prompts(processor, ["What color is it?", "Count them."])
    input_ids, mask = _with_restoration(model, processor, batch)
    latents = torch.randn(2, *model.latent_shape)
    degraded = model.encode_latents(vae_pixels)
    flow_latents, flow_t = torch.randn(2, 3, *model.latent_shape), torch.rand(2, 3)
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=batch.pixel_values,
            restored_latents=latents,
            flow_latents=flow_latents,
            flow_timesteps=flow_t,
            flow_rows=torch.tensor([True, False]),
            degraded_latents=degraded,
        )
        context = model.restoration_context(input_ids, mask, out.hidden_states[-1], degraded)
        alone = model.velocity(flow_latents[0], flow_t[0], context.select(torch.zeros(3, dtype=torch.long)))
    torch.testing.assert_close(out.flow_velocity[0], alone)
    assert not bool(out.flow_velocity[1].any())  # rows outside flow_rows are not run
