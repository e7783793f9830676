"""Markdown table helpers shared by every evaluation report module."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

from clear_rl.eval.scoring import PAPER_ORDER

LEVEL_TITLES = {"clean": "Clean", "low": "Low", "mid": "Mid", "high": "High"}
# Marks an AVG taken over fewer benchmarks than the row shows (one was not scored: MM-Vet without a judge).
PARTIAL_AVG = "*"


def cell(value: float | None, digits: int = 2) -> str:
    """A number as a table cell; missing values (None, NaN) show as an en dash."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; cells are shown with str()."""
    # By hand: DataFrame.to_markdown needs `tabulate`, which clear-rl does not depend on.
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def benchmark_order(scores: pd.DataFrame) -> list[str]:
    """The benchmarks of `scores` in the paper's column order, others after them alphabetically."""
    present = list(dict.fromkeys(scores["benchmark"]))
    return [b for b in PAPER_ORDER if b in present] + sorted(b for b in present if b not in PAPER_ORDER)


def score_row(scores: pd.DataFrame, benchmarks: list[str]) -> list[str]:
    """Cells of one table row: each benchmark's score, then AVG over the scored ones (marked with
    PARTIAL_AVG when a benchmark the row has was not scored)."""
    by_benchmark = dict(zip(scores["benchmark"], scores["score"]))
    values = [by_benchmark.get(b) for b in benchmarks]
    scored = [v for v in values if v is not None and not math.isnan(v)]
    partial = any(v is not None and math.isnan(v) for v in values)
    average = cell(sum(scored) / len(scored) if scored else None)
    return [cell(v) for v in values] + [average + PARTIAL_AVG if partial and scored else average]
