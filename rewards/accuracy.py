"""Built-in reward `accuracy`: 1 for a right answer, 0 for a wrong one (MM-Vet style partial credit).

Reads the reference from the dataset column `answer` and multiple-choice options from the
columns A..Z or an `options` column. Rule-based by default (`clear_rl.eval.extract`); with
`judge: true` in the recipe, answers the rules do not find right are graded by the LLM judge
configured through CLEAR_RL_JUDGE_URL / CLEAR_RL_JUDGE_MODEL / CLEAR_RL_JUDGE_API_KEY (the paper
uses a judge). Rows without a reference get None, which TRL leaves out of the weighted sum.
"""

from __future__ import annotations

from clear_rl.rewards import answer_scores


def accuracy_reward(
    prompts, completions, answer, judge: bool = False, judge_workers: int = 8, **kwargs
) -> list[float | None]:
    return answer_scores(completions, answer, kwargs, judge=judge, judge_workers=judge_workers)
