"""Building MMD-Bench copies of a benchmark: VLMEvalKit TSVs or `datasets` folders.

As the released generator does: one weighted random corruption per image (`mixed`, the
official MMD-Bench Low/Mid/High), applied at every requested level with independent draws
per level, or every corruption at every level (`full`); images re-encoded as JPEG quality
95; every other column kept exactly. Unlike the release, every draw is seeded per row (from
the base seed and the row's key), so a run is reproducible, and a manifest records each row's
corruption, intensity and seed.

Each output file is written to a temporary name and renamed when complete, and a bad row
fails the run without leaving any half-written or clobbered output. The manifest is rewritten
after each output with the files done so far, and `"complete": true` once all are written; a
killed run's temporaries are cleared by the next run, and `resume` keeps the files a killed run
finished and writes the rest, giving the same bytes as one uninterrupted run.

Decoding, corrupting and encoding run in worker processes (`DegradeOptions.workers`, default one
per core), chunk by chunk and in order; the files are the same bytes for any number of workers,
and the manifest does not record it, so a run may be resumed with another count.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from clear_rl import __version__
from clear_rl.degrade.engine import resolve_backend
from clear_rl.degrade.registry import (
    CORRUPTIONS,
    LEVELS,
    choose_corruptions,
    get_corruption,
    resolve_intensity,
)
from clear_rl.degrade.work import JPEG_QUALITY, DegradeChunk, degrade_chunk, engine_settings
from clear_rl.errors import ClearRLError, DataError
from clear_rl.io.atomic import atomic_path, remove_stale_temporaries, write_text
from clear_rl.io.benchmark_tsv import read_benchmark_tsv
from clear_rl.io.tsv import is_image_reference, write_tsv
from clear_rl.parallel import check_workers, ordered_map
from clear_rl.seeds import derive_seed

MODES = ("mixed", "full")
DECODE_CHUNK = 64  # rows decoded, corrupted and encoded together: one task of a worker


@dataclass(frozen=True)
class OutputSpec:
    """One output file: a level, and in `full` mode the single corruption it holds."""

    name: str
    level: str
    intensity: float
    corruption: str | None = None


@dataclass(frozen=True)
class DegradeOptions:
    """How to build the copies: mode, levels, base seed, batch size, the corruptions of a
    full run (default all 16), the dataset name in output names (default the input's), the
    worker processes (0: one per core when the work is worth starting them; the output is the
    same bytes for any number)."""

    mode: str = "mixed"
    levels: Sequence[str | float] = ("low", "mid", "high")
    seed: int = 0
    batch_size: int = 16
    types: Sequence[str] | None = None
    name: str | None = None
    progress: bool = True
    resume: bool = False  # keep the outputs a killed run with the same options finished
    workers: int = 0  # not in the manifest: a run may be resumed with another count
    backend: str = "auto"  # auto | opencv | torch; the manifest names the one that ran

    def __post_init__(self) -> None:
        check_workers(self.workers)
        resolve_backend(self.backend)


@dataclass
class DegradeResult:
    """What a run wrote: the output paths (one per OutputSpec, in order) and the manifest."""

    outputs: list[Path] = field(default_factory=list)
    manifest: Path | None = None


def level_label(level: str | float) -> str:
    """'high' stays 'high'; a number becomes its shortest text, e.g. 0.6 -> '0.6'."""
    if isinstance(level, str) and level.strip().lower() in LEVELS:
        return level.strip().lower()
    return f"{resolve_intensity(level):g}"


def plan_outputs(
    base: str, mode: str, levels: Sequence[str | float], types: Sequence[str] | None = None
) -> list[OutputSpec]:
    """The output files of a run: `<base>_MMD_<level>` (mixed) or `<base>_MMD_<type>_<level>` (full)."""
    if mode not in MODES:
        raise ClearRLError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if not levels:
        raise ClearRLError("no levels given; use e.g. low,mid,high")
    labels = [level_label(level) for level in levels]
    if mode == "mixed":
        if types:
            raise ClearRLError("--types selects corruptions for --mode full; mixed mode draws them per image")
        return [OutputSpec(f"{base}_MMD_{label}", label, resolve_intensity(label)) for label in labels]
    names = list(types) if types else list(CORRUPTIONS)
    for name in names:
        get_corruption(name)
    return [
        OutputSpec(f"{base}_MMD_{name}_{label}", label, resolve_intensity(label), name)
        for name in names
        for label in labels
    ]


def row_plan(spec: OutputSpec, keys: Sequence[str], seed: int) -> tuple[list[str], list[int]]:
    """Each row's corruption and seed for one output.

    A row's base seed comes from the run's seed and the row's key; mixed mode draws the
    row's corruption from it (the same for every level), and each level (and type) gets its
    own derived seed, so draws are independent across levels as in the release.
    """
    row_seeds = [derive_seed(seed, "row", key) for key in keys]
    if spec.corruption is None:
        names = choose_corruptions(row_seeds)
        seeds = [derive_seed(s, spec.intensity) for s in row_seeds]
    else:
        names = [spec.corruption] * len(keys)
        seeds = [derive_seed(s, spec.corruption, spec.intensity) for s in row_seeds]
    return names, seeds


@dataclass(frozen=True)
class _Column:
    """An image column to degrade: a TSV's, or one split's of a datasets folder."""

    cells: list  # every row's cell, as stored
    keys: list[str]  # the rows' keys, which their seeds derive from
    present: list[int]  # positions of the rows holding an image
    where: Callable[[int], str]  # a row as errors name it
    base_dir: Path | None  # where relative image paths are looked up
    encoding: str  # how its cells are stored: a key of clear_rl.degrade.work.ENCODERS


@dataclass(frozen=True)
class _Degraded:
    """One column of one output: each row's corruption and seed, and the present rows' encoded
    cells and whether the corruption applied, by position."""

    names: list[str]
    seeds: list[int]
    cells: dict[int, Any]
    applied: dict[int, bool]


def _chunks(positions: Sequence[int]) -> list[list[int]]:
    """Rows decoded, corrupted and encoded together: one task, one chunk of images in memory."""
    return [list(positions[start : start + DECODE_CHUNK]) for start in range(0, len(positions), DECODE_CHUNK)]


def _degrade_outputs(
    columns: Sequence[_Column], specs: Sequence[OutputSpec], options: DegradeOptions, bar: tqdm
) -> Iterator[tuple[OutputSpec, list[_Degraded]]]:
    """Each output's degraded columns, output after output. Every chunk of every output is a
    task of one pool (`options.workers` processes), so the workers stay busy across outputs
    and while the caller writes one; results come back in order, whatever the worker count."""
    engine, workers = engine_settings(options.backend, options.batch_size, options.workers)

    def jobs() -> Iterator[tuple[list[int], DegradeChunk]]:
        for spec in specs:
            for column in columns:
                names, seeds = row_plan(spec, column.keys, options.seed)
                for chunk in _chunks(column.present):
                    task = DegradeChunk(
                        cells=[column.cells[p] for p in chunk],
                        wheres=[column.where(p) for p in chunk],
                        base_dir=column.base_dir,
                        names=[names[p] for p in chunk],
                        seeds=[seeds[p] for p in chunk],
                        intensity=spec.intensity,
                        encoding=column.encoding,
                        engine=engine,
                    )
                    yield chunk, task

    tasks = len(specs) * sum(len(_chunks(column.present)) for column in columns)
    with contextlib.closing(ordered_map(degrade_chunk, jobs(), workers, tasks)) as results:
        for spec in specs:
            degraded = []
            for column in columns:
                done = _Degraded(*row_plan(spec, column.keys, options.seed), cells={}, applied={})
                for _ in _chunks(column.present):  # the jobs of this column, in the order made
                    chunk, (cells, applied) = next(results)
                    done.cells.update(zip(chunk, cells))
                    done.applied.update(zip(chunk, applied))
                    bar.update(len(chunk))
                degraded.append(done)
            yield spec, degraded


class _Manifest:
    """The manifest of one run: what it is (source, mode, seed, the files it plans), the files
    written so far, and whether all are (`complete`). Rewritten after each output, so a killed
    run says what it finished; with `resume`, those files are kept when they are still there."""

    def __init__(
        self, path: Path, source: Path, options: DegradeOptions, image_column: str, planned: list[Path]
    ):
        self.path, self.planned = path, planned
        self.identity = {
            "library": "clear-rl",
            "version": __version__,
            "benchmark": "MMD-Bench",
            "source": str(source),
            "mode": options.mode,
            "seed": options.seed,
            "image_column": image_column,
            "jpeg_quality": JPEG_QUALITY,
            # The two backends agree to >= 40 dB, not bit for bit: a resume must not mix them.
            "backend": engine_settings(options.backend, options.batch_size, 1)[0].backend,
            "planned": [target.name for target in planned],
        }
        self.files: dict[str, dict] = {}
        for target in [*planned, path]:
            remove_stale_temporaries(target)
        if options.resume:
            self.files = self._finished()

    def _finished(self) -> dict[str, dict]:
        """The entries of the files an earlier run of the same options wrote and are still there."""
        if not self.path.is_file():
            return {}
        try:
            earlier = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(
                f"{self.path}: cannot resume from this manifest ({exc}); run without --resume"
            ) from None
        for key, value in self.identity.items():
            if earlier.get(key) != value:
                raise DataError(
                    f"{self.path}: cannot resume: it was written with {key}={earlier.get(key)!r}, this run "
                    f"has {value!r}; run with the same options, or without --resume to start over"
                )
        return {e["file"]: e for e in earlier.get("files", []) if (self.path.parent / e["file"]).exists()}

    def done(self, target: Path) -> bool:
        return target.name in self.files

    def add(self, entry: dict) -> None:
        self.files[entry["file"]] = entry
        self.write()

    def write(self) -> None:
        files = [self.files[t.name] for t in self.planned if t.name in self.files]
        document = {**self.identity, "complete": len(files) == len(self.planned), "files": files}
        write_text(self.path, json.dumps(document, indent=1) + "\n")


def _row_entry(key: str, position: int, name: str, intensity: float, seed: int, applied: bool) -> dict:
    return {
        "index": key,
        "position": position,
        "corruption": name,
        "intensity": intensity,
        "seed": seed,
        "applied": applied,
    }


def _row_entries(column: _Column, done: _Degraded, intensity: float) -> list[dict]:
    """The manifest rows of a column's images in one output."""
    return [
        _row_entry(column.keys[p], p, done.names[p], intensity, done.seeds[p], done.applied[p])
        for p in column.present
    ]


def _tsv_roles(frame: pd.DataFrame) -> tuple[list[int], dict[int, str], list[int]]:
    """Rows holding an image, rows referring to another row's image (VLMEvalKit's MMBench
    style: a short cell equal to another row's index), and rows with an empty cell."""
    indices = set(frame["index"])
    images, references, empty = [], {}, []
    for position, cell in enumerate(frame["image"]):
        if not cell:
            empty.append(position)
        elif is_image_reference(cell, indices):
            references[position] = cell
        else:
            images.append(position)
    return images, references, empty


def iter_degraded_frames(
    frame: pd.DataFrame,
    source: str | os.PathLike,
    options: DegradeOptions = DegradeOptions(),
    skip: Iterable[str] = (),
) -> Iterator[tuple[OutputSpec, pd.DataFrame, list[dict]]]:
    """MMD-Bench copies of a VLMEvalKit frame in memory, one output at a time: yields
    (spec, degraded frame, manifest rows), except for the outputs named in `skip`. `source`
    names the file in errors and outputs.

    Reference rows keep their cell, so VLMEvalKit resolves them to the corrupted image of
    the row they point to; empty cells stay empty.
    """
    source = Path(source)
    base = options.name or source.stem
    skip = set(skip)
    specs = [spec for spec in _plan(base, options) if spec.name not in skip]
    image_rows, references, empty = _tsv_roles(frame)
    keys, cells = list(frame["index"]), list(frame["image"])
    column = _Column(
        cells, keys, image_rows, lambda p: f"{source}: row index={keys[p]}", source.parent, "base64"
    )
    total = len(specs) * len(image_rows)
    with tqdm(total=total, desc=f"degrade {base}", unit="img", disable=not options.progress) as bar:
        for spec, (done,) in _degrade_outputs([column], specs, options, bar):
            out = frame.copy()
            out["image"] = [done.cells.get(p, c) for p, c in enumerate(cells)]
            rows = _row_entries(column, done, spec.intensity)
            rows += [{"index": keys[p], "position": p, "same_image_as": ref} for p, ref in references.items()]
            rows += [
                {"index": keys[p], "position": p, "corruption": None, "note": "empty image cell"}
                for p in empty
            ]
            yield spec, out, sorted(rows, key=lambda entry: entry["position"])


def degrade_tsv(
    source: str | os.PathLike, out_dir: str | os.PathLike, options: DegradeOptions = DegradeOptions()
) -> DegradeResult:
    """Write MMD-Bench copies of a VLMEvalKit TSV into `out_dir` as `<name>_MMD_<level>.tsv`
    (full mode: `<name>_MMD_<type>_<level>.tsv`) plus `<name>_MMD_manifest.json`."""
    source = Path(source)
    frame = read_benchmark_tsv(source)  # eval's rules: nothing is degraded that eval would refuse
    base = options.name or source.stem
    targets = {spec.name: Path(out_dir) / f"{spec.name}.tsv" for spec in _plan(base, options)}
    manifest = _Manifest(
        Path(out_dir) / f"{base}_MMD_manifest.json", source, options, "image", list(targets.values())
    )
    skip = {name for name, target in targets.items() if manifest.done(target)}
    for spec, out, rows in iter_degraded_frames(frame, source, options, skip=skip):
        target = targets[spec.name]
        write_tsv(out, target)
        manifest.add(_file_entry(target, source, options, spec, rows))
    manifest.write()
    return DegradeResult(outputs=list(targets.values()), manifest=manifest.path)


def _plan(base: str, options: DegradeOptions) -> list[OutputSpec]:
    return plan_outputs(base, options.mode, options.levels, options.types)


def _file_entry(
    target: Path, source: Path, options: DegradeOptions, spec: OutputSpec, rows: Iterable[dict]
) -> dict:
    return {
        "file": target.name,
        "source": str(source),
        "mode": options.mode,
        "seed": options.seed,
        "level": spec.level,
        "intensity": spec.intensity,
        "corruption": spec.corruption,
        "rows": list(rows),
    }


def _open_dataset(source: Path, image_column: str):
    """Load a `save_to_disk` folder: {split or None: dataset with undecoded image column}."""
    import datasets

    if not source.exists():
        raise DataError(f"input not found: {source}")
    try:
        loaded = datasets.load_from_disk(str(source))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{source} is not a dataset folder saved with save_to_disk: {exc}") from exc
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {None: loaded}
    for split, dataset in splits.items():
        where = f"{source}" + (f" (split {split!r})" if split else "")
        if image_column not in dataset.column_names:
            raise DataError(f"{where} has no image column {image_column!r}; columns: {dataset.column_names}")
        if not isinstance(dataset.features[image_column], datasets.Image):
            raise DataError(
                f"{where}: column {image_column!r} is not an image column ({dataset.features[image_column]})"
            )
        splits[split] = dataset.cast_column(image_column, datasets.Image(decode=False))
    return splits, isinstance(loaded, datasets.DatasetDict)


def _dataset_column(source: Path, split: str | None, cells: list) -> _Column:
    """The image column of one split: row keys `<split>/<position>`, or the position alone."""
    keys = [f"{split}/{p}" if split else str(p) for p in range(len(cells))]
    where = f"{source}" + (f" split {split!r}" if split else "")
    present = [p for p, value in enumerate(cells) if value is not None]
    return _Column(cells, keys, present, lambda p: f"{where} row {p}", None, "bytes")


def degrade_dataset(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: DegradeOptions = DegradeOptions(),
    image_column: str = "image",
) -> DegradeResult:
    """Write MMD-Bench copies of a `datasets` folder (Dataset or DatasetDict saved with
    `save_to_disk`) as folders `<name>_MMD_<level>` beside a manifest. Row keys (and so
    seeds) are `<split>/<position>`, or the position for a single Dataset."""
    import datasets

    source = Path(source)
    splits, is_dict = _open_dataset(source, image_column)
    base = options.name or source.name
    targets = {spec.name: Path(out_dir) / spec.name for spec in _plan(base, options)}
    manifest = _Manifest(
        Path(out_dir) / f"{base}_MMD_manifest.json", source, options, image_column, list(targets.values())
    )
    specs = [spec for spec in _plan(base, options) if not manifest.done(targets[spec.name])]
    columns = [
        _dataset_column(source, split, list(dataset[image_column])) for split, dataset in splits.items()
    ]
    total = len(specs) * sum(len(column.present) for column in columns)
    with tqdm(total=total, desc=f"degrade {base}", unit="img", disable=not options.progress) as bar:
        for spec, degraded in _degrade_outputs(columns, specs, options, bar):
            outputs, rows = {}, []
            for (split, dataset), column, done in zip(splits.items(), columns, degraded):
                cells = [done.cells.get(p) for p in range(len(column.cells))]
                order = dataset.column_names
                outputs[split] = (
                    dataset.remove_columns([image_column])
                    .add_column(image_column, cells, feature=datasets.Image())
                    .select_columns(order)
                )
                rows += _row_entries(column, done, spec.intensity)
            target = targets[spec.name]
            with atomic_path(target, is_dir=True) as tmp:
                (datasets.DatasetDict(outputs) if is_dict else outputs[None]).save_to_disk(str(tmp))
            manifest.add(_file_entry(target, source, options, spec, rows))
    manifest.write()
    return DegradeResult(outputs=list(targets.values()), manifest=manifest.path)
