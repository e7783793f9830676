"""What the benchmark scripts share: timing, test images, stop-token suppression and markdown tables.

A module whose name starts with `_` is a helper, not a benchmark: `python -m benchmarks` skips it.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class PhaseTimer:
    """Adds up the wall time spent in wrapped callables, by label, without editing their code.

    `wrap(owner, name, label)` replaces the attribute `name` of `owner` (an instance, or a class
    for its methods) by a timing wrapper; leaving the `with` block puts the originals back.
    """

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: object, name: str, label: str) -> None:
        own = name in vars(owner)
        original = getattr(owner, name)
        shadowed = vars(owner)[name] if own else None

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, shadowed) if own else delattr(owner, name))

    def take(self) -> dict[str, float]:
        """The times so far, and a fresh start."""
        taken, self.seconds = dict(self.seconds), defaultdict(float)
        return taken

    def __enter__(self) -> PhaseTimer:
        return self

    def __exit__(self, *exc) -> None:
        while self._undo:
            self._undo.pop()()


def count_parameters(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def suppress_tokens(lm_head: torch.nn.Module, token_ids: Sequence[int]) -> torch.utils.hooks.RemovableHandle:
    """Make `token_ids` unreachable so every row writes exactly the token budget.

    Random weights would otherwise end some rows early at a different step in each run, and
    tokens/s or step times would compare different amounts of work. The floor is finite: -inf
    logits would make entropy metrics (0 * log 0) NaN.
    """
    ids = torch.tensor(sorted(set(token_ids)))

    def hook(module, args, logits):
        return logits.index_fill(-1, ids.to(logits.device), -1e9)

    return lm_head.register_forward_hook(hook)
