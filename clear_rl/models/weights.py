"""A model folder's weights checked before they load: present, whole, and this kind of model's.

A safetensors file starts with an 8-byte header length and a JSON header giving every tensor's
byte range, so a missing, empty, truncated or foreign file shows in its first bytes: these checks
read headers only (milliseconds, whatever the file's size) and import nothing heavy, so `train`'s
preflight, `eval` and `prepare --label probe` refuse such a folder at once, naming the file and
what is wrong, instead of a traceback from deep inside the loader minutes later. The layouts are
the ones `models.io.load_unified` reads: a composed model (`config.json` with model_type
`clear_composed`, `model.safetensors` or a sharded index), peft adapters (`adapter_config.json`,
`adapter_model.safetensors`, and the base folder it names) and BAGEL's official layout
(`llm_config.json`, `vit_config.json`, `ema.safetensors` or `model.safetensors`, `ae.safetensors`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clear_rl.errors import ClearRLError

# safetensors refuses headers above 100 MB; a larger length is not a header.
MAX_HEADER_BYTES = 100_000_000
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class WeightsError(ClearRLError):
    """A weights file that is missing, cut short, or not the weights the folder says it holds."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} cannot be read as JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path} holds {type(value).__name__}, not a JSON object")
    return value


def safetensors_header(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The tensors a safetensors file describes ({name: {dtype, shape, data_offsets}}), checked
    against the file's size; WeightsError names the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    size = path.stat().st_size
    again = "a save or copy that did not finish; save or copy the model again"
    if size == 0:
        raise WeightsError(f"{path} is empty (0 bytes): {again}")
    with path.open("rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            raise WeightsError(
                f"{path} is truncated ({size} bytes, shorter than a safetensors header): {again}"
            )
        length = int.from_bytes(start, "little")
        if length > MAX_HEADER_BYTES:
            raise WeightsError(
                f"{path} is not a safetensors file (its first 8 bytes give a header of {length} bytes)"
            )
        if 8 + length > size:
            raise WeightsError(
                f"{path} is truncated: its header alone is {length} bytes, the file has {size}: {again}"
            )
        text = handle.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WeightsError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a safetensors file (its header is not a JSON object)")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise WeightsError(f"{path} is not a safetensors file (its header lacks tensor offsets)") from None
    held = size - 8 - length
    if end > held:
        raise WeightsError(
            f"{path} is truncated: its header describes {end} bytes of tensors, the file holds {held}: {again}"
        )
    if end < held:
        raise WeightsError(
            f"{path} has {held - end} bytes after its last tensor: not a file safetensors wrote; save or "
            "copy the model again"
        )
    return tensors


ADAPTERS = "adapters"  # what `check_model_folder` returns for a peft adapter folder


def check_model_folder(folder: str | os.PathLike, backbone: str = "auto") -> str:
    """Check a folder `load_unified` would read, from its configs and weights headers: returns the
    registered backbone whose layout it holds (models/registry.py; forced by `backbone`, else
    recognised) or `ADAPTERS`. WeightsError (a ClearRLError) says which file is missing, cut short or
    foreign."""
    from clear_rl.models import registry

    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"model folder not found: {folder}")
    found = registry.detect(folder)
    if backbone != registry.AUTO:
        spec = registry.get(backbone)
        if not spec.detect(folder):
            if (folder / "adapter_config.json").is_file():
                _check_adapters(folder, backbone)
                return ADAPTERS
            lacks = spec.missing(folder) if spec.missing else "its files"
            if found is not None:
                raise WeightsError(
                    f"{folder} holds a {found.name} model, not a {backbone} one ({lacks}): load it with "
                    f"backbone '{found.name}' or 'auto'"
                )
            raise WeightsError(f"{folder} does not hold a {backbone} model: {lacks}")
        found = spec
    elif found is None and (folder / "adapter_config.json").is_file():
        _check_adapters(folder, backbone)
        return ADAPTERS
    if found is None:
        lacks = "; ".join(f"{spec.name}: {spec.missing(folder)}" for spec in registry.specs() if spec.missing)
        raise WeightsError(
            f"{folder} holds no adapter_config.json nor any backbone's layout ({lacks}): not a model "
            "saved by clear-rl"
        )
    found.check_folder(folder)
    return found.name


def _check_adapters(folder: Path, backbone: str) -> None:
    config = read_json(folder / "adapter_config.json")
    weights = next((folder / name for name in ADAPTER_WEIGHTS if (folder / name).exists()), None)
    if weights is None:
        raise WeightsError(f"{folder} holds adapter_config.json but no {ADAPTER_WEIGHTS[0]}")
    if weights.suffix == ".safetensors":
        safetensors_header(weights)
    base = config.get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise WeightsError(
            f"{folder / 'adapter_config.json'}: the adapters' base model folder {base!r} is not found "
            "(base_model_name_or_path); clear-rl loads local folders only"
        )
    check_model_folder(base, backbone)


def check_pretrained_folder(folder: str | os.PathLike) -> None:
    """A Hugging Face model folder (a VLM's, a diffusers VAE's): every safetensors file it holds
    or its index lists is whole."""
    folder = Path(folder)
    files = set(folder.glob("*.safetensors"))
    for index in folder.glob("*.safetensors.index.json"):
        files.update(folder / name for name in read_json(index).get("weight_map", {}).values())
    for file in sorted(files):
        safetensors_header(file)
