"""Helpers for writing reward plugins: the completion's text, a row's options, answer scores.

TRL hands a reward `completions` as strings, or, for conversational datasets, as message lists
(`[{"role": "assistant", "content": "..."}]`, content possibly a list of typed parts), and every
dataset column as a keyword list aligned with the completions. The built-in rewards in `rewards/`
use these helpers; user plugins may too (`from clear_rl.rewards import completion_text`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clear_rl.data.prompts import is_missing
from clear_rl.data.prompts import row_options as _row_options
from clear_rl.eval.extract import extract_answer_block, score_answer


def completion_text(completion: Any) -> str:
    """The generated text of one completion, plain or conversational."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, Mapping)]
        spoken = [m for m in messages if m.get("role") == "assistant"] or messages
        return "".join(_content_text(m.get("content")) for m in spoken)
    raise TypeError(
        f"a completion must be a string or a list of chat messages, got {type(completion).__name__}"
    )


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            part.get("text", "") if isinstance(part, Mapping) else str(part)
            for part in content
            if not isinstance(part, Mapping) or part.get("type", "text") == "text"
        )
    return str(content)


def row_options(columns: Mapping[str, Sequence[Any]], row: int) -> dict[str, str] | None:
    """Row `row`'s options {letter: text} from TRL's column-wise keyword lists (see data.prompts)."""
    try:
        return _row_options(
            {key: values[row] for key, values in columns.items() if isinstance(values, Sequence)}
        )
    except ValueError as exc:
        raise ValueError(f"row {row}: {exc}") from None


@dataclass
class AnswerGrades:
    """Per completion: the accuracy in [0, 1] (None without a reference) and who graded it."""

    scores: list[float | None]
    graded_by: list[str]  # "rules" | "judge" | "" (no reference answer)


def answer_grades(
    completions: Sequence[Any],
    answers: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
    judge: bool = False,
    judge_workers: int = 8,
    judge_every: bool = False,
    judge_style: str = "default",
) -> AnswerGrades:
    """`answer_scores` with each score's grader; `judge_every` sends every answer to the judge
    (MM-Vet's protocol, with `judge_style="mmvet"`), not only those the rules do not find right.
    A judge failure under CLEAR_RL_JUDGE_ON_FAILURE=rules leaves the rule score, graded `rules`."""
    texts = [completion_text(c) for c in completions]
    options = {i: row_options(columns, i) for i, answer in enumerate(answers) if not is_missing(answer)}
    scores: list[float | None] = [None] * len(texts)
    graded_by = [""] * len(texts)
    for i, row_choices in options.items():
        scores[i], graded_by[i] = score_answer(texts[i], str(answers[i]), row_choices), "rules"
    if not judge:
        return AnswerGrades(scores, graded_by)
    from clear_rl.eval.judge import judge_scores

    unsure = [i for i, score in enumerate(scores) if score is not None and (judge_every or score < 1.0)]
    questions = columns["question"] if "question" in columns else [""] * len(texts)
    graded = judge_scores(
        [_question_with_options(str(questions[i]), options[i]) for i in unsure],
        [str(answers[i]) for i in unsure],
        [extract_answer_block(texts[i]) for i in unsure],
        max_workers=judge_workers,
        style=judge_style,
    )
    for i, score in zip(unsure, graded):
        if score is not None:  # None: the judge failed and CLEAR_RL_JUDGE_ON_FAILURE=rules
            scores[i], graded_by[i] = score, "judge"
    return AnswerGrades(scores, graded_by)


def answer_scores(
    completions: Sequence[Any],
    answers: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
    judge: bool = False,
    judge_workers: int = 8,
) -> list[float | None]:
    """Accuracy in [0, 1] per completion; None where the row has no reference answer.

    Rule-based (`clear_rl.eval.extract.score_answer`). With `judge`, answers the rules do not
    find fully right go to the LLM judge (configured by CLEAR_RL_JUDGE_* variables), which sees
    the question (column `question`) with its options, the reference and the answer block: the
    way VLMEvalKit asks its judge only about what exact matching cannot settle. The judge's
    verdicts are cached (`clear_rl.eval.judge`), so every reward that scores answers (accuracy,
    then decision) costs one judge request per distinct completion, however many ask. Where the
    judge fails under CLEAR_RL_JUDGE_ON_FAILURE=rules, the rule score stays (a counted warning).
    """
    return answer_grades(completions, answers, columns, judge, judge_workers).scores


def _question_with_options(question: str, options: Mapping[str, str] | None) -> str:
    if not options:
        return question
    return question + "\nOptions: " + " ".join(f"{letter}. {text}" for letter, text in options.items())
