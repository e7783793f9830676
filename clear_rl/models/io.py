"""One folder holds a whole unified model: weights and config of every part, plus the processor.

A folder is either a full model (`config.json` with model_type `clear_composed`,
`model.safetensors`), a peft adapter folder (`adapter_config.json`) whose
`base_model_name_or_path` is a full model folder (a BAGEL one too: its processor is then the
base's), or an official-layout BAGEL / CLEAR folder
(`llm_config.json`, `vit_config.json`, `ema.safetensors` or `model.safetensors`, `ae.safetensors`),
which loads as the `bagel` backbone (`backbone="auto"` tells them apart). Both load with `load_unified`, which also reads
the chat the model was trained with (the system prompt in the `clear_rl_recipe.yaml` its training
stage saved beside it, see `models.chat`) into `model.clear_rl_chat`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoProcessor, ProcessorMixin

from clear_rl.errors import ClearRLError
from clear_rl.io.atomic import atomic_path
from clear_rl.models.assemble import COMPOSITE_4BIT_SKIP, nf4_quantization
from clear_rl.models.chat import ATTRIBUTE, chat_settings_of, saved_chat_settings, saved_tags
from clear_rl.models.composed import ComposedUnifiedConfig, ComposedUnifiedModel
from clear_rl.models.notices import release_4bit_notices
from clear_rl.models.settings import check_backbone
from clear_rl.models.weights import WeightsError, check_model_folder


def save_unified(
    model: ComposedUnifiedModel | PeftModel, processor: ProcessorMixin, path: str | os.PathLike
) -> None:
    """Save model and processor into `path`, atomically (a crash leaves any previous save intact)."""
    with atomic_path(path, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether `path` holds a whole model `load_unified` reads (not adapters): a clear-rl composed
    model (`config.json`) or an official-layout BAGEL folder."""
    from clear_rl.models.bagel.unified import is_bagel_folder

    folder = Path(path)
    return (folder / "config.json").is_file() or is_bagel_folder(folder)


def load_unified(
    path: str | os.PathLike,
    dtype="auto",
    is_trainable: bool = False,
    backbone: str = "auto",
    load_in_4bit: bool = False,
    preset: str | None = None,
    tags: str | None = None,
) -> tuple[ComposedUnifiedModel | PeftModel, ProcessorMixin]:
    """Load a unified model and its processor from a local folder (full model, LoRA adapters, or
    BAGEL's official layout); `model.clear_rl_chat` holds the system prompt and chat settings it was
    trained with. `backbone` ("auto", "composed", "bagel") forces how the folder is read;
    `load_in_4bit` loads the base's transformer Linears in NF4 (CUDA, bitsandbytes): BAGEL's, or a
    composed model's VLM (its vision side, VAE, head and bridge stay whole); a folder saved 4-bit
    loads 4-bit either way. `preset` names a BAGEL-family model's inference preset
    (models/bagel/presets.py; None: clear-release); `tags` ("text" or "tokens") how a BAGEL-family
    model writes the protocol tags (None: what the folder records, else the preset's; a composed
    model speaks tokens)."""
    folder = Path(path)
    check_model_folder(folder, check_backbone(backbone))  # missing, cut short or foreign weights
    from clear_rl.models.bagel.unified import is_bagel_folder, load_bagel_unified

    bagel = is_bagel_folder(folder)
    if check_backbone(backbone) == "bagel" or (backbone == "auto" and bagel):
        return load_bagel_unified(
            folder, dtype=dtype, quantization="nf4" if load_in_4bit else None, preset=preset, tags=tags
        )
    if bagel and not (folder / "config.json").exists():
        raise ClearRLError(
            f"{folder} holds an official-layout BAGEL model: load it with backbone 'bagel' or 'auto'"
        )
    adapter_config = folder / "adapter_config.json"
    if adapter_config.exists():
        base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        base, base_processor = load_unified(
            base_path,
            dtype=dtype,
            load_in_4bit=load_in_4bit,
            preset=preset,
            tags=tags or saved_tags(folder)[0],
        )
        model = PeftModel.from_pretrained(base, folder, is_trainable=is_trainable)
        if is_bagel_folder(base_path):  # BAGEL's processor is its base folder's (the tokenizer alone)
            setattr(model, ATTRIBUTE, saved_chat_settings(folder, chat_settings_of(base)))
            return model, base_processor
    else:
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
        if (
            not kwargs and "quantization_config" not in saved
        ):  # a 4-bit load's key report: unchecked (CUDA only)
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
