"""How a rollout reads a row's restoration requests: the two protocols a unified model may speak.

- **tokens** (clear-rl's): `<think>`, `<answer>`, `<image_restore>` are single tokens. Writing the token
  `<image_restore>` restores (once a row); `</answer>` or an end-of-text token ends the row.
- **text** (CLEAR's release, `TurnRules`): the tags are plain text, several tokens each. A row writes a
  text turn up to its turn-end token (`<|im_end|>`); the finished turn is read as the release's
  inferencer reads it (haoxiangzhao12138/CLEAR `inferencer.py`, `interleave_reason_tool_condition`):
  a turn holding `<answer>...</answer>` ends the row, the last allowed turn ends it, a turn holding the
  text `<image_restore>` restores and a new turn follows, any other turn ends it.

`generate_interleaved` asks the model for `turn_rules` (a `TurnRules`, BAGEL-family models whose tags
are text) and otherwise speaks tokens; the loop itself is the same for both. Either protocol may
override a sampled token (`force`: the restore policies `always` and `oracle`, a turn's length limit)
and says after each step which rows restore and which end (`after`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from clear_rl.models.tokens import ANSWER_END, ANSWER_START, IMAGE_RESTORE, THINK_END, ClearTokenIds

# inferencer.py interleave_reason_tool_condition: answer_pattern = r"<answer>(.*?)</answer>" searched with
# re.DOTALL; restore_pattern = RESTORE_TOKEN, "<image_restore>" (prompts.py), found anywhere in the turn
ANSWER = re.compile(f"{re.escape(ANSWER_START)}(.*?){re.escape(ANSWER_END)}", re.DOTALL)


@dataclass(frozen=True)
class TurnRules:
    """The release's turn loop for a model whose tags are text: its limits and the ids that frame a turn."""

    max_turns: int  # turns a row writes at most; a restoration may follow each but the last
    turn_tokens: int  # model-written tokens of one turn at most; the turn is closed there
    turn_end: int  # the id that closes a turn (`<|im_end|>`)
    opener: int  # the id that opens the next one (`<|im_start|>`)
    tokenizer: Any = field(compare=False, repr=False)  # reads a finished turn as text

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.turn_tokens < 1:
            raise ValueError(
                f"TurnRules needs max_turns and turn_tokens >= 1, got {self.max_turns}, {self.turn_tokens}"
            )

    def encode(self, text: str) -> list[int]:
        """`text` as the release tokenises a turn it caches (`tokenizer.encode`, no special tokens added)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        """A turn's ids as the release reads them (`tokenizer.decode`, special tokens kept)."""
        return self.tokenizer.decode(ids)


