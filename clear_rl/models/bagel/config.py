"""BAGEL's settings: what its two JSON files carry, and what every official loader hard-codes.

An official folder holds `llm_config.json` (a Qwen2 config) and `vit_config.json` (a SigLIP vision
config) and nothing else about the model: `config.json` is empty of settings, and BAGEL's own
loaders set `qk_norm`, the MoT layer type, the latent grid, the ViT's dropped last layer and the
FLUX VAE in code. Those are the defaults of `BagelConfig` here, which a caller may override.

The two files are kept as the dictionaries they were read from and written back as such, so a saved
folder stays readable by BAGEL's own code (transformers 5 would write `rope_parameters` where the
official readers look for `rope_theta`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from safetensors import safe_open
from transformers import Qwen2Config, SiglipVisionConfig

from clear_rl.errors import ClearRLError

LLM_CONFIG_NAME = "llm_config.json"
VIT_CONFIG_NAME = "vit_config.json"
WEIGHT_NAMES = ("ema.safetensors", "model.safetensors")
AE_NAME = "ae.safetensors"

# Qwen2.5-7B-Instruct, as BAGEL-7B-MoT's llm_config.json carries it.
OFFICIAL_LLM_JSON: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}
# SigLIP so400m/14 at 980 px (70 x 70 patches), as BAGEL-7B-MoT's vit_config.json carries it.
OFFICIAL_VIT_JSON: dict[str, Any] = {
    "architectures": ["SiglipVisionModel"],
    "attention_dropout": 0.0,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "image_size": 980,
    "intermediate_size": 4304,
    "layer_norm_eps": 1e-06,
    "model_type": "siglip_vision_model",
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 27,
    "patch_size": 14,
}


def flux_vae_config() -> dict[str, Any]:
    """diffusers `AutoencoderKL` settings that reproduce BAGEL's (FLUX's) autoencoder."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
    }


@dataclass
class BagelConfig:
    """All settings of a BAGEL model. The JSON dictionaries are the two files; the rest are the
    official loaders' hard-coded values (defaults here, overridable)."""

    llm_json: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(OFFICIAL_LLM_JSON))
    vit_json: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(OFFICIAL_VIT_JSON))
    vae: dict[str, Any] = field(default_factory=flux_vae_config)
    qk_norm: bool = True
    # The official loaders use all but the last SigLIP layer (26 of 27) and drop its weights.
    vit_drop_last_layer: bool = True
    latent_patch_size: int = 2
    max_latent_size: int = 64  # latent_pos_embed covers max_latent_size**2 patch positions
    # vit_pos_embed and ViT position ids are h * side + w; None: the ViT's own grid side
    # (image_size / patch_size = 70 officially, the value the official loaders hard-code).
    vit_max_num_patch_per_side: int | None = None
    connector_act: str = "gelu_pytorch_tanh"
    timestep_shift: float = 1.0  # training-time shift of sigmoid(randn) timesteps
    timestep_frequency_dim: int = 256
    # How `encode_latents` reads the VAE posterior: BAGEL samples it, clear-rl takes the mode.
    vae_encode: str = "mode"
    # Ids of the sequence markers (Qwen2.5's; a folder's tokenizer.json overrides them).
    im_start_id: int = 151644
    im_end_id: int = 151645
    vision_start_id: int = 151652
    vision_end_id: int = 151653

    def __post_init__(self) -> None:
        if self.vae_encode not in ("mode", "sample"):
            raise ClearRLError(f"BagelConfig.vae_encode must be 'mode' or 'sample', got {self.vae_encode!r}")
        side = self.vit_json["image_size"] // self.vit_json["patch_size"]
        if self.vit_max_num_patch_per_side is None:
            self.vit_max_num_patch_per_side = side
        if self.vit_max_num_patch_per_side > side:
            raise ClearRLError(
                f"vit_max_num_patch_per_side={self.vit_max_num_patch_per_side} exceeds the ViT's "
                f"{side} patches per side (image_size / patch_size): its position table is too short"
            )

    # -- the transformers configs of the leaves --------------------------------------------
    @property
    def llm(self) -> Qwen2Config:
        """The Qwen2 config of the language model (both experts share it)."""
        config = Qwen2Config.from_dict(self.llm_json)
        config._attn_implementation = "sdpa"
        return config

    @property
    def vit(self) -> SiglipVisionConfig:
        """The SigLIP config of the ViT as used: the dropped last layer already taken off."""
        config = SiglipVisionConfig.from_dict(self.vit_json)
        config.num_hidden_layers = self.vit_num_layers
        config._attn_implementation = "sdpa"
        return config

    @property
    def vit_num_layers(self) -> int:
        return self.vit_json["num_hidden_layers"] - int(self.vit_drop_last_layer)

    @property
    def hidden_size(self) -> int:
        return self.llm_json["hidden_size"]

    @property
    def num_layers(self) -> int:
        return self.llm_json["num_hidden_layers"]

    @property
    def head_dim(self) -> int:
        return self.llm_json.get("head_dim") or self.hidden_size // self.llm_json["num_attention_heads"]

    @property
    def latent_channels(self) -> int:
        return self.vae["latent_channels"]

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_downsample(self) -> int:
        """Image pixels per latent token side (VAE downsampling x latent patch)."""
        return self.vae_downsample * self.latent_patch_size

    @property
    def patch_latent_dim(self) -> int:
        return self.latent_patch_size**2 * self.latent_channels

    # -- files ------------------------------------------------------------------------------
    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, weights_name: str | None = None, **overrides: Any
    ) -> BagelConfig:
        """Read an official-layout folder's settings.

        `llm_config.json` and `vit_config.json` give the two transformers; what no file states is
        read off the files' tensor shapes where they show it (the latent grid from the stored
        `latent_pos_embed` table, the VAE's widths and depth from `ae.safetensors`), and the marker
        ids from `tokenizer.json`. `overrides` set any field (e.g. `vae_encode="sample"`).
        """
        folder = Path(path)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ClearRLError(f"unknown BagelConfig field(s) {sorted(unknown)}")
        found: dict[str, Any] = {}
        for name, key in ((LLM_CONFIG_NAME, "llm_json"), (VIT_CONFIG_NAME, "vit_json")):
            file = folder / name
            if not file.is_file():
                raise ClearRLError(
                    f"{file} not found: a BAGEL folder holds {LLM_CONFIG_NAME} and {VIT_CONFIG_NAME} "
                    "(pass the folder of BAGEL-7B-MoT or of a checkpoint saved by clear-rl)"
                )
            try:
                found[key] = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ClearRLError(f"{file} is not valid JSON: {error}") from error
        weights = find_weights_file(folder, weights_name)
        table = tensor_shapes(weights).get("latent_pos_embed.pos_embed")
        if table is not None:
            found["max_latent_size"] = math.isqrt(table[0])
        ae = folder / AE_NAME
        if ae.is_file():
            found["vae"] = vae_config_from_shapes(tensor_shapes(ae))
        found.update(marker_ids_from_tokenizer(folder))
        found.update(overrides)
        return cls(**found)

    def json_files(self) -> dict[str, str]:
        """The two JSON files' names and texts (the other settings have no file, as officially)."""
        return {
            name: json.dumps(data, indent=2) + "\n"
            for name, data in ((LLM_CONFIG_NAME, self.llm_json), (VIT_CONFIG_NAME, self.vit_json))
        }

    def write_json(self, folder: str | os.PathLike) -> None:
        """Write the two JSON files into `folder`."""
        for name, text in self.json_files().items():
            (Path(folder) / name).write_text(text, encoding="utf-8")

    def with_overrides(self, **overrides: Any) -> BagelConfig:
        return replace(self, **overrides)


