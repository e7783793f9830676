"""Unified models: the backbone protocol and its implementations (composed, tiny)."""

from clear_rl.models.assemble import compose_from_pretrained, compose_unified
from clear_rl.models.bridge import LatentBridge, patchify_latents
from clear_rl.models.composed import ComposedUnifiedConfig, ComposedUnifiedModel, RestorationContext
from clear_rl.models.tiny import TinyModelConfig, build_tiny_model
from clear_rl.models.tokens import ClearTokenIds

__all__ = [
    "ClearTokenIds",
    "ComposedUnifiedConfig",
    "ComposedUnifiedModel",
    "LatentBridge",
    "RestorationContext",
    "TinyModelConfig",
    "build_tiny_model",
    "compose_from_pretrained",
    "compose_unified",
    "patchify_latents",
]
