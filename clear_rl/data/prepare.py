"""`clear-rl prepare`: a VQA source -> the prepared, corruption-aware dataset (`save_to_disk`).

Rows are read, degraded, labelled and written in chunks, each chunk to a temporary folder
beside the output, so a large source never sits in memory; the result is assembled and renamed
onto the output folder only when every split is complete (a failure leaves the previous output).
The corruptions run in `config.workers` processes (`clear_rl.parallel`), a few chunks ahead of
the labelling and writing here; the dataset is the same for any number of workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clear_rl.data.samples import (
    CLEAN,
    OPTION_COLUMNS,
    PREPARED_COLUMNS,
    PrepareConfig,
    balance_indices,
    build_target,
    check_reasoning,
    choose_levels,
    prepared_features,
    row_seed,
    rule_labels,
)
from clear_rl.data.sources import SourceRow, SourceSplit, open_source
from clear_rl.degrade.engine import resolve_backend
from clear_rl.degrade.work import CorruptTask, engine_settings, run_corrupt_task
from clear_rl.errors import DataError
from clear_rl.io.atomic import atomic_path
from clear_rl.io.images import png_bytes
from clear_rl.parallel import ordered_map
from clear_rl.seeds import derive_seed

logger = logging.getLogger(__name__)
MANIFEST_NAME = "clear_rl_prepare.json"


class Labeller(Protocol):
    """What `label: probe` asks for: `restore` or `direct` per row, given its degraded image.

    `clear_rl.labelling.Prober` is the one clear-rl has (it runs a model, so it lives above this
    layer and is passed in by the caller)."""

    def labels(self, rows: Sequence[SourceRow], degraded: Sequence[Any]) -> list[str]: ...


def _plan(splits: dict[str, SourceSplit], config: PrepareConfig) -> dict[str, tuple[SourceSplit, list[int]]]:
    """Which source rows go to which output split (a one-split source may give a `test` share)."""
    plan = {}
    for name, split in splits.items():
        positions = list(range(len(split)))
        if config.max_samples is not None:
            positions = positions[: config.max_samples]
        plan[name] = (split, positions)
    if config.test_fraction > 0:
        if len(plan) != 1:
            raise DataError(
                f"test_fraction applies to a one-split source; this source has splits {list(plan)}"
            )
        ((name, (split, positions)),) = plan.items()
        rng = np.random.default_rng(derive_seed(config.seed, "test_fraction"))
        held = set(
            rng.choice(len(positions), size=int(round(config.test_fraction * len(positions))), replace=False)
        )
        plan = {
            name: (split, [p for i, p in enumerate(positions) if i not in held]),
            "test": (split, [p for i, p in enumerate(positions) if i in held]),
        }
    return plan


@dataclass(frozen=True)
class _Chunk:
    """One chunk of a split as read here: its rows (decoded and checked) and their draws."""

    split: SourceSplit
    positions: list[int]
    rows: list[SourceRow]
    seeds: list[int]
    severities: list[str]
    corruptions: list[str | None]  # None for a clean row, which stays as it is
    intensities: list[float | None]


def _read_chunk(split: SourceSplit, positions: list[int], config: PrepareConfig) -> _Chunk:
    """Read one chunk of rows and draw each row's level and corruption from its seed."""
    from clear_rl.degrade import LEVELS, choose_corruptions

    rows = list(split.rows(positions))
    seeds = [row_seed(config.seed, split.name, p) for p in positions]
    severities = choose_levels(seeds, config.levels, config.level_weights)
    picked = [None if s == CLEAN else name for name, s in zip(choose_corruptions(seeds), severities)]
    return _Chunk(split, positions, rows, seeds, severities, picked, [LEVELS.get(s) for s in severities])


