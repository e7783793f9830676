"""Evaluation reports in the paper's layout: benchmark tables, robustness (Clean / Hard / Drop),
per-corruption tables, restoration trigger rate and latency per level (the paper's Figure 6).

Input: `{model: {dataset_name: results_frame}}`, one frame per benchmark file and level, as the
runner writes them (see `clear_rl.eval.scoring`), scored under one protocol (`paper` or
`vlmevalkit`), which the report names. AVG is the mean over the benchmarks a row shows (marked
`*` where one of them was not scored: MM-Vet without a judge); Drop = Clean - Hard over the
benchmarks a model has scored at both levels (so already-degraded R-Bench-Dis counts in the Hard
table but not in the Drop, as in the paper). Rates, latencies and token counts per level are
means over benchmarks. Every file is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from clear_rl.errors import DataError
from clear_rl.eval import plots
from clear_rl.eval.corruption_report import corruption_drop, corruption_sections
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
from clear_rl.eval.scoring import (
    LEVELS,
    PROTOCOL_SUMMARIES,
    check_protocol,
    parse_dataset_name,
    score_benchmark,
)
from clear_rl.eval.tables import LEVEL_TITLES, PARTIAL_AVG, benchmark_order, markdown_table, score_row
from clear_rl.eval.tables import cell as _cell
from clear_rl.io.atomic import atomic_path, write_text

Results = Mapping[str, Mapping[str, pd.DataFrame]]
# Per-row columns too large or binary for a predictions file.
DROPPED_ROW_COLUMNS = ("image", "image_path")


def score_results(results: Results, protocol: str = "paper") -> pd.DataFrame:
    """One row per (model, benchmark file): score, units, trigger rate, latency, tokens, breakdown,
    under `protocol` (see `scoring`); `scored` is False (score NaN, `note` why) for what it cannot score."""
    rows = []
    for model, datasets in results.items():
        for dataset, frame in datasets.items():
            rows.append({"model": model, **asdict(score_benchmark(frame, dataset, protocol=protocol))})
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


def benchmark_table(scores: pd.DataFrame, level: str = "high", models: Sequence[str] | None = None) -> str:
    """The paper's main table: rows = models, columns = benchmarks + AVG, at one level."""
    scores = mixed_levels(scores)
    at_level = scores[scores["level"] == level]
    benchmarks = benchmark_order(at_level)
    models = list(models) if models is not None else list(dict.fromkeys(at_level["model"]))
    rows = [[m, *score_row(at_level[at_level["model"] == m], benchmarks)] for m in models]
    return markdown_table(["Method", *benchmarks, "AVG"], rows)


def levels_table(scores: pd.DataFrame, model: str) -> str:
    """One model across MMD-Bench levels: rows = Clean/Low/Mid/High, columns = benchmarks + AVG."""
    mixed = mixed_levels(scores)
    mine = mixed[mixed["model"] == model]
    benchmarks = benchmark_order(mine)
    levels = [lv for lv in LEVELS if lv in set(mine["level"])]
    rows = [[LEVEL_TITLES[lv], *score_row(mine[mine["level"] == lv], benchmarks)] for lv in levels]
    return markdown_table(["Level", *benchmarks, "AVG"], rows)


def robustness(scores: pd.DataFrame, hard_level: str = "high") -> pd.DataFrame:
    """Per model: Clean and Hard means over benchmarks present at both levels, Drop = Clean - Hard."""
    rows = []
    scores = mixed_levels(scores)
    for model in dict.fromkeys(scores["model"]):
        mine = scores[scores["model"] == model]
        clean = mine[mine["level"] == "clean"].set_index("benchmark")["score"].dropna()
        hard = mine[mine["level"] == hard_level].set_index("benchmark")["score"].dropna()
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


def _one_line(text: str) -> str:
    """Text for a table cell: pipes escaped, line breaks shown as ⏎."""
    return str(text).replace("|", "\\|").replace("\r\n", "\n").replace("\n", " ⏎ ")


def setup_section(protocol: str, runs: Runs | None) -> str:
    """What the numbers mean: the scoring protocol and, per run, the system prompt it was asked with."""
    text = f"## Setup\n\nProtocol: `{protocol}`: {PROTOCOL_SUMMARIES[protocol]}\n"
    prompted = {label: run for label, run in (runs or {}).items() if "prompt_source" in run}
    if prompted:
        rows = [
            [label, f"`{_one_line(run['system_prompt'])}`" if run["system_prompt"] else "(none)",
             _one_line(run["prompt_source"])]
            for label, run in prompted.items()
        ]  # fmt: skip
        text += "\n" + markdown_table(["Run", "System prompt", "From"], rows)
    return text + preset_section(runs)


