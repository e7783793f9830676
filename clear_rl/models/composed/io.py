"""Loading a saved composed model: one folder holds the VLM, VAE, head and bridge, and the processor.

A full model folder is `config.json` (model_type `clear_composed`) + `model.safetensors` (or a sharded
index) + the processor's files; `models/io.py` reads adapter folders on top of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoProcessor, ProcessorMixin

from clear_rl.errors import ClearRLError
from clear_rl.models.assemble import COMPOSITE_4BIT_SKIP, nf4_quantization
from clear_rl.models.chat import ATTRIBUTE, saved_chat_settings
from clear_rl.models.composed.modeling import ComposedUnifiedConfig, ComposedUnifiedModel
from clear_rl.models.notices import release_4bit_notices
from clear_rl.models.weights import WeightsError


def load_composed(
    folder: Path,
    dtype="auto",
    load_in_4bit: bool = False,
    preset: str | None = None,
    tags: str | None = None,
) -> tuple[ComposedUnifiedModel, ProcessorMixin]:
    """A full composed model folder as (model, processor); `load_in_4bit` quantizes the VLM (CUDA)."""
    _no_preset(folder, preset, tags)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ClearRLError(f"{folder} holds no config.json: not a saved clear-rl model")
    saved = json.loads(config_file.read_text())
    model_type = saved.get("model_type")
    if model_type != ComposedUnifiedConfig.model_type:
        raise ClearRLError(
            f"{folder} holds a '{model_type}' model, not a clear-rl unified model; "
            "compose one first (clear_rl.models.compose_from_pretrained)"
        )
    if "quantization_config" in saved and not torch.cuda.is_available():
        raise ClearRLError(f"{folder} holds a model with a 4-bit base; loading it needs a CUDA GPU")
    kwargs = {}
    if "quantization_config" in saved:
        release_4bit_notices()
    elif load_in_4bit:  # a full-precision folder (an aligned model, say) quantized as it loads
        kwargs["quantization_config"] = nf4_quantization(COMPOSITE_4BIT_SKIP)
    model, info = ComposedUnifiedModel.from_pretrained(
        folder, dtype=dtype, local_files_only=True, output_loading_info=True, **kwargs
    )
    if not kwargs and "quantization_config" not in saved:  # a 4-bit load's key report: unchecked (CUDA only)
        _check_loaded(folder, info)
    _one_dtype_per_part(model)
    _keep_used_conversions(model)
    # Adapters trained on it name this folder as their base: absolute, so they load from any cwd.
    model.name_or_path = model.config._name_or_path = str(folder.resolve())
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    setattr(model, ATTRIBUTE, saved_chat_settings(folder))
    return model, processor


def _keep_used_conversions(model: ComposedUnifiedModel) -> None:
    """Keep only the key renamings loading applied, so that saving reverses exactly those.

    transformers' ZeRO-3 loading path (`zero.Init`) keeps every renaming it knows for the VLM,
    used or not, where its normal path keeps the used ones; reversed on save, the unused ones
    renamed keys a second time (`vlm.language_model.model.model.*`), and the folder did not load.
    """
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if c.was_used()]


def _no_preset(folder: Path, preset: str | None, tags: str | None = None) -> None:
    if preset is not None:
        raise ClearRLError(
            f"preset {preset!r} is an inference preset of BAGEL-family folders; {folder} holds a composed "
            "clear-rl model, which has none: leave the preset out"
        )
    if tags not in (None, "tokens"):
        raise ClearRLError(
            f"tags {tags!r}: {folder} holds a composed clear-rl model, which writes the protocol tags as "
            "single tokens: leave tags out"
        )


def _check_loaded(folder: Path, info: dict) -> None:
    """The weights file fills the model its config.json describes: from_pretrained would leave a
    weight it lacks randomly initialised with a warning (a file saved from another model)."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(entry[0]) for entry in info.get("mismatched_keys") or []]
    if missing or mismatched:
        problems = [f"{len(missing)} weights missing (e.g. {missing[:3]})"] if missing else []
        problems += [f"{len(mismatched)} of another shape (e.g. {mismatched[:3]})"] if mismatched else []
        raise WeightsError(
            f"{folder}: the weights do not fit the model its config.json describes: {'; '.join(problems)}; "
            "they were saved from another model"
        )


def _one_dtype_per_part(model: ComposedUnifiedModel) -> None:
    """Cast a diffusers part whose parameters load in mixed precision to float32.

    Loading a 4-bit composite (whose non-quantized parts peft's k-bit preparation had upcast
    before saving) can leave e.g. a VAE convolution with a float32 weight and a bf16 bias: hidden
    under a Trainer's autocast, an error in any pass outside it (GRPO rollouts, evaluation).
    """
    for part in (model.vae, model.restoration_head, model.latent_bridge):
        dtypes = {p.dtype for p in part.parameters() if p.is_floating_point()}
        if len(dtypes) > 1:
            part.to(torch.float32)
