"""Built-in reward `decision`: was restoring (or not) the right call, judged by the outcome?

correct = accuracy > 0.5 (the `accuracy` reward's rules, or its judge with `judge: true`: the
judge's cached verdicts, so beside `accuracy` it asks the judge nothing more); `restored` is the
per-completion flag clear-rl's GRPO trainer passes.

| matrix            | restored & correct | skipped & correct | restored & wrong | skipped & wrong |
|-------------------|--------------------|-------------------|------------------|-----------------|
| `paper` (default) | +1.0               | 0.0               | 0.0              | -1.0            |
| `released`        | 1.0                | 0.6               | 0.4              | -0.2            |

A recipe may also give its own matrix as a mapping with the four keys `restored_correct`,
`skipped_correct`, `restored_wrong`, `skipped_wrong`. Rows without a reference answer get None.
"""

from __future__ import annotations

from collections.abc import Mapping

from clear_rl.errors import RewardError
from clear_rl.rewards import answer_scores

CELLS = ("restored_correct", "skipped_correct", "restored_wrong", "skipped_wrong")
MATRICES = {
    "paper": {"restored_correct": 1.0, "skipped_correct": 0.0, "restored_wrong": 0.0, "skipped_wrong": -1.0},
    "released": {
        "restored_correct": 1.0,
        "skipped_correct": 0.6,
        "restored_wrong": 0.4,
        "skipped_wrong": -0.2,
    },
}


def decision_matrix(matrix: str | Mapping[str, float]) -> dict[str, float]:
    if isinstance(matrix, str):
        if matrix not in MATRICES:
            raise RewardError(f"matrix must be one of {sorted(MATRICES)} or a mapping, got {matrix!r}")
        return MATRICES[matrix]
    if not isinstance(matrix, Mapping):
        raise RewardError(f"matrix must be a name or a mapping, got {type(matrix).__name__}")
    unknown = sorted(set(matrix) - set(CELLS))
    missing = [cell for cell in CELLS if cell not in matrix]
    if unknown or missing:
        raise RewardError(f"matrix keys must be exactly {list(CELLS)}; unknown {unknown}, missing {missing}")
    try:
        return {cell: float(matrix[cell]) for cell in CELLS}
    except (TypeError, ValueError):
        raise RewardError(f"matrix values must be numbers, got {dict(matrix)}") from None


def decision_reward(
    prompts, completions, restored, answer, matrix="paper", judge: bool = False, **kwargs
) -> list[float | None]:
    table = decision_matrix(matrix)
    accuracies = answer_scores(completions, answer, kwargs, judge=judge)
    rewards: list[float | None] = []
    for did_restore, accuracy in zip(restored, accuracies):
        if accuracy is None:
            rewards.append(None)
            continue
        action = "restored" if did_restore else "skipped"
        outcome = "correct" if accuracy > 0.5 else "wrong"
        rewards.append(table[f"{action}_{outcome}"])
    return rewards
