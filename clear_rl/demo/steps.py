"""The demo's record of finished steps, so `clear-rl demo --reuse` runs only what changed.

Each step (stage 0's parts, prepare, stages 1-3, each model's evaluation) has a fingerprint: a
hash of its own settings (the demo's sizes and seed it reads, the recipe text it trains with) and
of the fingerprints of the steps it reads from. A finished step writes its fingerprint to
`OUT/steps.json`; with `reuse`, a step whose fingerprint is recorded there and whose outputs
exist is not run again. Changing `sft.yaml` therefore reruns stages 1-3 and their evaluations,
and keeps stage 0, its data and Base's evaluation. The record trusts the code: after changing
clear-rl itself, run without `--reuse`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clear_rl.io.atomic import write_text

LEDGER = "steps.json"


def fingerprint(settings: Any, parents: Sequence[str] = ()) -> str:
    """A short hash of a step's settings (JSON-serialisable) and of the fingerprints it reads from."""
    text = json.dumps({"settings": settings, "parents": list(parents)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class StepLedger:
    """Which steps of a demo run are finished, with the fingerprint each was run with."""

    def __init__(self, root: Path, reuse: bool):
        self.path = Path(root) / LEDGER
        self.reuse = reuse
        self.done: dict[str, str] = {}
        if self.path.exists():
            self.done = json.loads(self.path.read_text(encoding="utf-8"))

    def finished(self, key: str, print_: str, outputs: Sequence[Path]) -> bool:
        """Whether step `key` with fingerprint `print_` can be reused: recorded and its outputs present."""
        return self.reuse and self.done.get(key) == print_ and all(Path(p).exists() for p in outputs)

    def record(self, key: str, print_: str) -> None:
        self.done[key] = print_
        write_text(self.path, json.dumps(self.done, indent=2, sort_keys=True) + "\n")

    def forget(self, key: str) -> None:
        """A step about to run again: its previous record no longer describes its outputs."""
        if self.done.pop(key, None) is not None:
            write_text(self.path, json.dumps(self.done, indent=2, sort_keys=True) + "\n")

    def run(
        self, key: str, print_: str, outputs: Sequence[Path], fn: Callable[..., Any], *args
    ) -> tuple[Any, bool]:
        """Run `fn(*args)` unless the step is finished with this fingerprint; returns (result, ran)."""
        if self.finished(key, print_, outputs):
            return None, False
        self.forget(key)
        result = fn(*args)
        self.record(key, print_)
        return result, True
