"""The VLM's own vision path: images -> the tokens its LLM reads at the image positions.

What the bridge is aligned to (trainers/align.py) and what the `reencode` readback puts in the
restored slot: the VLM's image processor, then its vision tower and projector, exactly as the VLM
itself prepares an input image. `get_image_features` is the transformers API every
`AutoModelForImageTextToText` VLM exposes for that; LLaVA-style models need their feature-layer
settings passed explicitly, Qwen2-VL-style ones their `image_grid_thw`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image


def image_inputs(processor, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The VLM image processor's tensors for `images` (pixel_values, image_grid_thw, image_sizes...)."""
    processed = processor.image_processor([im.convert("RGB") for im in images], return_tensors="pt")
    return dict(processed)


def vision_tokens(vlm, inputs: Mapping[str, Any]) -> list[torch.Tensor]:
    """Per image, the (N_i, D) projector outputs the LLM receives in place of its image tokens."""
    config = vlm.config
    kwargs = {  # on the VLM's device; pixels in its precision, grids and sizes as they are
        k: v.to(device=vlm.device, dtype=vlm.dtype if v.is_floating_point() else v.dtype)
        for k, v in inputs.items()
        if torch.is_tensor(v)
    }
    for name in ("vision_feature_layer", "vision_feature_select_strategy"):
        if getattr(config, name, None) is not None:
            kwargs.setdefault(name, getattr(config, name))
    out = vlm.get_image_features(**kwargs)
    features = getattr(out, "pooler_output", out)
    if torch.is_tensor(features) and features.dim() == 2:  # one flat sequence for the whole batch
        raise ValueError("get_image_features returned unsplit features; pass image_grid_thw or image_sizes")
    return list(features)


def vision_token_grid(vlm_config, count: int, grid_thw: torch.Tensor | None = None) -> tuple[int, int]:
    """The (rows, cols) layout of one image's `count` vision tokens in the LLM sequence.

    Qwen2-VL style: the processor's patch grid (t, h, w), merged spatially before the LLM.
    LLaVA style: a square grid (CLS already dropped by the select strategy).
    """
    if grid_thw is not None:
        merge = getattr(getattr(vlm_config, "vision_config", None), "spatial_merge_size", 1)
        _, h, w = (int(v) for v in grid_thw)
        if (h // merge) * (w // merge) == count:
            return h // merge, w // merge
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"cannot lay out {count} vision tokens as a grid (not square, no image_grid_thw)")
    return side, side
