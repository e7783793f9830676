"""What a `save_to_disk` folder holds, read from its JSON files without importing `datasets`.

A `Dataset` folder has `state.json` and `dataset_info.json` (whose `features` name the
columns); a `DatasetDict` folder has `dataset_dict.json` listing its splits, one such folder
each. Reading these takes milliseconds, so a recipe's data is checked before anything loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from clear_rl.errors import DataError


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `save_to_disk` (a Dataset or a DatasetDict)."""
    folder = Path(path)
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); save the dataset again"
        ) from None


def saved_splits(path: str | os.PathLike) -> dict[str | None, list[str]]:
    """{split: column names} of a saved dataset; a single Dataset is the one split None."""
    folder = Path(path)
    if not folder.exists():
        raise DataError(f"dataset folder not found: {folder} (write one with `clear-rl prepare`)")
    if (folder / "dataset_dict.json").is_file():
        splits = _read_json(folder / "dataset_dict.json").get("splits", [])
        return {name: _columns(folder / name) for name in splits}
    if (folder / "state.json").is_file():
        return {None: _columns(folder)}
    raise DataError(f"{folder} is not a dataset saved with save_to_disk (no dataset_dict.json or state.json)")


def _columns(folder: Path) -> list[str]:
    return list(_read_json(folder / "dataset_info.json").get("features") or {})


def check_saved_split(path: str | os.PathLike, split: str, required: Iterable[str] = ()) -> list[str]:
    """The columns of `split` of a saved dataset (a single Dataset serves any split name); a
    DataError names the folder and the missing split or `required` columns."""
    found = saved_splits(path)
    if None not in found and split not in found:
        raise DataError(f"{path} has no split '{split}'; it has {list(found)}")
    columns = found.get(split, found.get(None, []))
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {missing} of a prepared dataset; run `clear-rl prepare` on your data first"
        )
    return columns
