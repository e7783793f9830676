"""The demo over several seeds (`clear-rl demo --seeds 0,1,2`, `make demo-seeds`).

At the demo's scale one run is one sample: a seed changes the data, the tiny model's
initialisation and every draw of training, and CPUs with different vector units round
differently, so a single run's tables can land either side of a target. Each seed runs the
whole pipeline into `OUT/seed_<n>/` (its own SUMMARY); `OUT/SUMMARY.md` holds every cell's mean,
min and max over the seeds, and the targets judged on the mean (and, for CLEAR-RL against Base
at High, on every seed's sign).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from clear_rl.demo.summary import (
    Measures,
    markdown,
    robustness_frame,
    spearman,
    tables_lines,
    tables_of,
    target_lines,
    targets,
)
from clear_rl.errors import ClearRLError
from clear_rl.eval.scoring import LEVELS
from clear_rl.io.atomic import write_text
from clear_rl.machine import describe_machine

SEED_FOLDER = "seed_{seed}"


def parse_seeds(text: str) -> list[int]:
    """`"0,1,2"` -> [0, 1, 2]; at least one seed, no repeats."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ClearRLError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ClearRLError(f"--seeds needs one or more distinct seeds, got {text!r}")
    return seeds


def _stack(frames: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(mean, min, max) cell by cell over frames with the same labels (a cell missing in one seed
    is left out of that cell's statistics); rows and columns keep the first frame's order."""
    order_rows = list(dict.fromkeys(i for f in frames for i in f.index))
    order_cols = list(dict.fromkeys(c for f in frames for c in f.columns))
    stacked = pd.concat(
        [f.reindex(index=order_rows, columns=order_cols) for f in frames], keys=range(len(frames))
    )
    grouped = stacked.groupby(level=1, sort=False)
    return tuple(
        g.reindex(index=order_rows, columns=order_cols)
        for g in (grouped.mean(), grouped.min(), grouped.max())
    )


def mean_measures(runs: Sequence[Measures]) -> tuple[Measures, Measures, Measures]:
    """(mean, min, max) of several runs' `Measures`, cell by cell."""
    parts = {}
    for name in ("accuracy", "trigger", "gain", "per_corruption"):
        parts[name] = _stack([getattr(r, name) for r in runs])
    quality = pd.DataFrame([r.quality for r in runs])
    stats = [quality.mean(), quality.min(), quality.max()] if len(quality.columns) else [pd.Series()] * 3
    out = []
    for i in range(3):
        per_corruption = parts["per_corruption"][i]
        if "gain" in per_corruption.columns:
            per_corruption = per_corruption.sort_values("gain", ascending=False)
        out.append(
            Measures(
                accuracy=parts["accuracy"][i],
                trigger=parts["trigger"][i],
                gain=parts["gain"][i],
                per_corruption=per_corruption,
                quality={k: float(v) for k, v in stats[i].items()},
            )
        )
    return out[0], out[1], out[2]


def _spread(mean: pd.DataFrame, low: pd.DataFrame, high: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: 'mean (min-max)'."""
    text = mean.copy().astype(object)
    for r in mean.index:
        for c in mean.columns:
            m, lo, hi = mean.loc[r, c], low.loc[r, c], high.loc[r, c]
            text.loc[r, c] = "–" if pd.isna(m) else f"{m:.1f} ({lo:.1f}–{hi:.1f})"
    return text


def spread_tables(runs: Sequence[Measures], order: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Every SUMMARY table over the seeds, as 'mean (min–max)' text; per-corruption rows in `order`."""
    out = {}
    for name in ("accuracy", "robustness", "trigger", "gain", "per_corruption"):
        mean, low, high = _stack([tables_of(r)[name] for r in runs])
        if name == "per_corruption":
            mean, low, high = (f.reindex(order) for f in (mean, low, high))
        out[name] = _spread(mean, low, high)
    return out


def _margin(run: Measures) -> pd.Series:
    """CLEAR-RL - Base accuracy per level."""
    levels = [lv for lv in LEVELS if lv in run.accuracy.columns]
    return pd.Series(
        {lv: run.get("accuracy", "CLEAR-RL", lv) - run.get("accuracy", "Base", lv) for lv in levels}
    )


def write_seeds_summary(root: Path, seeds: Sequence[int]) -> Path:
    """OUT/SUMMARY.md and SUMMARY.json from each seed's `seed_<n>/SUMMARY.json`."""
    records = {}
    for seed in seeds:
        path = Path(root, SEED_FOLDER.format(seed=seed), "SUMMARY.json")
        if not path.exists():
            raise ClearRLError(f"{path} is missing: run that seed first (clear-rl demo --seeds ... --reuse)")
        records[seed] = json.loads(path.read_text(encoding="utf-8"))
    runs = [Measures.from_json(records[s]) for s in seeds]
    mean, low, high = mean_measures(runs)
    checks = targets(mean, runs if len(runs) > 1 else ())
    margins = pd.DataFrame({f"seed {s}": _margin(r) for s, r in zip(seeds, runs)}).T
    margins.loc["mean"] = _margin(mean)
    rhos = {
        f"seed {s}": spearman(r.per_corruption.get("gain"), r.per_corruption.get("trigger"))
        if {"gain", "trigger"} <= set(r.per_corruption.columns)
        else math.nan
        for s, r in zip(seeds, runs)
    }
    lines = [
        f"# CLEAR demo over seeds {', '.join(map(str, seeds))}: tiny unified model on ShapesVQA (CPU)",
        "",
        f"Machine: {describe_machine()}. Cells: mean (min–max) over the seeds; per-seed runs in "
        f"{SEED_FOLDER.format(seed='<n>')}/SUMMARY.md.",
        "",
        *tables_lines(spread_tables(runs, list(mean.per_corruption.index)), cell=str),
        "## CLEAR-RL − Base accuracy (points) per level",
        markdown(margins, "seed"),
        "",
        "Spearman per seed (gain vs CLEAR-RL trigger at High): "
        + ", ".join(f"{k} {v:.2f}" for k, v in rhos.items()),
        "",
        "## Targets, judged on the mean over seeds",
        *target_lines(checks),
        "",
        "## Time per seed (wall / CPU seconds, whole pipeline)",
    ]
    for seed in seeds:
        wall, cpu = records[seed].get("timings_s", {}), records[seed].get("cpu_s", {})
        reused = records[seed].get("reused") or []
        note = f" ({len(reused)} steps reused from an earlier run)" if reused else ""
        lines.append(
            f"- seed {seed}: {wall.get('total', math.nan):.0f} / {cpu.get('total', math.nan):.0f}{note}"
        )
    write_text(root / "SUMMARY.md", "\n".join(lines) + "\n")
    record = {
        "seeds": list(seeds),
        "machine": describe_machine(),
        "mean": mean.to_json(),
        "min": low.to_json(),
        "max": high.to_json(),
        "robustness_mean": json.loads(robustness_frame(mean).to_json(orient="index")),
        "clear_rl_minus_base": json.loads(margins.to_json(orient="index")),
        "spearman_per_seed": rhos,
        "targets": [asdict(t) for t in checks],
        "per_seed": {str(s): records[s] for s in seeds},
    }
    write_text(root / "SUMMARY.json", json.dumps(record, indent=2))
    return root / "SUMMARY.md"


def run_seeds(config, seeds: Sequence[int], reuse: bool = False) -> Path:
    """The whole demo once per seed (`config` with that seed, into OUT/seed_<n>), then the summary."""
    from clear_rl.demo.pipeline import run_demo

    root = Path(config.out_dir)
    for seed in seeds:
        print(f"\n##### seed {seed}", flush=True)
        run_demo(replace(config, seed=seed, out_dir=str(root / SEED_FOLDER.format(seed=seed))), reuse=reuse)
    summary = write_seeds_summary(root, seeds)
    print(summary.read_text(encoding="utf-8"), flush=True)
    return summary
