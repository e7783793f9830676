"""Official-layout folders: load BAGEL / CLEAR checkpoints, and write the same layout back.

A folder holds `llm_config.json`, `vit_config.json`, the weights (`ema.safetensors`, or
CLEAR-RL's `model.safetensors`), `ae.safetensors` (BFL names) and the tokenizer files. Every
checkpoint key must match a module here, with its shape: the two sin-cos tables are recomputed
(their stored copies are skipped) and the ViT's extra last layer (`encoder.layers.26.*` in the
official file, if present) is dropped; anything else missing or unexpected is an error naming it.

Models are built on the meta device and the tensors assigned as they are read, so loading holds
one copy of the weights. `quantization="nf4"` turns the transformer Linears into bitsandbytes
4-bit layers on CUDA (QLoRA-style); without CUDA it is an error, and tests skip it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from clear_rl.errors import ClearRLError
from clear_rl.io.atomic import atomic_path
from clear_rl.models.bagel import vae as vae_io
from clear_rl.models.bagel.config import AE_NAME, WEIGHT_NAMES, BagelConfig, find_weights_file
from clear_rl.models.bagel.modeling import BagelModel

TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
RECOMPUTED_KEYS = ("vit_pos_embed.pos_embed", "latent_pos_embed.pos_embed")
# Linears that stay in bf16 under 4-bit loading: the heads and the small latent/patch interfaces.
NOT_QUANTIZED = ("language_model.lm_head", "patch_embedding", "time_embedder", "vae2llm", "llm2vae")


def dropped_prefix(config: BagelConfig) -> str | None:
    """Key prefix of the ViT layer the official loaders drop (None when none is dropped)."""
    if not config.vit_drop_last_layer:
        return None
    return f"vit_model.vision_model.encoder.layers.{config.vit_num_layers}."


def read_checkpoint(
    file: Path, config: BagelConfig, dtype: torch.dtype | None, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors the model takes (sin-cos tables and the dropped layer left out)."""
    drop = dropped_prefix(config)
    out = {}
    with safe_open(str(file), framework="pt", device=str(device)) as handle:
        for key in handle.keys():
            if key in RECOMPUTED_KEYS or (drop and key.startswith(drop)):
                continue
            tensor = handle.get_tensor(key)
            out[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return out


def check_keys(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], file: Path) -> None:
    """Every expected key present with its shape, nothing unexpected; else an error naming them."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} of the wrong shape (e.g. {k}: {tuple(found[k].shape)}, model {tuple(expected[k].shape)})"
        )
    if problems:
        raise ClearRLError(
            f"{file} does not match the BAGEL model its JSON files describe: " + "; ".join(problems)
        )


def load_bagel(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    vae_dtype: torch.dtype | None = None,
    quantization: str | None = None,
    weights_name: str | None = None,
    **config_overrides,
) -> BagelModel:
    """Load a BAGEL folder (official layout) as a `BagelModel` in `dtype` on `device`.

    `weights_name` picks the weights file (default: `ema.safetensors`, else `model.safetensors`);
    `vae_dtype` defaults to `dtype`; `quantization="nf4"` loads the transformer Linears in 4-bit on
    CUDA (bitsandbytes; `device` must then be a CUDA device); `config_overrides` set `BagelConfig`
    fields that no file carries (e.g. `vae_encode="sample"`).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ClearRLError(f"BAGEL folder {folder} does not exist")
    if quantization not in (None, "nf4"):
        raise ClearRLError(f"quantization must be None or 'nf4', got {quantization!r}")
    config = BagelConfig.from_folder(folder, weights_name, **config_overrides)
    with torch.device("meta"):
        model = BagelModel(config)
    load_device = "cpu" if quantization else device
    file = find_weights_file(folder, weights_name)
    state = read_checkpoint(file, config, dtype, load_device)
    check_keys(model.state_dict(), state, file)
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_buffers(load_device)
    ae_file = folder / AE_NAME
    if not ae_file.is_file():
        raise ClearRLError(f"{ae_file} not found: a BAGEL folder holds the VAE in {AE_NAME}")
    vae_state = vae_io.from_bfl_state_dict(read_plain(ae_file, vae_dtype or dtype, load_device), config.vae)
    check_keys(model.vae.state_dict(), vae_state, ae_file)
    model.vae.load_state_dict(vae_state, strict=True, assign=True)
    model.name_or_path = str(folder)
    model.eval()
    if quantization == "nf4":
        quantize_4bit(model, device=device, compute_dtype=dtype)
    return model


