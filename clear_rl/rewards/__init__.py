"""Rewards: a recipe's `rewards:` list -> TRL reward functions and their weights.

    loader.py    the list's entries (built-in name, file path or dotted path, parameters,
                 weight) -> checked, TRL-ready callables (`load_rewards`)
    helpers.py   what a plugin needs to read a completion and score an answer
                 (`completion_text`, `row_options`, `answer_scores`, `answer_grades`)
    builtin/     the built-ins, `name: <name>` -> `clear_rl.rewards.builtin.<name>.<name>_reward`:
                 the top-level `rewards/` folder, written exactly as a user's plugin is

A plugin imports its helpers from here: `from clear_rl.rewards import completion_text`.
"""

from clear_rl.rewards.helpers import (
    AnswerGrades,
    answer_grades,
    answer_scores,
    completion_text,
    row_options,
)
from clear_rl.rewards.loader import (
    AsyncLoadedReward,
    LoadedReward,
    RewardSpec,
    builtin_reward_names,
    check_reward_values,
    load_reward,
    load_rewards,
    parse_reward_spec,
    parse_reward_specs,
)

__all__ = [
    "AnswerGrades",
    "AsyncLoadedReward",
    "LoadedReward",
    "RewardSpec",
    "answer_grades",
    "answer_scores",
    "builtin_reward_names",
    "check_reward_values",
    "completion_text",
    "load_reward",
    "load_rewards",
    "parse_reward_spec",
    "parse_reward_specs",
    "row_options",
]
