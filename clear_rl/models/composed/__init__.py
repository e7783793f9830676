"""`composed`: any Hugging Face VLM + a diffusers VAE + a flow-matching DiT head + the latent bridge.

    modeling.py  ComposedUnifiedModel and its config: the backbone protocol (models/backbone.py)
    context.py   RestorationContext: what the restoration head is conditioned on
    decoding.py  its interleaved-generation decoder (one KV cache, masked holes for rows that wait)
    parts.py     its named parts and LoRA scopes, found on the wrapped VLM
    io.py        loading a saved folder (full model; 4-bit on CUDA)
    backbone.py  its declaration in the backbone registry (models/registry.py): light, no torch

Building one from pretrained parts is models/assemble.py; a tiny one in code, models/tiny.py.
Names are imported on first use (PEP 562), so importing the package stays light.
"""

from __future__ import annotations

from clear_rl.lazy import lazy_names

_WHERE = {
    "ComposedUnifiedConfig": "modeling",
    "ComposedUnifiedModel": "modeling",
    "RestorationContext": "context",
    "ComposedDecoder": "decoding",
    "load_composed": "io",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_names(__name__, _WHERE)
