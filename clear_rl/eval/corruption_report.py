"""Per-corruption results: the 16 MMD-Bench corruptions one by one, at each level.

Input: the report's per-file scores (`report.score_results`), where files that hold a single
corruption carry it in `corruption`: CLEAR's released per-corruption set (`MMStar_graffiti.tsv`,
High) and `clear-rl degrade --mode full` outputs (`MMStar_MMD_graffiti_mid.tsv`).
- `corruption_table`: for one model and level, a row per corruption, a column per benchmark, AVG.
- `corruption_drop`: per model, corruption and level, the accuracy drop from clean (clean score
  minus the corruption's, averaged over the benchmarks that have both), for the heat map.
"""

from __future__ import annotations

import math

import pandas as pd

from clear_rl.eval.scoring import CORRUPTIONS, LEVELS
from clear_rl.eval.tables import LEVEL_TITLES, benchmark_order, cell, markdown_table, score_row

DROP_COLUMNS = ["model", "corruption", "level", "clean", "score", "drop", "benchmarks"]


def per_corruption(scores: pd.DataFrame) -> pd.DataFrame:
    """The scores of single-corruption files (scored ones only)."""
    return scores[(scores["corruption"] != "") & scores["score"].notna()]


def _ordered(corruptions) -> list[str]:
    present = set(corruptions)
    return [c for c in CORRUPTIONS if c in present] + sorted(present - set(CORRUPTIONS))


def corruption_levels(scores: pd.DataFrame, model: str) -> list[str]:
    """The levels at which `model` has single-corruption results, in LEVELS order."""
    mine = scores[(scores["model"] == model) & (scores["corruption"] != "")]
    return [lv for lv in LEVELS if lv in set(mine["level"])]


def corruption_table(scores: pd.DataFrame, model: str, level: str = "high") -> str:
    """One model at one level: rows = corruptions, columns = benchmarks + AVG."""
    mine = scores[(scores["model"] == model) & (scores["corruption"] != "") & (scores["level"] == level)]
    benchmarks = benchmark_order(mine)
    rows = [[c, *score_row(mine[mine["corruption"] == c], benchmarks)] for c in _ordered(mine["corruption"])]
    return markdown_table(["Corruption", *benchmarks, "AVG"], rows)


def corruption_drop(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model, corruption and level: mean clean score, mean corrupted score and their
    difference (points), over the benchmarks the model has both clean and under that corruption."""
    rows = []
    corrupted = per_corruption(scores)
    clean = scores[(scores["level"] == "clean") & (scores["corruption"] == "") & scores["score"].notna()]
    for (model, corruption, level), group in corrupted.groupby(["model", "corruption", "level"], sort=False):
        reference = clean[clean["model"] == model].set_index("benchmark")["score"]
        paired = group[group["benchmark"].isin(reference.index)]
        if paired.empty:
            continue
        clean_mean = float(reference[paired["benchmark"]].mean())
        score = float(paired["score"].mean())
        rows.append(
            [model, corruption, level, clean_mean, score, clean_mean - score, list(paired["benchmark"])]
        )
    table = pd.DataFrame(rows, columns=DROP_COLUMNS)
    if table.empty:
        return table
    rank = {c: i for i, c in enumerate(_ordered(table["corruption"]))}
    model_rank = {m: i for i, m in enumerate(dict.fromkeys(scores["model"]))}
    key = pd.DataFrame(
        {
            "m": table["model"].map(model_rank),
            "c": table["corruption"].map(rank),
            "l": table["level"].map(LEVELS.index),
        }
    )
    return table.loc[key.sort_values(["m", "c", "l"]).index].reset_index(drop=True)


def drop_table(drops: pd.DataFrame, model: str) -> str:
    """One model's drops from clean: rows = corruptions, columns = levels (points, lower is better)."""
    mine = drops[drops["model"] == model]
    levels = [lv for lv in LEVELS if lv in set(mine["level"])]
    by_cell = {(r.corruption, r.level): r.drop for r in mine.itertuples()}
    rows = [
        [c, *(cell(by_cell.get((c, lv), math.nan)) for lv in levels)] for c in _ordered(mine["corruption"])
    ]
    return markdown_table(["Corruption", *(f"{LEVEL_TITLES[lv]} drop (↓)" for lv in levels)], rows)


def corruption_sections(scores: pd.DataFrame) -> list[str]:
    """The report's per-corruption sections: a table per model and level, then the drops."""
    parts = []
    models = list(dict.fromkeys(scores.loc[scores["corruption"] != "", "model"]))
    for model in models:
        for level in corruption_levels(scores, model):
            table = corruption_table(scores, model, level)
            parts.append(f"## {model} per corruption ({LEVEL_TITLES[level]})\n\n{table}")
    drops = corruption_drop(scores)
    for model in dict.fromkeys(drops["model"]):
        parts.append(
            f"## {model}: accuracy drop from clean per corruption (points; `corruption_drop.png`)\n\n"
            f"{drop_table(drops, model)}"
        )
    return parts