def _degraded_chunks(
    plan: dict[str, tuple[SourceSplit, list[int]]], config: PrepareConfig
) -> Iterator[tuple[_Chunk, list[Any]]]:
    """Every chunk of every planned split, in order, with its degraded images. Rows are read
    here; only the corruptions run in the workers, chunks ahead of the caller."""
    engine, workers = engine_settings(config.backend, config.chunk_size, config.workers)

    def jobs() -> Iterator[tuple[_Chunk, CorruptTask]]:
        for split, positions in plan.values():
            for start in range(0, len(positions), config.chunk_size):
                chunk = _read_chunk(split, positions[start : start + config.chunk_size], config)
                images = [row.image for row in chunk.rows]
                yield chunk, CorruptTask(images, chunk.corruptions, chunk.intensities, chunk.seeds, engine)

    tasks = sum(-(-len(positions) // config.chunk_size) for _, positions in plan.values())
    return ordered_map(run_corrupt_task, jobs(), workers, tasks)


def _chunk_records(
    chunk: _Chunk, degraded: Sequence[Any], config: PrepareConfig, labeller: Labeller | None
) -> dict[str, list]:
    """Label one degraded chunk; returns the prepared columns."""
    split, rows = chunk.split, chunk.rows
    corruptions = [name or "none" for name in chunk.corruptions]
    intensities = [level or 0.0 for level in chunk.intensities]
    if config.label == "probe":
        labels = labeller.labels(rows, degraded)
    else:
        labels = rule_labels(chunk.severities, config.restore_levels)
    columns: dict[str, list[Any]] = {c: [] for c in PREPARED_COLUMNS}
    for row, position, seed, severity, corruption, intensity, image, label in zip(
        rows, chunk.positions, chunk.seeds, chunk.severities, corruptions, intensities, degraded, labels
    ):
        check_reasoning(
            row.reasoning, f"{split.location}: split '{split.name}' row {position} (index={row.index})"
        )
        options = row.options or {}
        record = {
            "index": row.index,
            "image": {"bytes": png_bytes(image), "path": None},
            "clean_image": {"bytes": png_bytes(row.image), "path": None},
            "question": row.question,
            "answer": row.answer,
            **{letter: options.get(letter, "") for letter in OPTION_COLUMNS},
            "corruption": corruption,
            "severity": severity,
            "intensity": float(intensity),
            "seed": int(seed),
            "label": label,
            "target": build_target(
                label, corruption, severity, row.answer, row.options, row.reasoning, config.quality_check
            ),
        }
        for key, value in record.items():
            columns[key].append(value)
    return columns


def prepare_dataset(
    source: str | os.PathLike,
    out: str | os.PathLike,
    config: PrepareConfig | None = None,
    labeller: Labeller | None = None,
) -> dict:
    """Write the prepared dataset of `source` to `out`; returns a summary (counts per split and label).

    `label: probe` needs the `labeller` that decides each row, e.g.
    `clear_rl.labelling.Prober(config.probe)`; rule labelling takes none.
    """
    import datasets

    config = config or PrepareConfig()
    if config.label == "probe" and labeller is None:
        raise DataError(
            "probe labelling needs a labeller: pass labeller=clear_rl.labelling.Prober(config.probe)"
        )
    if config.label != "probe" and labeller is not None:
        raise DataError(f"a labeller is only used with label='probe'; this config labels by {config.label!r}")
    resolve_backend(config.backend)  # an unknown backend fails here, before any work
    plan = _plan(
        open_source(source, list(config.splits) if config.splits else None, config.reasoning_column), config
    )
    features = prepared_features()
    out = Path(out)
    quiet = not datasets.utils.are_progress_bars_disabled()
    if quiet:  # one bar per split here, not one per chunk written
        datasets.disable_progress_bars()
    try:
        return _write(plan, config, labeller, features, out, source)
    finally:
        if quiet:
            datasets.enable_progress_bars()


def _write(plan, config: PrepareConfig, labeller: Labeller | None, features, out: Path, source) -> dict:
    """Degrade, label and write every planned split into `out` (atomically); returns the summary."""
    import datasets
    from tqdm.auto import tqdm

    settings = {key: value for key, value in asdict(config).items() if key != "workers"}  # not the output's
    settings["backend"] = engine_settings(config.backend, config.chunk_size, 1)[0].backend  # the one that ran
    summary: dict[str, Any] = {"source": str(source), "config": settings, "splits": {}}
    with (
        atomic_path(out, is_dir=True) as tmp,
        tempfile.TemporaryDirectory(prefix=".prepare-", dir=out.parent) as work,
        contextlib.closing(_degraded_chunks(plan, config)) as chunks,
    ):
        result = {}
        for name, (_, positions) in plan.items():
            parts = []
            with tqdm(total=len(positions), desc=f"prepare {name}", unit="row") as bar:
                for start in range(0, len(positions), config.chunk_size):
                    chunk, degraded = next(chunks)  # this split's chunk at `start`: made in this order
                    columns = _chunk_records(chunk, degraded, config, labeller)
                    part_dir = Path(work, name, f"{start:09d}")
                    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(part_dir))
                    parts.append(datasets.load_from_disk(str(part_dir)))
                    bar.update(len(chunk.positions))
            dataset = (
                datasets.concatenate_datasets(parts)
                if parts
                else datasets.Dataset.from_dict({c: [] for c in PREPARED_COLUMNS}, features=features)
            )
            counts = Counter(dataset["label"])
            if config.balance and len(dataset):
                keep = balance_indices(dataset["label"], derive_seed(config.seed, "balance", name), name)
                dataset = dataset.select(keep)
            result[name] = dataset
            summary["splits"][name] = {"rows": len(dataset), "labels_before_balance": dict(counts)}
            summary["splits"][name]["labels"] = dict(Counter(dataset["label"]))
            logger.info("%s: %d rows, labels %s", name, len(dataset), summary["splits"][name]["labels"])
        datasets.DatasetDict(result).save_to_disk(str(tmp))
        Path(tmp, MANIFEST_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
