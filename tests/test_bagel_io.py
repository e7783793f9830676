"""BAGEL folders in the official layout: load -> save -> load, what loading tolerates and refuses,
bf16 and 4-bit loading, and the VAE's BFL names both ways."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from clear_rl.errors import ClearRLError
from clear_rl.models.bagel import (
    BagelModel,
    LatentSegment,
    TextSegment,
    VitSegment,
    build_tiny_bagel,
    load_bagel,
    load_bagel_tokenizer,
    save_bagel,
)
from clear_rl.models.bagel.config import BagelConfig, flux_vae_config, vae_config_from_shapes
from clear_rl.models.bagel.io import RECOMPUTED_KEYS
from clear_rl.models.bagel.vae import from_bfl_state_dict, to_bfl_state_dict

LAYOUT = {
    "llm_config.json",
    "vit_config.json",
    "ema.safetensors",
    "ae.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bagel") / "tiny-bagel"
    build_tiny_bagel(path, seed=0)
    return path


def samples(tokenizer) -> list:
    text = torch.tensor(tokenizer("<|im_start|>What is shown?<|im_end|>")["input_ids"])
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 16, 16, generator=generator) * 2 - 1
    x_t = torch.randn(4, 8, 8, generator=generator)
    return [
        [TextSegment(text), VitSegment(pixels), TextSegment(text[:4]), LatentSegment(x_t, 0.6, noised=True)]
    ]


def outputs(model: BagelModel, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(samples(tokenizer))
        images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        latents = model.encode_latents(images.to(model.dtype))
        return out.last_hidden_state, model.latent_velocities(out)[0], model.decode_latents(latents)


def file_keys(path) -> set[str]:
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def test_the_tiny_folder_has_the_official_layout(folder):
    assert {p.name for p in folder.iterdir()} == LAYOUT
    assert json.loads((folder / "vit_config.json").read_text())["num_hidden_layers"] == 3  # one dropped
    # the weights file carries the sin-cos tables, as the official one does
    assert set(RECOMPUTED_KEYS) <= file_keys(folder / "ema.safetensors")
    assert "encoder.mid.attn_1.q.weight" in file_keys(folder / "ae.safetensors")
    tokenizer = load_bagel_tokenizer(folder)
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1


def test_load_save_load_round_trip_is_identical(folder, tmp_path):
    model = load_bagel(folder, dtype=torch.float32)
    tokenizer = load_bagel_tokenizer(folder)
    save_bagel(model, tmp_path / "again")
    again = load_bagel(tmp_path / "again", dtype=torch.float32)
    assert {p.name for p in (tmp_path / "again").iterdir()} == LAYOUT  # tokenizer files copied along
    first, second = model.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    vae_first, vae_second = model.vae.state_dict(), again.vae.state_dict()
    assert all(torch.equal(vae_first[k], vae_second[k]) for k in vae_first)
    for a, b in zip(outputs(model, tokenizer), outputs(again, tokenizer)):
        assert torch.equal(a, b)
    # both files keep the official key sets, and the JSON files are written back as read
    for name in ("ema.safetensors", "ae.safetensors"):
        assert file_keys(folder / name) == file_keys(tmp_path / "again" / name)
    for name in ("llm_config.json", "vit_config.json"):
        assert json.loads((folder / name).read_text()) == json.loads((tmp_path / "again" / name).read_text())


def test_loading_reproduces_the_built_model(folder, tmp_path):
    built, tokenizer = build_tiny_bagel(tmp_path / "same", seed=0)
    loaded = load_bagel(folder, dtype=torch.float32)
    for a, b in zip(outputs(built, tokenizer), outputs(loaded, tokenizer)):
        assert torch.equal(a, b)


def test_bf16_loading(folder, tmp_path):
    model = load_bagel(folder)  # bf16 by default
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.parameters()} == {torch.bfloat16}
    reference = load_bagel(folder, dtype=torch.float32)
    tokenizer = load_bagel_tokenizer(folder)
    hidden, velocity, _ = outputs(model, tokenizer)
    ref_hidden, ref_velocity, _ = outputs(reference, tokenizer)
    assert hidden.dtype == torch.bfloat16
    assert (hidden.float() - ref_hidden).abs().max() < 0.1 * ref_hidden.abs().max()
    assert (velocity.float() - ref_velocity).abs().max() < 0.1 * ref_velocity.abs().max()
    # saved as loaded: a bf16 file (as the official one is), read back bit for bit
    save_bagel(model, tmp_path / "bf16")
    state = load_file(tmp_path / "bf16" / "ema.safetensors")
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    again = load_bagel(tmp_path / "bf16")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert torch.equal(outputs(again, tokenizer)[0], hidden)


def test_clear_rl_model_safetensors_and_what_loading_tolerates(folder, tmp_path):
    """CLEAR's GRPO saves `model.safetensors`; an official file may carry the ViT's 27th layer
    (dropped) and the sin-cos tables (recomputed); nothing else may be extra or missing."""
    copy = tmp_path / "grpo"
    shutil.copytree(folder, copy)
    state = load_file(copy / "ema.safetensors")
    (copy / "ema.safetensors").unlink()
    extra = {
        k.replace(".layers.0.", ".layers.2."): v.clone()
        for k, v in state.items()
        if "vision_model.encoder.layers.0." in k
    }
    save_file({**state, **extra}, str(copy / "model.safetensors"))
    model = load_bagel(copy, dtype=torch.float32)
    reference = load_bagel(folder, dtype=torch.float32)
    tokenizer = load_bagel_tokenizer(folder)
    assert torch.equal(outputs(model, tokenizer)[0], outputs(reference, tokenizer)[0])

    save_file(
        {**state, "connector.fc3.weight": state["connector.fc1.weight"].clone()},
        str(copy / "model.safetensors"),
    )
    with pytest.raises(ClearRLError, match="unexpected.*connector.fc3.weight"):
        load_bagel(copy)
    del state["llm2vae.bias"]
    save_file(state, str(copy / "model.safetensors"))
    with pytest.raises(ClearRLError, match="missing.*llm2vae.bias"):
        load_bagel(copy)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ClearRLError, match="does not exist"):
        load_bagel(tmp_path / "nowhere")
    with pytest.raises(ClearRLError, match="llm_config.json not found"):
        load_bagel(tmp_path)


def test_4bit_without_cuda_is_a_clean_error(folder):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the 4-bit path itself is tested below")
    with pytest.raises(ClearRLError, match="CUDA"):
        load_bagel(folder, quantization="nf4", device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes 4-bit needs CUDA")
def test_4bit_loading_on_cuda(folder):
    """Every transformer Linear (both experts, ViT, connector) in NF4, the heads in bf16; the
    4-bit model computes what a bf16 model with the dequantised weights computes."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    model = load_bagel(folder, quantization="nf4", device="cuda")
    layer = model.language_model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj_moe_gen, bnb.nn.Linear4bit)
    assert isinstance(layer.mlp.down_proj, bnb.nn.Linear4bit)
    assert isinstance(model.connector.fc1, bnb.nn.Linear4bit)
    assert type(model.language_model.lm_head) is torch.nn.Linear
    assert type(model.llm2vae) is torch.nn.Linear
    reference = load_bagel(folder, device="cuda")
    modules = dict(reference.named_modules())
    quantized = [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 14 + 2 * 6 + 2
    with torch.no_grad():
        for name, module in quantized:
            weight = dequantize_4bit(module.weight.data, module.weight.quant_state)
            modules[name].weight.copy_(weight.to(torch.bfloat16))
    tokenizer = load_bagel_tokenizer(folder)
    hidden, ref = outputs(model, tokenizer)[0].float(), outputs(reference, tokenizer)[0].float()
    assert (hidden - ref).abs().max() <= 0.02 * ref.abs().max()


# -- the VAE's names -----------------------------------------------------------------------------
def tiny_vae_config() -> dict:
    config = flux_vae_config()
    config.update(
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[8, 16, 16],
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=4,
    )
    return config


def test_vae_bfl_names_round_trip_exactly():
    """diffusers weights -> BFL names (ours) -> diffusers (diffusers' own converter): identical
    tensors, and a VAE loaded from the BFL names gives identical outputs."""
    torch.manual_seed(0)
    config = tiny_vae_config()
    vae = AutoencoderKL(**config).eval()
    bfl = to_bfl_state_dict(vae.state_dict(), config)
    assert "encoder.down.1.block.0.nin_shortcut.weight" in bfl
    assert "decoder.up.0.block.2.conv2.weight" in bfl  # up blocks are numbered from the bottom
    assert bfl["decoder.mid.attn_1.proj_out.weight"].shape == (16, 16, 1, 1)  # 1x1 convolutions
    assert "encoder.norm_out.weight" in bfl and not any("quant_conv" in k for k in bfl)
    back = from_bfl_state_dict(bfl, config)
    original = vae.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    loaded = AutoencoderKL(**config).eval()
    loaded.load_state_dict(back, strict=True)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x).sample, vae(x).sample)


def test_flux_vae_settings_are_read_off_the_file_shapes():
    """FLUX's BFL-named tensors (shapes only, on the meta device) give exactly FLUX's settings."""
    config = flux_vae_config()
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    shapes = {k: tuple(v.shape) for k, v in to_bfl_state_dict(vae.state_dict(), config).items()}
    assert vae_config_from_shapes(shapes) == config
    assert BagelConfig().vae == config
