"""Evaluation reports in the paper's layout: benchmark tables, robustness (Clean / Hard / Drop),
restoration trigger rate and latency per level (the paper's Figure 6).

Input: `{model: {dataset_name: results_frame}}`, one frame per benchmark file and level, as the
runner writes them (see `clear_rl.eval.scoring`). AVG is the mean over the benchmarks a row
shows; Drop = Clean - Hard over the benchmarks a model has at both levels (so already-degraded
R-Bench-Dis counts in the Hard table but not in the Drop, as in the paper). Rates, latencies and
token counts per level are means over benchmarks. Every file is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from clear_rl.errors import DataError
from clear_rl.eval import plots
from clear_rl.eval.gallery import write_galleries
from clear_rl.eval.restoration_report import (
    Runs,
    bridge_fidelity,
    readback_comparison,
    restoration_gain,
    restoration_quality,
    restoration_sections,
    run_columns,
)
from clear_rl.eval.scoring import CORRUPTIONS, LEVELS, PAPER_ORDER, parse_dataset_name, score_benchmark
from clear_rl.eval.tables import LEVEL_TITLES, markdown_table
from clear_rl.eval.tables import cell as _cell
from clear_rl.io.atomic import atomic_path, write_text

Results = Mapping[str, Mapping[str, pd.DataFrame]]
# Per-row columns too large or binary for a predictions file.
DROPPED_ROW_COLUMNS = ("image", "image_path")


def score_results(results: Results) -> pd.DataFrame:
    """One row per (model, benchmark file): score, units, trigger rate, latency, tokens, breakdown."""
    rows = []
    for model, datasets in results.items():
        for dataset, frame in datasets.items():
            rows.append({"model": model, **asdict(score_benchmark(frame, dataset))})
    if not rows:
        raise DataError("no results to report: expected {model: {dataset_name: results_frame}}")
    table = pd.DataFrame(rows)
    duplicated = table.duplicated(["model", "benchmark", "level", "corruption"], keep=False)
    if duplicated.any():
        clash = table.loc[duplicated, ["model", "dataset"]].values.tolist()
        raise DataError(f"several result files map to the same model, benchmark and level: {clash}")
    return table


def mixed_levels(scores: pd.DataFrame) -> pd.DataFrame:
    """The MMD-Bench level results, without CLEAR's per-corruption files (those have their own table)."""
    return scores[scores["corruption"] == ""]


def _benchmark_order(scores: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(scores["benchmark"]))
    return [b for b in PAPER_ORDER if b in present] + sorted(b for b in present if b not in PAPER_ORDER)


def _score_row(scores: pd.DataFrame, benchmarks: list[str]) -> list[str]:
    by_benchmark = dict(zip(scores["benchmark"], scores["score"]))
    values = [by_benchmark.get(b) for b in benchmarks]
    shown = [v for v in values if v is not None]
    return [_cell(v) for v in values] + [_cell(sum(shown) / len(shown) if shown else None)]


def benchmark_table(scores: pd.DataFrame, level: str = "high", models: Sequence[str] | None = None) -> str:
    """The paper's main table: rows = models, columns = benchmarks + AVG, at one level."""
    scores = mixed_levels(scores)
    at_level = scores[scores["level"] == level]
    benchmarks = _benchmark_order(at_level)
    models = list(models) if models is not None else list(dict.fromkeys(at_level["model"]))
    rows = [[m, *_score_row(at_level[at_level["model"] == m], benchmarks)] for m in models]
    return markdown_table(["Method", *benchmarks, "AVG"], rows)


def levels_table(scores: pd.DataFrame, model: str) -> str:
    """One model across MMD-Bench levels: rows = Clean/Low/Mid/High, columns = benchmarks + AVG."""
    mixed = mixed_levels(scores)
    mine = mixed[mixed["model"] == model]
    benchmarks = _benchmark_order(mine)
    levels = [lv for lv in LEVELS if lv in set(mine["level"])]
    rows = [[LEVEL_TITLES[lv], *_score_row(mine[mine["level"] == lv], benchmarks)] for lv in levels]
    return markdown_table(["Level", *benchmarks, "AVG"], rows)


