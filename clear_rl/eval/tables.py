"""Markdown table helpers shared by every evaluation report module."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

LEVEL_TITLES = {"clean": "Clean", "low": "Low", "mid": "Mid", "high": "High"}


def cell(value: float | None, digits: int = 2) -> str:
    """A number as a table cell; missing values (None, NaN) show as an en dash."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; cells are shown with str()."""
    # By hand: DataFrame.to_markdown needs `tabulate`, which clear-rl does not depend on.
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