def read_plain(file: Path, dtype: torch.dtype | None, device: torch.device | str) -> dict[str, torch.Tensor]:
    with safe_open(str(file), framework="pt", device=str(device)) as handle:
        return {
            k: (t.to(dtype) if dtype is not None and t.is_floating_point() else t)
            for k in handle.keys()
            for t in (handle.get_tensor(k),)
        }


def checkpoint_state_dict(model: BagelModel, state: dict | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the official weights file: the state dict (`state`, when gathered elsewhere,
    e.g. from a sharded run's ranks) plus the two sin-cos tables."""
    state = dict(model.state_dict() if state is None else state)
    dtype = model.dtype
    state["vit_pos_embed.pos_embed"] = model.vit_pos_embed.pos_embed.to(dtype)
    state["latent_pos_embed.pos_embed"] = model.latent_pos_embed.pos_embed.to(dtype)
    return state


def save_bagel(
    model: BagelModel,
    path: str | os.PathLike,
    weights_name: str = "ema.safetensors",
    tokenizer=None,
) -> None:
    """Write `model` as an official-layout folder (atomically: a complete folder or none).

    The weights file holds every official key (the sin-cos tables too, as BAGEL's does), the VAE
    goes to `ae.safetensors` under BFL names, and the tokenizer files come from `tokenizer`
    (`save_pretrained`) or, without one, are copied from the folder the model was loaded from.
    """
    if weights_name not in WEIGHT_NAMES:
        raise ClearRLError(f"weights_name must be one of {WEIGHT_NAMES}, got {weights_name!r}")
    if any(type(m).__name__ == "Linear4bit" for m in model.modules()):
        raise ClearRLError("a 4-bit model cannot be saved in the official layout: load it in bf16 to save")
    with atomic_path(path, is_dir=True) as tmp:
        write_bagel_files(model, tmp, weights_name, tokenizer)


def write_bagel_files(
    model: BagelModel,
    folder: str | os.PathLike,
    weights_name: str = "ema.safetensors",
    tokenizer=None,
    state: dict | None = None,
) -> None:
    """The official layout's files, each written atomically into the existing `folder` (a training
    run's output folder keeps its other files); see `save_bagel`. `state`: `model`'s whole state
    dict where its parameters are sharded (the VAE, never sharded, is read off the model)."""
    folder = Path(folder)
    source = Path(getattr(model, "name_or_path", "") or "")
    for name, text in model.config.json_files().items():
        with atomic_path(folder / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in checkpoint_state_dict(model, state).items()}
    with atomic_path(folder / weights_name) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    ae = vae_io.to_bfl_state_dict(model.vae.state_dict(), model.config.vae)
    with atomic_path(folder / AE_NAME) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in ae.items()}, str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    elif source.is_dir() and source.resolve() != folder.resolve():
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)


def load_bagel_tokenizer(path: str | os.PathLike):
    """The folder's tokenizer (local files only)."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise ClearRLError(f"no tokenizer files in {folder} (tokenizer.json or vocab.json + merges.txt)")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def quantizable(name: str) -> bool:
    return not any(part in name for part in NOT_QUANTIZED)


def quantize_4bit(
    model: BagelModel,
    device: torch.device | str = "cuda",
    compute_dtype: torch.dtype = torch.bfloat16,
    double_quant: bool = True,
) -> BagelModel:
    """Replace the transformer Linears (both experts, ViT, connector) by bitsandbytes NF4 layers.

    Quantisation happens as the weights move to the CUDA device (bitsandbytes' `Params4bit`).
    """
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        raise ClearRLError("4-bit (nf4) loading needs a CUDA device and bitsandbytes")
    import bitsandbytes as bnb

    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not nn.Linear or not quantizable(name):
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=double_quant,
                quant_type="nf4",
                device="meta",
            )
            layer.weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, compress_statistics=double_quant, quant_type="nf4"
            )
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, child_name, layer)
    return model.to(device)