def robustness(scores: pd.DataFrame, hard_level: str = "high") -> pd.DataFrame:
    """Per model: Clean and Hard means over benchmarks present at both levels, Drop = Clean - Hard."""
    rows = []
    scores = mixed_levels(scores)
    for model in dict.fromkeys(scores["model"]):
        mine = scores[scores["model"] == model]
        clean = mine[mine["level"] == "clean"].set_index("benchmark")["score"]
        hard = mine[mine["level"] == hard_level].set_index("benchmark")["score"]
        paired = [b for b in clean.index if b in hard.index]
        if not paired:
            continue
        clean_mean, hard_mean = float(clean[paired].mean()), float(hard[paired].mean())
        per_benchmark = {b: float(clean[b] - hard[b]) for b in paired}
        rows.append(
            {
                "model": model,
                "clean": clean_mean,
                "hard": hard_mean,
                "drop": clean_mean - hard_mean,
                "benchmarks": paired,
                "drop_per_benchmark": per_benchmark,
            }
        )
    return pd.DataFrame(rows, columns=["model", "clean", "hard", "drop", "benchmarks", "drop_per_benchmark"])


def robustness_table(scores: pd.DataFrame, hard_level: str = "high") -> str:
    """The paper's robustness table: Method | Clean | Hard | Drop (lower is better)."""
    table = robustness(scores, hard_level)
    rows = [[r.model, _cell(r.clean), _cell(r.hard), _cell(r.drop)] for r in table.itertuples()]
    return markdown_table(["Method", "Clean", "Hard", "Drop (↓)"], rows)


def corruption_table(scores: pd.DataFrame, model: str) -> str:
    """CLEAR's per-corruption set for one model: rows = corruptions (High), columns = benchmarks + AVG."""
    mine = scores[(scores["model"] == model) & (scores["corruption"] != "")]
    benchmarks = _benchmark_order(mine)
    shown = [c for c in CORRUPTIONS if c in set(mine["corruption"])]
    rows = [[c, *_score_row(mine[mine["corruption"] == c], benchmarks)] for c in shown]
    return markdown_table(["Corruption", *benchmarks, "AVG"], rows)