MARKER_TOKENS = {
    "im_start_id": "<|im_start|>",
    "im_end_id": "<|im_end|>",
    "vision_start_id": "<|vision_start|>",
    "vision_end_id": "<|vision_end|>",
}


def marker_ids_from_tokenizer(folder: Path) -> dict[str, int]:
    """The marker ids that a folder's `tokenizer.json` lists among its added tokens."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return {}
    added = {
        t["content"]: t["id"] for t in json.loads(file.read_text(encoding="utf-8")).get("added_tokens", [])
    }
    return {key: added[token] for key, token in MARKER_TOKENS.items() if token in added}


def find_weights_file(folder: Path, weights_name: str | None = None) -> Path:
    """The weights to load: `weights_name` if given, else `ema.safetensors`, else `model.safetensors`."""
    names = (weights_name,) if weights_name else WEIGHT_NAMES
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ClearRLError(
        f"no {' or '.join(names)} in {folder}: pass the folder of BAGEL-7B-MoT or of a clear-rl "
        "checkpoint (or weights_name= the file to load)"
    )


def tensor_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a safetensors file, from its header (no tensor is read)."""
    with safe_open(str(file), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def vae_config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The `AutoencoderKL` settings of a BFL-named VAE file: FLUX's, with widths, depth and latent
    channels as its tensors show them (FLUX's file gives exactly `flux_vae_config()`)."""
    config = flux_vae_config()
    levels = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down.")})
    if not levels or "decoder.conv_in.weight" not in shapes:
        raise ClearRLError("ae.safetensors does not hold a BFL-named autoencoder (no encoder.down.* keys)")
    widths = [shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] for i in levels]
    depth = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down.0.block.")})
    config.update(
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        block_out_channels=widths,
        layers_per_block=depth,
        latent_channels=shapes["decoder.conv_in.weight"][1],
        in_channels=shapes["encoder.conv_in.weight"][1],
        out_channels=shapes["decoder.conv_out.weight"][0],
    )
    return config
