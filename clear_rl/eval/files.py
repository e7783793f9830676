"""Which files `clear-rl eval` answers: each benchmark's clean file, its MMD-Bench levels and its
single-corruption files, found where the user put them or made under the output folder.

A benchmark's files are known by their names (`scoring.parse_dataset_name`), in either spelling:
- clear-rl's own (`clear-rl degrade`): `<Base>_MMD_<level>.tsv` (mixed) and
  `<Base>_MMD_<corruption>_<level>.tsv` (`--mode full`);
- the CLEAR release, as its VLMEvalKit configs name them: `<Base>_LOW_LEVEL_LOW.tsv`,
  `_LOW_LEVEL_MID`, `_LOW_LEVEL_HIGH` (mixed) and `<Base>_<corruption>.tsv` (one corruption at
  High), with `<Base>` = MMBench_DEV_EN_V11, MMVet, MMVP, CV-Bench-2D, MMStar, RealWorldQA; and
  `R-Bench-Dis.tsv`, shipped degraded (High).
A level file comes from the files given (`--data`), else the folder given (`--degraded`), else
it is made with the run's seed under `<out>/degraded/`: nothing is ever written into a folder
given as input. A degraded file given without its clean file (R-Bench-Dis, or a release file on
its own) is answered as it is, at its level.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from clear_rl.errors import DataError
from clear_rl.eval.scoring import DatasetName, parse_dataset_name
from clear_rl.io.atomic import write_text
from clear_rl.io.benchmark_tsv import read_benchmark_tsv

logger = logging.getLogger(__name__)


@dataclass
class BenchmarkFiles:
    """One benchmark's files to answer: `levels` maps each level to its mixed file (the clean file
    under `clean`), `corruptions` are the single-corruption files; `clean` is the clean file the
    degraded rows are measured against (None when none was given, or for R-Bench-Dis)."""

    base: str
    clean: Path | None
    levels: dict[str, Path] = field(default_factory=dict)
    corruptions: list[Path] = field(default_factory=list)
    # The input files read (and checked) while planning, by path: the runner reuses them.
    frames: dict[Path, pd.DataFrame] = field(default_factory=dict, repr=False)

    def all_files(self) -> list[Path]:
        return [*self.levels.values(), *self.corruptions]


def _parsed(path: Path) -> DatasetName:
    return parse_dataset_name(path.stem)


def _is_clean(name: DatasetName) -> bool:
    return name.level == "clean" and not name.corruption


def index_folder(folder: Path) -> dict[tuple[str, str, str], list[Path]]:
    """The degraded TSVs of a folder by (base, level, corruption); clean files are left out."""
    if not folder.is_dir():
        raise DataError(f"--degraded folder not found: {folder}")
    found: dict[tuple[str, str, str], list[Path]] = {}
    for path in sorted(folder.glob("*.tsv")):
        name = _parsed(path)
        if not _is_clean(name):
            found.setdefault((name.base, name.level, name.corruption), []).append(path)
    return found


def _one(paths: list[Path], what: str) -> Path:
    if len(paths) > 1:
        raise DataError(f"several files hold {what}: {', '.join(str(p) for p in paths)}; keep one")
    return paths[0]


def plan_files(
    data: Sequence[Path],
    levels: Sequence[str],
    cache_dir: Path,
    seed: int,
    degraded_dir: Path | None = None,
    reuse_cache: bool = False,
) -> list[BenchmarkFiles]:
    """Every benchmark's files at the wanted `levels`, in the order of `data` (see the module
    docstring); missing mixed levels of a clean file are made under `cache_dir` (reused there
    when `reuse_cache`). Degraded files at a level not wanted are skipped with a warning.

    Every input file is read and checked (`io.benchmark_tsv`) before any level is made, so a bad
    file is refused with nothing written; the frames read are kept in `BenchmarkFiles.frames`."""
    given: dict[tuple[str, str, str], list[Path]] = {}
    for path in data:
        name = _parsed(path)
        given.setdefault((name.base, name.level, name.corruption), []).append(path)
    folder = index_folder(degraded_dir) if degraded_dir is not None else {}
    groups: dict[str, BenchmarkFiles] = {}
    for path in data:
        name = _parsed(path)
        group = groups.setdefault(name.base, BenchmarkFiles(name.base, None))
        if _is_clean(name):
            group.clean = _one(given[(name.base, "clean", "")], f"the clean {name.base}")
    missing_levels: dict[str, list[str]] = {}
    for base, group in groups.items():
        if group.clean is not None and "clean" in levels:
            group.levels["clean"] = group.clean
        missing = missing_levels.setdefault(base, [])
        for level in (lv for lv in levels if lv != "clean"):
            key = (base, level, "")
            if key in given:
                group.levels[level] = _one(given[key], f"{base} at level {level}")
            elif key in folder:
                group.levels[level] = _one(folder[key], f"{base} at level {level}")
            elif group.clean is not None:
                missing.append(level)
        keys = {k for k in [*given, *folder] if k[0] == base and k[2]}
        for key in sorted(keys, key=lambda k: (k[2], levels.index(k[1]) if k[1] in levels else -1)):
            if key[1] in levels:
                group.corruptions.append(_one(given.get(key) or folder[key], f"{base} {key[2]} at {key[1]}"))
    for group in groups.values():
        for path in dict.fromkeys([*([group.clean] if group.clean else []), *group.all_files()]):
            group.frames[path] = read_benchmark_tsv(path)
    for base, missing in missing_levels.items():
        if missing:
            group = groups[base]
            group.levels.update(make_levels(group.clean, missing, cache_dir, seed, reuse_cache))
    for key, paths in given.items():
        if key[1] not in levels:
            logger.warning(
                "skipping %s: its level (%s) is not among --levels %s", paths[0], key[1], list(levels)
            )
    return [g for g in groups.values() if g.all_files()]


def make_levels(tsv: Path, levels: Sequence[str], cache_dir: Path, seed: int, reuse: bool) -> dict[str, Path]:
    """The MMD-Bench copies of `tsv` at `levels` under `cache_dir` (`clear-rl degrade`'s names),
    made with `seed` unless `reuse` finds them there already."""
    wanted = {level: cache_dir / f"{tsv.stem}_MMD_{level}.tsv" for level in levels}
    missing = [level for level, path in wanted.items() if not (reuse and path.exists())]
    if missing:
        from clear_rl.degrade.benchmark import DegradeOptions, degrade_tsv

        manifest = cache_dir / f"{tsv.stem}_MMD_manifest.json"
        kept = _manifest_entries(manifest)
        result = degrade_tsv(tsv, cache_dir, DegradeOptions(levels=missing, seed=seed, progress=False))
        _keep_manifest_entries(result.manifest, kept)
    return wanted


def _manifest_entries(manifest: Path) -> list[dict]:
    if not manifest.is_file():
        return []
    try:
        return list(json.loads(manifest.read_text(encoding="utf-8")).get("files", []))
    except json.JSONDecodeError:
        return []


def _keep_manifest_entries(manifest: Path | None, kept: list[dict]) -> None:
    """`degrade_tsv` writes a manifest of the files it made; keep the rows' corruptions of the
    copies an earlier run made and this one reused, so every level's rows stay labelled."""
    if manifest is None or not kept:
        return
    document = json.loads(manifest.read_text(encoding="utf-8"))
    made = {entry["file"] for entry in document["files"]}
    reused = [
        e for e in kept if e.get("file") not in made and (manifest.parent / str(e.get("file"))).exists()
    ]
    if reused:
        document["files"] = reused + document["files"]
        write_text(manifest, json.dumps(document, indent=1) + "\n")
