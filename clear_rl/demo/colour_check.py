"""ShapesVQA's object-colour check: does an image still show the object's colour?

PSNR says how close a restoration is to the clean image overall; the demo's question is about one
object's colour, so this reads the colour back the way the set defines it (`nearest_color_name` of
the mean colour) from a disc at the object's centre (inside every shape, cross arms included),
for the decoded restoration and for the degraded input. Used as an eval `restoration_metrics`.
"""

from __future__ import annotations

import json

import torch

from clear_rl.demo.shapes_vqa.scene import nearest_color_name

CORE_FRACTION = 0.25  # of the object's radius: the disc that lies inside every shape


def object_colour(image: torch.Tensor, center: tuple[float, float], radius: float) -> str:
    """The palette colour read from a (3, S, S) image in [-1, 1] around `center` (pixels)."""
    size = image.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (xs + 0.5 - center[0]) ** 2 + (ys + 0.5 - center[1]) ** 2 <= max(radius * CORE_FRACTION, 1.0) ** 2
    rgb = ((image[:, disc].float().mean(1) + 1.0) * 127.5).tolist()
    return nearest_color_name(rgb)


def colour_check(image_size: int):
    """An eval restoration metric: 1.0 where the restoration / the degraded image shows the
    object's true colour, for ShapesVQA rows whose images are `image_size` pixels wide."""

    def metric(row: dict, decoded: torch.Tensor, degraded: torch.Tensor) -> dict[str, float]:
        objects = json.loads(row["meta"])["objects"]
        if len(objects) != 1:
            return {}
        obj = objects[0]
        scale = decoded.shape[-1] / image_size
        center, radius = (obj["center"][0] * scale, obj["center"][1] * scale), obj["radius"] * scale
        return {
            "colour_restored": float(object_colour(decoded, center, radius) == obj["color"]),
            "colour_degraded": float(object_colour(degraded, center, radius) == obj["color"]),
        }

    return metric
