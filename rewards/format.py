"""Built-in reward `format`: does the completion follow the CLEAR token protocol?

`<think>..</think>[<image_restore>][<think>..</think>]<answer>..</answer>`
- `mode: graded` (default, the released code): 0.35 for a `<think>` block, 0.35 for an
  `<answer>` block, 0.3 more when the first think block opens before the answer block.
- `mode: binary` (the paper): 1.0 when the whole completion is exactly the protocol (surrounding
  whitespace and chat-template tokens such as `<|im_end|>` ignored), else 0.0.
"""

from __future__ import annotations

import re

from clear_rl.errors import RewardError
from clear_rl.rewards import completion_text

THINK = re.compile(r"<think>.*?</think>", re.S)
ANSWER = re.compile(r"<answer>.*?</answer>", re.S)
PROTOCOL = re.compile(
    r"\s*<think>(?:(?!</?think>|</?answer>).)+</think>\s*"
    r"(?:<image_restore>\s*(?:<think>(?:(?!</?think>|</?answer>).)+</think>\s*)?)?"
    r"<answer>(?:(?!</?answer>|</?think>).)+</answer>\s*",
    re.S,
)
TEMPLATE_TOKEN = re.compile(r"<\|[^<>|]*\|>")


def graded_format(text: str) -> float:
    think, answer = THINK.search(text), ANSWER.search(text)
    score = 0.35 * bool(think) + 0.35 * bool(answer)
    if think and answer and think.start() < answer.start():
        score += 0.3
    return score


def binary_format(text: str) -> float:
    return float(PROTOCOL.fullmatch(TEMPLATE_TOKEN.sub("", text)) is not None)


def format_reward(prompts, completions, mode: str = "graded", **kwargs) -> list[float]:
    scorers = {"graded": graded_format, "binary": binary_format}
    if mode not in scorers:
        raise RewardError(f"mode must be one of {sorted(scorers)}, got {mode!r}")
    return [scorers[mode](completion_text(c)) for c in completions]
