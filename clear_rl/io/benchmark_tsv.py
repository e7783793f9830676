"""The one set of rules a VQA benchmark TSV meets before `degrade`, `prepare` or `eval` uses it.

All three read the same files, and `degrade`'s outputs are `eval`'s inputs, so one check decides
for all of them, before any of them writes anything: a file that `eval` would refuse is refused
by `degrade` too, instead of being copied at three levels first. A benchmark file has the columns
`index`, `image`, `question` and `answer`; every row has the header's number of cells (a short
row's cells would otherwise read as empty), and non-empty `image` (base64, a path, or MMBench's
reference to another row), `question` and `answer`; `index` values are unique (rows are matched
by them across levels, and resumed by them). `prepare` also takes a TSV without `index` (its
rows are then numbered); errors name the file, and the rows by `index` and line.
"""

from __future__ import annotations

import os

import pandas as pd

from clear_rl.errors import DataError
from clear_rl.io.tsv import describe_rows, read_tsv

COLUMNS = ("index", "image", "question", "answer")
FILLED = ("image", "question", "answer")


def read_benchmark_tsv(path: str | os.PathLike, index_required: bool = True) -> pd.DataFrame:
    """Read a benchmark TSV checked against the rules above; DataError names what is wrong."""
    required = COLUMNS if index_required else COLUMNS[1:]
    frame = read_tsv(path, required=required, filled=(("index",) if index_required else ()) + FILLED)
    if "index" in frame.columns:
        seen: dict[str, int] = {}
        repeated = [p for p, key in enumerate(frame["index"]) if seen.setdefault(key, p) != p]
        if repeated:
            raise DataError(
                f"{path}: `index` repeats in {len(repeated)} row(s): {describe_rows(frame, repeated)}; "
                "every row needs its own index"
            )
    return frame