class TokenTags:
    """clear-rl's protocol: the single `<image_restore>` token restores (once a row)."""

    def __init__(self, ids: ClearTokenIds, stop_ids: torch.Tensor, policy: str):
        self.ids, self.stop_ids, self.policy = ids, stop_ids, policy

    def mask(self, logits: torch.Tensor, restored: torch.Tensor) -> None:
        """Ban the tag in place: always under `never`, once restored otherwise (one restoration a row)."""
        if self.policy == "never":
            logits[:, self.ids.image_restore] = float("-inf")
        else:
            logits[restored, self.ids.image_restore] = float("-inf")

    def force(self, tokens: torch.Tensor, restored, previous, last_step: bool) -> torch.Tensor:
        """`oracle` opens each completion with the tag; `always` writes it right after `</think>`, or
        in place of an ending (a stop or `<answer>`), or at the last step."""
        tag = torch.full_like(tokens, self.ids.image_restore)
        if self.policy == "oracle":
            # The slot is the only view: a quality check of an image the row cannot see is skipped.
            return torch.where(~restored, tag, tokens)
        if self.policy == "always":
            enders = torch.cat([self.stop_ids, self.stop_ids.new_tensor([self.ids.answer_start])])
            would_end = torch.isin(tokens, enders)
            force = ~restored & ((previous == self.ids.think_end) | would_end | last_step)
            return torch.where(force, tag, tokens)
        return tokens

    def after(self, tokens: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(restoring, ending) rows of the step that wrote `tokens`."""
        return active & (tokens == self.ids.image_restore), active & torch.isin(tokens, self.stop_ids)


class TextTurns:
    """The release's protocol (module docstring), row by row: each row's open turn, its finished turns,
    and the tokens a policy or a limit forces next.

    Policies: `model` as the release; `never` runs no restoration: a turn asking for one is followed by
    the next turn with nothing read back; `always` writes `<image_restore>` into the first turn right
    after its first `</think>` (or in place of its end) and restores after it, whatever else it holds;
    `oracle` makes the first turn `<image_restore>` alone. Later turns follow the model's requests.
    """

    def __init__(
        self, rules: TurnRules, turn_ends: tuple[int, ...], stops: tuple[int, ...], batch: int, policy: str
    ):
        self.rules, self.policy = rules, policy
        self.turn_ends, self.stops = set(turn_ends), set(stops)
        self.tag = rules.encode(IMAGE_RESTORE)
        self.turn: list[list[int]] = [[] for _ in range(batch)]  # the open turn's written ids
        self.turns = [0] * batch  # finished turns
        self.queue: list[list[int]] = [[] for _ in range(batch)]  # ids forced next
        self._think_end_tail = len(rules.encode(THINK_END)) + 2  # ids enough to hold `</think>`

    def mask(self, logits: torch.Tensor, restored: torch.Tensor) -> None:
        """Nothing is banned: a request is text, read once its turn is finished."""

    def force(self, tokens: torch.Tensor, restored, previous, last_step: bool) -> torch.Tensor:
        chosen = tokens.tolist()
        end = self.rules.turn_end
        for row, token in enumerate(chosen):
            if (
                not self.queue[row]
                and self.turns[row] == 0
                and not self.turn[row]
                and self.policy == "oracle"
            ):
                self.queue[row] = [*self.tag, end]
            if (
                not self.queue[row]
                and self.policy == "always"
                and self.turns[row] == 0
                and token in self.turn_ends
            ):
                self.queue[row] = [*self.tag, end]
            if self.queue[row]:
                chosen[row] = self.queue[row][0]
            elif len(self.turn[row]) >= self.rules.turn_tokens:
                chosen[row] = end  # the release's generate_text stops at max_length; the turn closes
        return torch.tensor(chosen, dtype=tokens.dtype, device=tokens.device)

    def after(self, tokens: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        restoring = torch.zeros_like(active)
        ending = torch.zeros_like(active)
        for row in active.nonzero().squeeze(1).tolist():
            token = int(tokens[row])
            forced = bool(self.queue[row]) and self.queue[row][0] == token
            if forced:
                self.queue[row].pop(0)
            if token in self.stops:
                ending[row] = True
            elif token in self.turn_ends:
                asks, ends = self._finish_turn(row)
                restoring[row], ending[row] = asks and self.policy != "never", ends
                if asks and self.policy == "never":
                    self.queue[row] = [self.rules.opener]  # the next turn, nothing read back
            elif not (forced and token == self.rules.opener):
                self.turn[row].append(token)
                if self._force_tag_now(row):
                    self.queue[row] = [*self.tag, self.rules.turn_end]
        return restoring, ending

    def _finish_turn(self, row: int) -> tuple[bool, bool]:
        """(asks for a restoration, ends the row) of the row's turn just finished, as the release reads it."""
        text = self.rules.decode(self.turn[row])
        self.turn[row] = []
        self.turns[row] += 1
        forced = self.policy in ("always", "oracle") and self.turns[row] == 1
        if not forced and ANSWER.search(text):
            return False, True
        if self.turns[row] >= self.rules.max_turns:
            return False, True
        asks = forced or IMAGE_RESTORE in text
        return asks, not asks

    def _force_tag_now(self, row: int) -> bool:
        """`always`: the first turn has just written its first `</think>` and no tag yet."""
        if self.policy != "always" or self.turns[row] != 0 or self.queue[row]:
            return False
        text = self.rules.decode(self.turn[row][-self._think_end_tail :])
        return text.endswith(THINK_END)


def tag_protocol(model, decoder, config, batch: int, device: torch.device) -> TokenTags | TextTurns:
    """The protocol `model` speaks in a rollout under `config` (an `InterleavedGenerationConfig`)."""
    rules = getattr(model, "turn_rules", None)
    if rules is None:
        ids = model.token_ids
        stops = torch.tensor([*decoder.stop_token_ids, ids.answer_end, *config.stop_token_ids], device=device)
        return TokenTags(ids, stops, config.restore)
    return TextTurns(
        rules, tuple(decoder.stop_token_ids), tuple(config.stop_token_ids), batch, config.restore
    )
