"""VQA sources for `clear-rl prepare`: a `datasets` folder or a VLMEvalKit TSV, read row by row.

A source has `image`, `question` and `answer` columns; options (`A`..`D` columns or an `options`
cell) and a reasoning-trace column are optional. Images are decoded lazily, in chunks, so a large
source never sits in memory at once, and a bad image is an error that names the row and the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from clear_rl.data.prompts import is_missing, row_options
from clear_rl.errors import DataError
from clear_rl.io.images import decode_image

REQUIRED_COLUMNS = ("image", "question", "answer")
# The prepared schema keeps four option columns, as the MMD-Bench sources have.
MAX_OPTIONS = ("A", "B", "C", "D")


@dataclass
class SourceRow:
    """One VQA sample, normalised: options as {letter: text}, the answer as a letter when it is one."""

    index: str
    image: Image.Image
    question: str
    answer: str
    options: dict[str, str] | None
    reasoning: str | None


def normalise_answer(answer: str, options: Mapping[str, str] | None, where: str) -> str:
    """The answer as an option letter for multiple choice (accepting the option's text), as is otherwise."""
    answer = str(answer).strip()
    if not answer:
        raise DataError(f"{where}: empty answer")
    if not options:
        return answer
    if answer.upper() in options:
        return answer.upper()
    by_text = [letter for letter, text in options.items() if text.strip().lower() == answer.lower()]
    if len(by_text) == 1:
        return by_text[0]
    raise DataError(f"{where}: answer {answer!r} is neither an option letter nor an option's text {options}")


class SourceSplit:
    """One split of a source: its length and its rows, decoded on demand."""

    def __init__(self, name: str, location: str, base_dir: Path, num_rows: int, reasoning_column: str | None):
        self.name, self.location, self.base_dir = name, location, base_dir
        self.num_rows, self.reasoning_column = num_rows, reasoning_column

    def __len__(self) -> int:
        return self.num_rows

    def _raw_rows(self, positions: list[int]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def rows(self, positions: list[int]) -> Iterator[SourceRow]:
        """The rows at `positions` (row numbers of this split), decoded and checked."""
        for position, raw in zip(positions, self._raw_rows(positions)):
            index = raw.get("index")
            index = str(position) if is_missing(index) else str(index)
            where = f"{self.location}: split '{self.name}' row {position} (index={index})"
            image = decode_image(raw.get("image"), where, self.base_dir)
            try:
                options = row_options(raw)
            except ValueError as exc:
                raise DataError(f"{where}: {exc}") from None
            extra = sorted(set(options or {}) - set(MAX_OPTIONS))
            if extra:
                raise DataError(
                    f"{where}: options {extra} beyond A-D are not supported by the prepared schema"
                )
            question = raw.get("question")
            if is_missing(question):
                raise DataError(f"{where}: empty question")
            trace = raw.get(self.reasoning_column) if self.reasoning_column else None
            yield SourceRow(
                index=index,
                image=image,
                question=str(question),
                answer=normalise_answer(raw.get("answer", ""), options, where),
                options=options,
                reasoning=None if is_missing(trace) else str(trace).strip(),
            )


class DatasetSplit(SourceSplit):
    def __init__(self, name, location, dataset, reasoning_column):
        import datasets

        if isinstance(dataset.features.get("image"), datasets.Image):
            dataset = dataset.cast_column(
                "image", datasets.Image(decode=False)
            )  # decode here, naming the row
        super().__init__(name, location, Path(location), len(dataset), reasoning_column)
        self.dataset = dataset

    def _raw_rows(self, positions):
        batch = self.dataset[positions]
        return [{key: values[i] for key, values in batch.items()} for i in range(len(positions))]


class TsvSplit(SourceSplit):
    def __init__(self, name, location, frame, reasoning_column):
        from clear_rl.io.tsv import resolve_image_cells

        if "index" in frame.columns:
            frame = frame.copy()
            frame["image"] = resolve_image_cells(frame)  # MMBench-style references to another row's image
        super().__init__(name, location, Path(location).parent, len(frame), reasoning_column)
        self.frame = frame

    def _raw_rows(self, positions):
        return self.frame.iloc[positions].to_dict("records")


def _check_columns(columns: list[str], location: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{location} lacks required column(s) {missing}; it has {columns}")


def open_source(
    path: str | os.PathLike, splits: list[str] | None = None, reasoning_column: str | None = "reasoning"
) -> dict[str, SourceSplit]:
    """The splits of a source folder (`save_to_disk`) or TSV file, each checked for the required columns.

    A TSV or a single `Dataset` is one split named `train`; `splits` picks splits of a `DatasetDict`.
    """
    location = str(path)
    if not os.path.exists(location):
        raise DataError(f"source not found: {location} (a datasets folder or a VLMEvalKit .tsv file)")
    if os.path.isfile(location):
        if not location.endswith(".tsv"):
            raise DataError(f"{location}: a file source must be a VLMEvalKit .tsv file")
        from clear_rl.io.benchmark_tsv import read_benchmark_tsv

        frame = read_benchmark_tsv(location, index_required=False)  # eval's and degrade's rules
        found: dict[str, SourceSplit] = {"train": TsvSplit("train", location, frame, reasoning_column)}
    else:
        import datasets

        try:
            loaded = datasets.load_from_disk(location)
        except FileNotFoundError as exc:
            raise DataError(f"{location} is not a dataset folder saved with save_to_disk ({exc})") from None
        named = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        found = {}
        for name, dataset in named.items():
            _check_columns(dataset.column_names, f"{location} (split '{name}')")
            found[name] = DatasetSplit(name, location, dataset, reasoning_column)
    if splits:
        unknown = [s for s in splits if s not in found]
        if unknown:
            raise DataError(f"{location} has no split(s) {unknown}; it has {list(found)}")
        found = {s: found[s] for s in splits}
    if not any(len(split) for split in found.values()):
        raise DataError(f"{location} has no rows (splits {list(found)})")
    return found
