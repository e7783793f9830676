"""A VQA row's options and the text of its prompt, the same in training, rewards and evaluation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

OPTION_LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
MCQ_INSTRUCTION = "Answer with the option's letter from the given choices."


def is_missing(value: Any) -> bool:
    """None, NaN, or an empty / 'nan' string: what pandas and datasets use for an empty cell."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def row_options(row: Mapping[str, Any]) -> dict[str, str] | None:
    """A row's multiple-choice options {letter: text}, from an `options` cell or columns A..Z.

    An `options` cell may be a mapping, a list (lettered A, B, ...) or its JSON text. None when the
    row has no options (a short-answer question). `row` is any mapping: a dict, a pandas row.
    """
    cell = row.get("options")
    if not is_missing(cell) and not isinstance(cell, float):
        if isinstance(cell, str):
            try:
                cell = json.loads(cell)
            except json.JSONDecodeError:
                raise ValueError(f"the 'options' cell is not JSON: {cell[:80]!r}") from None
        if isinstance(cell, Mapping):
            options = {str(k).strip().upper(): str(v) for k, v in cell.items() if not is_missing(v)}
        elif isinstance(cell, Sequence):
            options = {OPTION_LETTERS[i]: str(v) for i, v in enumerate(cell) if not is_missing(v)}
        else:
            raise ValueError(f"the 'options' cell must be a mapping or a list, got {type(cell).__name__}")
        return options or None
    options = {
        letter: str(row.get(letter)).strip() for letter in OPTION_LETTERS if not is_missing(row.get(letter))
    }
    return options or None


def format_question(question: str, options: Mapping[str, str] | None = None) -> str:
    """`question`, then one `X. option` line per option and the instruction to answer with a letter."""
    if not options:
        return question.strip()
    lines = [question.strip(), *(f"{letter}. {text}" for letter, text in options.items()), MCQ_INSTRUCTION]
    return "\n".join(lines)
