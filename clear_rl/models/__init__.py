"""Unified models: the backbone protocol and its implementations (composed, tiny).

The names below are imported on first use (PEP 562), so that importing a light submodule such
as `clear_rl.models.settings` (which the recipe checks use) does not pull in torch, diffusers
and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