def preset_section(runs: Runs | None) -> str:
    """The inference preset of each BAGEL-family run and every value it ran with ("" when none):
    a value a flag changed is marked *."""
    preset_runs = {label: run for label, run in (runs or {}).items() if run.get("preset")}
    if not preset_runs:
        return ""
    settings = list(dict.fromkeys(key for run in preset_runs.values() for key in run["inference"]))
    header = ["Setting", *(f"{label}: `{run['preset']}`" for label, run in preset_runs.items())]
    rows = [
        [name, *(_one_line(run["inference"].get(name, "")) + (" *" if name in run.get("changed", ()) else "")
                 for run in preset_runs.values())]
        for name in settings
    ]  # fmt: skip
    summaries = "".join(
        f"- `{name}`: {summary}\n"
        for name, summary in dict.fromkeys(
            (r["preset"], r.get("preset_summary", "")) for r in preset_runs.values()
        )
    )
    note = (
        "\n\\* changed from the preset by a flag.\n"
        if any(r.get("changed") for r in preset_runs.values())
        else ""
    )
    return (
        "\n### Inference preset (BAGEL-family models)\n\n" + summaries + "\n"
        + markdown_table(header, rows) + note
    )  # fmt: skip


def unscored_notes(scores: pd.DataFrame) -> str:
    """A line per file its protocol could not score, and what the AVG mark means; "" when none."""
    skipped = scores[~scores["scored"].astype(bool)]
    if skipped.empty:
        return ""
    lines = [f"- {r.benchmark} ({r.dataset}, {r.model}): not scored. {r.note}" for r in skipped.itertuples()]
    lines.append(
        f"- `{PARTIAL_AVG}`: AVG over the scored benchmarks only; Drop leaves out what is not scored."
    )
    return "## Not scored\n\n" + "\n".join(dict.fromkeys(lines)) + "\n"


def markdown_report(
    scores: pd.DataFrame,
    title: str = "Evaluation",
    rows: pd.DataFrame | None = None,
    runs: Runs | None = None,
    protocol: str = "paper",
) -> str:
    """All tables in one Markdown document (the restoration ones when `rows` are given)."""
    parts = [f"# {title}\n", setup_section(check_protocol(protocol), runs)]
    mixed = mixed_levels(scores)
    levels = [lv for lv in LEVELS if lv in set(mixed["level"])]
    for level in reversed(levels):
        parts.append(f"## {LEVEL_TITLES[level]}\n\n{benchmark_table(scores, level)}")
    if not robustness(scores).empty:
        parts.append(f"## Robustness (Drop = Clean - Hard)\n\n{robustness_table(scores)}")
    for model in dict.fromkeys(mixed["model"]):
        parts.append(f"## {model} across levels\n\n{levels_table(scores, model)}")
    parts += corruption_sections(scores)
    notes = unscored_notes(scores)
    if notes:
        parts.append(notes)
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
    protocol: str = "paper",
) -> dict[str, Path]:
    """Score everything under `protocol` and write report.md, scores.{csv,json},
    predictions.{csv,json}, trigger_latency.png and, where there is something to show,
    corruption_drop.{csv,png}, restoration_quality.csv, restoration_gain.csv, readback.csv,
    bridge_fidelity.csv, restoration.png and one gallery_<run>.png per run with saved examples
    (`gallery` rows per corruption).

    `runs` maps run labels (the keys of `results`) to their model, restore policy and readback
    (see `restoration_report`) and, from the runner, the system prompt used and where it came
    from (`system_prompt`, `prompt_source`); without it every label is a plain run of its own model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    protocol = check_protocol(protocol)
    scores = score_results(results, protocol)
    rows = prediction_rows(results)
    files = {
        name: out / name
        for name in ("report.md", "scores.csv", "scores.json", "predictions.csv", "predictions.json")
    }
    write_text(files["report.md"], markdown_report(scores, title, rows, runs, protocol))
    with atomic_path(files["scores.csv"]) as tmp:
        run_columns(scores, runs).drop(columns=["breakdown"]).to_csv(tmp, index=False)
    tables = {
        "corruption_drop": corruption_drop(scores),
        "restoration_quality": restoration_quality(rows),
        "restoration_gain": restoration_gain(rows, runs),
        "readback": readback_comparison(scores, runs),
        "bridge_fidelity": bridge_fidelity(scores, runs),
    }
    summary = {
        "protocol": protocol,
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
    if not tables["corruption_drop"].empty:
        files["corruption_drop.png"] = plots.plot_corruption_drop(
            tables["corruption_drop"], out / "corruption_drop.png"
        )
    figure = plots.plot_restoration(
        tables["restoration_quality"], tables["restoration_gain"], out / "restoration.png"
    )
    if figure is not None:
        files["restoration.png"] = figure
    files.update(write_galleries(rows, out, gallery))
    return files
