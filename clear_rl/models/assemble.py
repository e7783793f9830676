"""Assemble a composed unified model from parts: a VLM + its processor, a VAE, and new head and bridge.

`compose_unified` works on objects (the tiny model uses it); `compose_from_pretrained` loads the
VLM and the VAE from local folders first (never from a hub), optionally with a 4-bit VLM.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import AutoencoderKL, PixArtTransformer2DModel
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from clear_rl.errors import ClearRLError
from clear_rl.models.bridge import LatentBridge
from clear_rl.models.composed import ComposedUnifiedConfig, ComposedUnifiedModel
from clear_rl.models.notices import release_4bit_notices
from clear_rl.models.tokens import ClearTokenIds, add_clear_tokens

# Left in bf16 by a 4-bit load: the vision side (small, and sensitive) and the output head.
# transformers 5 matches these as regexes from the start of a module's full name.
VLM_4BIT_SKIP = [r".*vision_tower", r".*visual", r".*multi_modal_projector", r".*lm_head"]
# The composite's own parts never quantize: the VAE, and the head and bridge that train in full.
COMPOSITE_4BIT_SKIP = [*VLM_4BIT_SKIP, "vae", "restoration_head", "latent_bridge"]

# A small PixArt-style DiT: 12 layers of width 1152 (PixArt-alpha's width, half its depth).
DEFAULT_HEAD: dict[str, Any] = {"num_layers": 12, "num_attention_heads": 16, "attention_head_dim": 72}
# A bridge that mixes tokens across the grid: an LLM that never read VAE latents reads ViT tokens,
# which carry image-wide context a per-patch map cannot reproduce (see models/bridge.py).
DEFAULT_BRIDGE: dict[str, Any] = {"mixer_layers": 2}


def compose_unified(
    vlm: PreTrainedModel,
    processor: ProcessorMixin,
    vae: AutoencoderKL,
    vae_image_size: int = 512,
    head: dict[str, Any] | None = None,
    bridge: dict[str, Any] | None = None,
    flow_shift: float = 3.0,
    num_inference_steps: int = 30,
    flow_source: str = "noise",
) -> tuple[ComposedUnifiedModel, ProcessorMixin]:
    """Add the CLEAR tokens, resize the VLM's embeddings, and attach a new head and bridge.

    `head` overrides `PixArtTransformer2DModel` arguments (depth, width); its input/output
    channels, conditioning width and sample size follow from the VLM and the VAE.
    """
    tokenizer = processor.tokenizer
    if add_clear_tokens(tokenizer):
        vlm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    token_ids = ClearTokenIds.from_tokenizer(tokenizer)
    hidden_size = vlm.config.get_text_config().hidden_size
    channels = vae.config.latent_channels
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if vae_image_size % (2 * scale):
        raise ClearRLError(f"vae_image_size {vae_image_size} must be a multiple of {2 * scale} for this VAE")
    head_kwargs = {**DEFAULT_HEAD, **(head or {})}
    inner = head_kwargs["num_attention_heads"] * head_kwargs["attention_head_dim"]
    head_kwargs.update(
        in_channels=2 * channels,  # noisy latent + degraded image's latent
        out_channels=channels,
        caption_channels=hidden_size,  # LLM hidden states, projected by PixArt's caption projection
        cross_attention_dim=inner,
        sample_size=vae_image_size // scale,
        patch_size=2,
        use_additional_conditions=False,
    )
    restoration_head = PixArtTransformer2DModel(**head_kwargs)
    bridge_kwargs = {**DEFAULT_BRIDGE, **(bridge or {})}
    latent_bridge = LatentBridge(latent_channels=channels, hidden_size=hidden_size, **bridge_kwargs)
    dtype = vlm.get_input_embeddings().weight.dtype  # new parts follow the LLM's precision
    if dtype != torch.float32:
        restoration_head.to(dtype)
        latent_bridge.to(dtype)
    config = ComposedUnifiedConfig(
        vlm_config=vlm.config,
        vae_config=dict(vae.config),
        head_config=dict(restoration_head.config),
        bridge_config=dict(latent_bridge.config),
        think_start_token_id=token_ids.think_start,
        think_end_token_id=token_ids.think_end,
        answer_start_token_id=token_ids.answer_start,
        answer_end_token_id=token_ids.answer_end,
        image_restore_token_id=token_ids.image_restore,
        restored_pad_token_id=token_ids.restored_pad,
        vae_image_size=vae_image_size,
        flow_shift=flow_shift,
        num_inference_steps=num_inference_steps,
        flow_source=flow_source,
        attn_implementation=vlm.config._attn_implementation,
    )
    quantization = getattr(vlm.config, "quantization_config", None)
    if quantization is not None:
        config.quantization_config = composite_quantization(quantization)
    model = ComposedUnifiedModel(
        config, vlm=vlm, vae=vae, restoration_head=restoration_head, latent_bridge=latent_bridge
    )
    return model, processor


def composite_quantization(vlm_quantization: Any) -> dict[str, Any]:
    """The quantization config a composite with a 4-bit VLM saves, so that loading it re-quantizes.

    `save_pretrained` writes the packed 4-bit weights; without a `quantization_config` on the
    composite's own config, `from_pretrained` would build plain Linear layers and silently
    re-initialise them (a size mismatch per weight). Its skip list keeps the non-VLM parts whole.
    """
    settings = vlm_quantization if isinstance(vlm_quantization, dict) else vlm_quantization.to_dict()
    skip = set(settings.get("llm_int8_skip_modules") or []) | set(COMPOSITE_4BIT_SKIP)
    return {**settings, "llm_int8_skip_modules": sorted(skip)}


def nf4_quantization(skip: list[str]):
    """The NF4 settings of a 4-bit load (double quantization, bf16 compute), `skip` left whole.

    Needs a CUDA GPU: bitsandbytes' 4-bit training kernels; refused with a clear error elsewhere.
    """
    if not torch.cuda.is_available():
        raise ClearRLError("load_in_4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available")
    from transformers import BitsAndBytesConfig

    release_4bit_notices()
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=skip,
    )


def _require_local_dir(path: str | os.PathLike, what: str) -> None:
    if not os.path.isdir(path):
        raise ClearRLError(f"{what} folder not found: {path} (clear-rl loads models from local folders only)")


def load_vlm(
    path: str | os.PathLike, torch_dtype: torch.dtype | str = "auto", load_in_4bit: bool = False
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a VLM and its processor from a local folder, optionally with 4-bit (NF4) weights."""
    _require_local_dir(path, "VLM")
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True}
    if load_in_4bit:
        kwargs["quantization_config"] = nf4_quantization(VLM_4BIT_SKIP)
    vlm = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    return vlm, processor


def load_vae(
    path: str | os.PathLike, subfolder: str | None = None, torch_dtype=torch.float32
) -> AutoencoderKL:
    """Load a diffusers `AutoencoderKL` (e.g. FLUX's 16-channel VAE) from a local folder."""
    _require_local_dir(path, "VAE")
    return AutoencoderKL.from_pretrained(
        path, subfolder=subfolder, torch_dtype=torch_dtype, local_files_only=True
    )


def compose_from_pretrained(
    vlm_path: str | os.PathLike,
    vae_path: str | os.PathLike,
    vae_subfolder: str | None = None,
    load_in_4bit: bool = False,
    torch_dtype: torch.dtype | str = "auto",
    **compose_kwargs: Any,
) -> tuple[ComposedUnifiedModel, ProcessorMixin]:
    """Compose a unified model from a local VLM folder and a local VAE folder."""
    vlm, processor = load_vlm(vlm_path, torch_dtype=torch_dtype, load_in_4bit=load_in_4bit)
    vae = load_vae(vae_path, subfolder=vae_subfolder)
    return compose_unified(vlm, processor, vae, **compose_kwargs)
