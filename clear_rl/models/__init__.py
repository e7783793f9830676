"""Unified models: the backbone protocol and its implementations (composed, tiny).

The names below are imported on first use (PEP 562), so that importing a light submodule such
as `clear_rl.models.settings` (which the recipe checks use) does not pull in torch, diffusers
and transformers.
"""

from __future__ import annotations

from clear_rl.lazy import lazy_names

_WHERE = {
    "compose_from_pretrained": "assemble",
    "compose_unified": "assemble",
    "LatentBridge": "bridge",
    "patchify_latents": "bridge",
    "ComposedUnifiedConfig": "composed.modeling",
    "ComposedUnifiedModel": "composed.modeling",
    "RestorationContext": "composed.context",
    "TinyModelConfig": "tiny",
    "build_tiny_model": "tiny",
    "ClearTokenIds": "tokens",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_names(__name__, _WHERE)
