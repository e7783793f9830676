"""What a degraded benchmark row is measured against: its clean image and its corruption.

An MMD-Bench copy (`<stem>_MMD_<level>.tsv`) keeps every row of its clean source under the same
`index`, so the clean image of a degraded row is the source row with that index. The corruption a
row got is in the manifest `clear-rl degrade` writes beside the copies (mixed mode draws one per
row); a `--mode full` file names it (`<stem>_MMD_<type>_<level>`); otherwise it is unknown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image

from clear_rl.errors import DataError
from clear_rl.eval.scoring import parse_dataset_name
from clear_rl.io.images import decode_image
from clear_rl.io.tsv import read_tsv, resolve_image_cells

CLEAN = "none"  # the corruption label of clean rows (and of rows a corruption left as they were)
UNKNOWN = "unknown"  # a degraded row whose corruption no manifest records


class CleanReference:
    """The clean image of any row of one benchmark, looked up by `index`."""

    def __init__(self, source: str | Path, frame: pd.DataFrame | None = None):
        self.source = Path(source)
        frame = read_tsv(self.source, required=("index", "image")) if frame is None else frame
        self._cells = dict(zip(frame["index"].astype(str), resolve_image_cells(frame)))

    def __len__(self) -> int:
        return len(self._cells)

    def __contains__(self, index: object) -> bool:
        return str(index) in self._cells

    def image(self, index: object) -> Image.Image:
        """The clean image of row `index`; a DataError names the source when the row is not in it."""
        key = str(index)
        if key not in self._cells:
            raise DataError(f"{self.source}: no row index={key} to serve as the clean reference")
        return decode_image(self._cells[key], f"{self.source}: row index={key}", self.source.parent)

    def images(self, indices: Sequence[object]) -> list[Image.Image]:
        """The clean images of several rows, in order."""
        return [self.image(i) for i in indices]


def row_corruptions(tsv: str | Path, indices: Sequence[object]) -> list[str]:
    """The corruption of each row of one benchmark file: `none` for a clean file, else what the
    manifest beside it records (`none` where the corruption was not applied), else what a
    `--mode full` name says, else `unknown`."""
    tsv = Path(tsv)
    parsed = parse_dataset_name(tsv.stem)
    if parsed.level == "clean" and not parsed.corruption:
        return [CLEAN] * len(indices)
    fallback = parsed.corruption or UNKNOWN
    recorded = _manifest_rows(tsv)
    return [recorded.get(str(i), fallback) for i in indices]


def _manifest_rows(tsv: Path) -> dict[str, str]:
    """{index: corruption} from the `<base>_MMD_manifest.json` entry of this file, if there is one."""
    base = tsv.stem.split("_MMD_")[0]
    manifest = tsv.with_name(f"{base}_MMD_manifest.json")
    if "_MMD_" not in tsv.stem or not manifest.is_file():
        return {}
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{manifest}: not valid JSON ({exc})") from exc
    entry = next((f for f in document.get("files", []) if f.get("file") == tsv.name), None)
    if entry is None:
        return {}
    names: dict[str, str] = {}
    references: dict[str, str] = {}
    for row in entry.get("rows", []):
        key = str(row.get("index"))
        if "same_image_as" in row:  # an MMBench row showing another row's (corrupted) image
            references[key] = str(row["same_image_as"])
        elif row.get("corruption"):
            names[key] = row["corruption"] if row.get("applied", True) else CLEAN
    for key, target in references.items():
        if target in names:
            names[key] = names[target]
    return names