def per_level(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model and level: mean trigger rate (%), latency (s/sample), tokens/sample and accuracy
    (the benchmarks' scores, %) over benchmarks."""
    columns = ["trigger_rate", "latency_s", "num_tokens", "score"]
    scores = mixed_levels(scores)
    grouped = scores.groupby(["model", "level"], sort=False)[columns].mean().reset_index()
    grouped = grouped.rename(columns={"score": "accuracy"})
    model_rank = {model: i for i, model in enumerate(dict.fromkeys(scores["model"]))}
    ranks = pd.DataFrame({"m": grouped["model"].map(model_rank), "l": grouped["level"].map(LEVELS.index)})
    return grouped.loc[ranks.sort_values(["m", "l"]).index].reset_index(drop=True)


def trigger_table(scores: pd.DataFrame) -> str:
    """Restoration trigger rate, latency and generated tokens per level, for every model."""
    rows = [
        [
            r.model,
            LEVEL_TITLES[r.level],
            _cell(r.trigger_rate, 1),
            _cell(r.latency_s, 3),
            _cell(r.num_tokens, 1),
        ]
        for r in per_level(scores).itertuples()
    ]
    return markdown_table(["Model", "Level", "Trigger rate (%)", "Latency (s/sample)", "Tokens/sample"], rows)


def plot_trigger_latency(scores: pd.DataFrame, path: str | Path) -> Path:
    """The paper's Figure 6 with accuracy beside it, from the scores (see `plots.py`)."""
    return plots.plot_trigger_latency(per_level(scores), path)


def prediction_rows(results: Results) -> pd.DataFrame:
    """Every scored row of every model and file, with model, dataset, benchmark and level columns."""
    frames = []
    for model, datasets in results.items():
        for dataset, frame in datasets.items():
            parsed = parse_dataset_name(dataset)
            meta = {
                "model": model,
                "dataset": parsed.dataset,
                "benchmark": parsed.benchmark,
                "level": parsed.level,
            }
            rows = frame.drop(columns=[c for c in (*DROPPED_ROW_COLUMNS, *meta) if c in frame.columns])
            frames.append(rows.assign(**meta)[[*meta, *rows.columns]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def markdown_report(
    scores: pd.DataFrame,
    title: str = "Evaluation",
    rows: pd.DataFrame | None = None,
    runs: Runs | None = None,
) -> str:
    """All tables in one Markdown document (the restoration ones when `rows` are given)."""
    parts = [f"# {title}\n"]
    mixed = mixed_levels(scores)
    levels = [lv for lv in LEVELS if lv in set(mixed["level"])]
    for level in reversed(levels):
        parts.append(f"## {LEVEL_TITLES[level]}\n\n{benchmark_table(scores, level)}")
    if not robustness(scores).empty:
        parts.append(f"## Robustness (Drop = Clean - Hard)\n\n{robustness_table(scores)}")
    for model in dict.fromkeys(mixed["model"]):
        parts.append(f"## {model} across levels\n\n{levels_table(scores, model)}")
    for model in dict.fromkeys(scores.loc[scores["corruption"] != "", "model"]):
        parts.append(f"## {model} per corruption (High)\n\n{corruption_table(scores, model)}")
    parts.append(f"## Restoration trigger rate and cost per level\n\n{trigger_table(scores)}")
    if rows is not None:
        parts += restoration_sections(scores, rows, runs)
    return "\n".join(parts)


def write_report(
    results: Results,
    out_dir: str | Path,
    title: str = "Evaluation",
    runs: Runs | None = None,
    gallery: int = 2,
) -> dict[str, Path]:
    """Score everything and write report.md, scores.{csv,json}, predictions.{csv,json},
    trigger_latency.png and, where there is something to show, restoration_quality.csv,
    restoration_gain.csv, readback.csv, bridge_fidelity.csv, restoration.png and one
    gallery_<run>.png per run with saved examples (`gallery` rows per corruption).

    `runs` maps run labels (the keys of `results`) to their model, restore policy and readback
    (see `restoration_report`); without it every label is a plain run of its own model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = score_results(results)
    rows = prediction_rows(results)
    files = {
        name: out / name
        for name in ("report.md", "scores.csv", "scores.json", "predictions.csv", "predictions.json")
    }
    write_text(files["report.md"], markdown_report(scores, title, rows, runs))
    with atomic_path(files["scores.csv"]) as tmp:
        run_columns(scores, runs).drop(columns=["breakdown"]).to_csv(tmp, index=False)
    tables = {
        "restoration_quality": restoration_quality(rows),
        "restoration_gain": restoration_gain(rows, runs),
        "readback": readback_comparison(scores, runs),
        "bridge_fidelity": bridge_fidelity(scores, runs),
    }
    summary = {
        "runs": dict(runs or {}),
        "scores": json.loads(scores.to_json(orient="records")),
        "robustness": json.loads(robustness(scores).to_json(orient="records")),
        "per_level": json.loads(per_level(scores).to_json(orient="records")),
        **{name: json.loads(table.to_json(orient="records")) for name, table in tables.items()},
    }
    write_text(files["scores.json"], json.dumps(summary, indent=2, ensure_ascii=False))
    for name, table in tables.items():
        if not table.empty:
            files[f"{name}.csv"] = out / f"{name}.csv"
            with atomic_path(files[f"{name}.csv"]) as tmp:
                table.to_csv(tmp, index=False)
    with atomic_path(files["predictions.csv"]) as tmp:
        rows.to_csv(tmp, index=False)
    write_text(files["predictions.json"], rows.to_json(orient="records", force_ascii=False, indent=1))
    files["trigger_latency.png"] = plot_trigger_latency(scores, out / "trigger_latency.png")
    figure = plots.plot_restoration(
        tables["restoration_quality"], tables["restoration_gain"], out / "restoration.png"
    )
    if figure is not None:
        files["restoration.png"] = figure
    files.update(write_galleries(rows, out, gallery))
    return files
