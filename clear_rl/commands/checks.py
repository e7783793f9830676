"""The checks every command makes of its paths and numbers before it imports anything heavy.

A command's `run` calls these first, so a missing model folder, source or benchmark file, an
unusable output folder or a bad number is refused in well under a second, naming the option,
instead of after torch, transformers and a model have loaded. They read the file system only
(weights from their safetensors headers, `models/weights.py`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from clear_rl.errors import ClearRLError, DataError
from clear_rl.models.weights import check_model_folder


def existing_file(path: str | os.PathLike, option: str, suffix: str | None = None) -> Path:
    """A file that exists (with `suffix`, when given); DataError names the option."""
    file = Path(path)
    if not file.exists():
        raise DataError(f"{option}: file not found: {file}")
    if not file.is_file():
        raise DataError(f"{option}: {file} is a folder, not a file")
    if suffix is not None and file.suffix.lower() != suffix:
        raise DataError(f"{option}: {file} is not a {suffix} file")
    return file


def existing_folder(path: str | os.PathLike, option: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{option}: folder not found: {folder}")
    return folder


def model_folder(path: str | os.PathLike, option: str, backbone: str = "auto") -> Path:
    """A folder holding a model clear-rl loads, with whole weights files."""
    try:
        check_model_folder(path, backbone)
    except ClearRLError as exc:
        raise ClearRLError(f"{option}: {exc}") from None
    return Path(path)


def output_folder(path: str | os.PathLike, option: str, inputs: Mapping[str, str | os.PathLike]) -> Path:
    """An output folder that is no file and lies in none of the command's input folders
    (`inputs`: option -> path): nothing is ever written into an input."""
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise DataError(f"{option}: {out} is a file, not a folder")
    for name, value in inputs.items():
        source = Path(value).expanduser().resolve()
        if source.is_dir() and (out == source or source in out.parents):
            raise DataError(f"{option}: {out} lies in the input folder of {name} ({source}); choose another")
    return Path(path)


def at_least(value: int | None, minimum: int, option: str) -> None:
    if value is not None and value < minimum:
        raise ClearRLError(f"{option} must be at least {minimum}, got {value}")
