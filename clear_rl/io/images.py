"""Conversions between PIL images, uint8 arrays, base64 strings and float tensors, and the
one decoder of image cells (`decode_image`).

Tensors are (3, H, W) or (B, 3, H, W) float32 in [0, 1], RGB: the format the MMD-Bench engine
and the models work on.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clear_rl.errors import DataError


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> (3, H, W) float32 in [0, 1], RGB."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def pils_to_batch(images: Sequence[Image.Image]) -> torch.Tensor:
    """Same-size PIL images -> (B, 3, H, W) float32 in [0, 1]."""
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise ValueError(f"images in one batch must share a size, got {sorted(sizes)}")
    return torch.stack([pil_to_tensor(im) for im in images])


def tensor_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 with rounding (channel-first layout kept)."""
    return images.detach().clamp(0, 1).mul(255.0).round().to(torch.uint8)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB PIL image."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
    return Image.fromarray(tensor_to_uint8(image).permute(1, 2, 0).cpu().numpy(), mode="RGB")


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """Encode an image as JPEG bytes (quality 95 is what the released MMD-Bench files use)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_base64_image(image: Image.Image, quality: int = 95) -> str:
    """Encode an image as base64 JPEG (quality 95 is what the released MMD-Bench files use)."""
    return base64.b64encode(encode_jpeg(image, quality)).decode("ascii")


def png_bytes(image: Image.Image) -> bytes:
    """Lossless PNG at zlib level 1: three times faster than the level-6 encode `datasets` does
    for PIL images, for ~30% more bytes on 64 px images."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# A text cell this long is image data, never a file name (PATH_MAX on Linux).
_MAX_PATH_CELL = 4096


def looks_like_path(cell: str) -> bool:
    """Whether a text cell names an image file: one line ending in an image suffix PIL knows
    (.jpg, .png, ...). Base64 has no '.', so image data never looks like a path, and is never
    looked up on disk (a JPEG's base64 starts with '/9j/', which would otherwise pass for one)."""
    if len(cell) >= _MAX_PATH_CELL or "\n" in cell:
        return False
    return os.path.splitext(cell.strip())[1].lower() in Image.registered_extensions()


def decode_image(
    cell: Any, where: str | None = None, base_dir: str | os.PathLike | None = None
) -> Image.Image:
    """Decode any image cell to an RGB PIL image: the one decoder of every reader in clear-rl.

    A cell is a PIL image, a `datasets.Image` storage dict ({"bytes", "path"}), raw bytes, a path
    to an image file (text that `looks_like_path`; a relative one is looked up in `base_dir`,
    default the working directory) or base64 text (VLMEvalKit's `image` cell). An empty cell, a missing file or data that is not
    an image raise a DataError that starts with `where` (name the row and the file there).
    """

    def error(problem: str) -> DataError:
        return DataError(f"{where}: {problem}" if where else problem)

    def located(name: str | os.PathLike) -> Path:
        return Path(name) if base_dir is None or os.path.isabs(name) else Path(base_dir, name)

    if isinstance(cell, Image.Image):
        return cell.convert("RGB")
    if isinstance(cell, Mapping):
        cell = cell.get("bytes") or (Path(cell["path"]) if cell.get("path") else None)
    if cell is None or (isinstance(cell, (str, bytes, bytearray, memoryview)) and len(cell) == 0):
        raise error("empty image cell")
    if isinstance(cell, str) and looks_like_path(cell):
        cell = Path(cell.strip())
    if isinstance(cell, os.PathLike):
        path = located(cell)
        if not os.path.exists(path):
            raise error(f"image file not found: {path}")
        try:
            return _open(path)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise error(f"undecodable image file {path} ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(cell, str):
        try:
            return _open(io.BytesIO(base64.b64decode(cell, validate=False)))
        except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
            shown = f" {cell[:40]!r}{'...' if len(cell) > 40 else ''}" if len(cell) < 256 else ""
            raise error(
                f"undecodable image cell{shown}: not a base64-encoded image ({exc.__class__.__name__}), "
                "nor the path of an image file (.jpg, .png, ...)"
            ) from exc
    if isinstance(cell, (bytes, bytearray, memoryview)):
        try:
            return _open(io.BytesIO(cell))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise error(f"undecodable image (not an image: {exc.__class__.__name__})") from exc
    raise error(f"unsupported image cell of type {type(cell).__name__}")


def _open(source: Path | io.BytesIO) -> Image.Image:
    with Image.open(source) as image:
        return image.convert("RGB")
