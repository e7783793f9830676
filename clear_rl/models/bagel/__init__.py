"""`bagel`: BAGEL-7B-MoT (the paper's backbone) in plain PyTorch, loading official folders.

    config.py    settings: the two JSON files + the official loaders' hard-coded values
    mot.py       the Mixture-of-Transformers LLM (both experts, shared attention, KV cache)
    vision.py    SigLIP over NaViT-packed patches + the connector
    latents.py   latent patchify, time embedder, sin-cos position tables
    vae.py       diffusers AutoencoderKL + BFL name conversion both ways
    modeling.py  BagelModel: segments -> packed sequence -> MoT -> text logits / velocities
    io.py        load_bagel / save_bagel in the official layout, 4-bit loading
    tiny.py      a tiny random BAGEL folder and tokenizer, built in code
    unified.py   BagelUnifiedModel: BAGEL behind the backbone protocol (models/backbone.py), loading
    decoding.py  its interleaved-generation decoder (packed KV cache, latent-block bridge)
    presets.py   inference presets (clear-release, bagel-upstream): image views, CFG, steps, sources
    processing.py  BAGEL's prompt framing and image views behind the processor interface
    training.py  padded id batches -> packed training segments (noised block, bridge block, logits map)
    trainable.py the training forward and the trainers' protocol (models/backbone.py TrainableBackbone)
    backbone.py  its declaration in the backbone registry (models/registry.py): light, no torch
    memory.py    parameter counts and memory estimates at real size, on the meta device

Names are imported on first use (PEP 562), so importing the package stays light.
"""

from __future__ import annotations

from clear_rl.lazy import lazy_names

_WHERE = {
    "BagelConfig": "config",
    "flux_vae_config": "config",
    "BagelCache": "mot",
    "Routing": "mot",
    "BagelModel": "modeling",
    "BagelOutput": "modeling",
    "LatentSegment": "modeling",
    "PackedSequence": "modeling",
    "TextSegment": "modeling",
    "VitSegment": "modeling",
    "load_bagel": "io",
    "load_bagel_tokenizer": "io",
    "save_bagel": "io",
    "quantize_4bit": "io",
    "TinyBagelSizes": "tiny",
    "build_tiny_bagel": "tiny",
    "build_tiny_tokenizer": "tiny",
    "memory_report": "memory",
    "BagelDecoder": "decoding",
    "BagelRestorationContext": "decoding",
    "BagelProcessor": "processing",
    "BagelPreset": "presets",
    "ImageTransformSpec": "presets",
    "PRESETS": "presets",
    "get_preset": "presets",
    "BagelUnifiedModel": "unified",
    "is_bagel_folder": "unified",
    "load_bagel_unified": "unified",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_names(__name__, _WHERE)
