"""VLMEvalKit TSV files: the format of MMBench, MM-Vet, MMVP, CV-Bench, MMStar, RealWorldQA.

One row per question with columns `index`, `image` (base64; or, in MMBench, the `index` of the
row holding the same image), `question`, `answer`, option columns `A`..`Z`, and
benchmark-specific extras (`category`, `l2-category`, `source`, ...). Cells are kept as text so
that a file written back keeps every column exactly as it was.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable

import pandas as pd

from clear_rl.errors import DataError
from clear_rl.io.atomic import atomic_path

# VLMEvalKit treats an image cell this short as a reference to another row's image.
IMAGE_REFERENCE_MAX_LEN = 64


def read_tsv(
    path: str | os.PathLike, required: Iterable[str] = ("index",), filled: Iterable[str] = ()
) -> pd.DataFrame:
    """Read a TSV as text cells; raise DataError naming the file when it is missing, empty or
    has only a header, repeats a column name, has a row with fewer or more cells than the header
    (naming those rows by line), lacks a `required` column, or has an empty cell in a `filled`
    column (naming those rows).

    Parsed with the standard library's csv reader (pandas' quoting rules: `"` quotes, doubled
    inside), not pandas' parser, because pandas fills a short row's missing cells with empty
    text and so cannot tell a short row from empty cells. `frame.attrs["lines"]` keeps each
    row's line number (a quoted cell may span lines)."""
    if not os.path.exists(path):
        raise DataError(f"TSV file not found: {path}")
    csv.field_size_limit(sys.maxsize)  # a base64 image cell is megabytes
    header, rows, lines, uneven = None, [], [], []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            start = 1
            for record in reader:
                if not record:  # a blank line, as pandas skips it
                    start = reader.line_num + 1
                    continue
                if header is None:
                    header = [record[0].removeprefix("\ufeff"), *record[1:]]
                elif len(record) != len(header):
                    uneven.append((start, len(record)))
                else:
                    rows.append(record)
                    lines.append(start)
                start = reader.line_num + 1
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {path} as a tab-separated file: {exc}") from None
    if header is None:
        raise DataError(f"{path} is empty: a VLMEvalKit TSV has a header line and one row per question")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header names column(s) {repeated} more than once")
    if uneven:
        shown = ", ".join(f"line {line} ({count} cells)" for line, count in uneven[:5])
        more = f" and {len(uneven) - 5} more" if len(uneven) > 5 else ""
        raise DataError(
            f"{path}: {len(uneven)} row(s) do not have the header's {len(header)} cells: {shown}{more}"
        )
    missing = list(dict.fromkeys(c for c in [*required, *filled] if c not in header))
    if missing:
        raise DataError(f"{path} lacks required column(s) {missing}; it has {header}")
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    frame = pd.DataFrame(rows, columns=header, dtype=str)
    frame.attrs["lines"] = lines
    for column in dict.fromkeys(filled):
        empty = [p for p, cell in enumerate(frame[column]) if not cell.strip()]
        if empty:
            raise DataError(f"{path}: empty `{column}` in {len(empty)} row(s): {describe_rows(frame, empty)}")
    return frame


def describe_rows(frame: pd.DataFrame, positions: list[int], limit: int = 5) -> str:
    """'row index=7 (line 9), ...': rows by their `index` cell (when the file has one) and line."""
    lines = frame.attrs.get("lines") or [p + 2 for p in range(len(frame))]
    names = [
        (f"row index={frame['index'].iloc[p]} " if "index" in frame.columns else "row ")
        + f"(line {lines[p]})"
        for p in positions[:limit]
    ]
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return ", ".join(names) + more


def write_tsv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a TSV atomically (temporary name, then rename), as VLMEvalKit reads it."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)


def is_image_reference(cell: str, indices) -> bool:
    """MMBench style: a short image cell equal to another row's index stands for that row's image."""
    return 0 < len(cell) <= IMAGE_REFERENCE_MAX_LEN and cell in indices


def resolve_image_cells(frame: pd.DataFrame) -> list[str]:
    """The base64 image of every row, following MMBench-style references to another row."""
    by_index = dict(zip(frame["index"], frame["image"]))
    return [by_index[cell] if is_image_reference(cell, by_index) else cell for cell in frame["image"]]
