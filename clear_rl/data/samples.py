"""Corruption-aware interleaved samples: the prepared dataset every training stage reads.

Each source row gets one seeded MMD-Bench corruption (the benchmark's weighted choice) at one
level, a label (`restore` or `direct`) and an assistant target in the CLEAR token protocol:

    direct:   <think>quality check + reasoning</think><answer>B</answer>
    restore:  <think>quality check</think><image_restore><think>reasoning</think><answer>B</answer>

Targets hold exactly one `<image_restore>` (restore rows) and never `<|restored_pad|>`: the
collator inserts as many placeholders as the model's bridge needs. A reasoning-trace column is
used when present, a template otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from clear_rl.errors import DataError
from clear_rl.models.tokens import (
    ANSWER_END,
    ANSWER_START,
    IMAGE_RESTORE,
    RESTORED_PAD,
    THINK_END,
    THINK_START,
)
from clear_rl.parallel import check_workers
from clear_rl.seeds import derive_seed

LABELS = ("restore", "direct")
QualityCheck = Literal["decide", "describe"]
QUALITY_CHECKS = ("decide", "describe")  # how a target's quality check reads (build_target)
OPTION_COLUMNS = ("A", "B", "C", "D")
SEVERITY_WORDS = {"low": "mild", "mid": "moderate", "high": "severe"}
CLEAN = "clean"  # a level without corruption (corruption "none"): clean rows in a prepared set
SEVERITIES = (CLEAN, *SEVERITY_WORDS)


def prepared_features():
    """The exact schema of a prepared dataset (stage 3 and the demo rely on it)."""
    import datasets

    string = datasets.Value("string")
    return datasets.Features(
        {
            "index": string,
            "image": datasets.Image(),  # the DEGRADED image
            "clean_image": datasets.Image(),
            "question": string,
            "answer": string,  # the option letter for multiple choice
            **{letter: string for letter in OPTION_COLUMNS},  # '' when absent
            "corruption": string,
            "severity": string,  # low | mid | high
            "intensity": datasets.Value("float64"),
            "seed": datasets.Value("int64"),
            "label": string,  # restore | direct
            "target": string,  # the assistant text, in the token protocol
        }
    )


PREPARED_COLUMNS = (
    "index",
    "image",
    "clean_image",
    "question",
    "answer",
    *OPTION_COLUMNS,
    "corruption",
    "severity",
    "intensity",
    "seed",
    "label",
    "target",
)
# What stage 3 needs of a dataset; clean_image, corruption, severity, ... are optional.
GRPO_COLUMNS = ("image", "question", "answer")


# -- degradation draws ---------------------------------------------------------------------------
def row_seed(seed: int, split: str, position: int) -> int:
    """The seed of one source row: its corruption, level and corruption noise all derive from it."""
    return derive_seed(seed, split, position)


def choose_levels(
    seeds: Sequence[int], levels: Sequence[str], weights: Sequence[float] | None = None
) -> list[str]:
    """One level per row seed, drawn with `weights` (uniform by default), deterministic per seed."""
    p = np.full(len(levels), 1.0 / len(levels)) if weights is None else np.asarray(weights, dtype=float)
    p = p / p.sum()
    return [levels[int(np.random.default_rng([int(s) % 2**63, 1]).choice(len(levels), p=p))] for s in seeds]


def rule_labels(severities: Sequence[str], restore_levels: Sequence[str]) -> list[str]:
    """`restore` for rows whose level is one of `restore_levels`, `direct` otherwise."""
    return ["restore" if s in restore_levels else "direct" for s in severities]


def balance_indices(labels: Sequence[str], seed: int, where: str) -> list[int]:
    """Row indices keeping every minority-label row and as many majority rows (seeded choice), in order."""
    by_label = {label: [i for i, x in enumerate(labels) if x == label] for label in LABELS}
    counts = {label: len(rows) for label, rows in by_label.items()}
    if min(counts.values()) == 0:
        raise DataError(
            f"{where}: cannot balance labels {counts}; change the labelling (e.g. --restore-levels)"
        )
    keep = min(counts.values())
    rng = np.random.default_rng(seed)
    chosen = [i for rows in by_label.values() for i in rng.choice(rows, size=keep, replace=False).tolist()]
    return sorted(chosen)


# -- targets -------------------------------------------------------------------------------------
def describe(corruption: str, severity: str) -> str:
    """'severe motion blur' for ('motion_blur', 'high'); 'no degradation' for a clean row."""
    if severity == CLEAN:
        return "no degradation"
    return f"{SEVERITY_WORDS.get(severity, severity)} {corruption.replace('_', ' ')}"


def answer_sentence(answer: str, options: Mapping[str, str] | None) -> str:
    if options and answer in options:
        return f"the answer is {answer}: {options[answer]}."
    return f"the answer is {answer}."


def build_target(
    label: str,
    corruption: str,
    severity: str,
    answer: str,
    options: Mapping[str, str] | None = None,
    reasoning: str | None = None,
    quality_check: QualityCheck = "decide",
) -> str:
    """The assistant text of one sample in the token protocol (no `<|restored_pad|>` placeholders).

    `quality_check` "decide" (default): the check states the decision in words ("..., which hides
    details the question needs; I restore it first" / "..., but the details ... are visible"), and
    a direct answer's reasoning shares its think block. "describe": both labels open with the same
    check, `<think>The image has severe noise.</think>`, and the decision is the next token alone:
    `<image_restore>` or the reasoning's own `<think>`. A model forced not to restore
    (`--restore never`) then continues as its direct answers do, instead of after a check that
    announced a restoration, so never vs always compares the two paths fairly.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    if quality_check not in QUALITY_CHECKS:
        raise ValueError(f"quality_check must be one of {QUALITY_CHECKS}, got {quality_check!r}")
    damage = describe(corruption, severity)
    if quality_check == "describe":
        check = f"{THINK_START}The image has {damage}.{THINK_END}"
        if label == "restore":
            reason = reasoning or f"In the restored image, {answer_sentence(answer, options)}"
            return f"{check}{IMAGE_RESTORE}{THINK_START}{reason}{THINK_END}{ANSWER_START}{answer}{ANSWER_END}"
        reason = reasoning or answer_sentence(answer, options).capitalize()
        return f"{check}{THINK_START}{reason}{THINK_END}{ANSWER_START}{answer}{ANSWER_END}"
    if label == "restore":
        check = f"The image has {damage}, which hides details the question needs; I restore it first."
        reason = reasoning or f"In the restored image, {answer_sentence(answer, options)}"
        return (
            f"{THINK_START}{check}{THINK_END}{IMAGE_RESTORE}"
            f"{THINK_START}{reason}{THINK_END}{ANSWER_START}{answer}{ANSWER_END}"
        )
    check = f"The image has {damage}, but the details the question needs are visible."
    reason = reasoning or answer_sentence(answer, options).capitalize()
    return f"{THINK_START}{check} {reason}{THINK_END}{ANSWER_START}{answer}{ANSWER_END}"


def check_reasoning(reasoning: str | None, where: str) -> None:
    """A trace may not carry protocol tokens of its own: the target decides where they go."""
    if reasoning is None:
        return
    for token in (IMAGE_RESTORE, RESTORED_PAD, THINK_START, THINK_END, ANSWER_START, ANSWER_END):
        if token in reasoning:
            raise DataError(f"{where}: the reasoning trace contains the protocol token {token}; remove it")


def template_corpus() -> list[str]:
    """Every template sentence, for training a tiny model's tokenizer on the text it will write."""
    from clear_rl.degrade import CORRUPTIONS

    texts = []
    for corruption in CORRUPTIONS:
        for severity in SEVERITY_WORDS:
            for label in LABELS:
                for check in QUALITY_CHECKS:
                    texts.append(
                        build_target(label, corruption, severity, "A", {"A": "red"}, quality_check=check)
                    )
                    texts.append(build_target(label, corruption, severity, "3", quality_check=check))
    return texts


@dataclass
class ProbeSettings:
    """Label rows by running a model: wrong on the degraded image (and right on the clean one) -> restore."""

    model_path: str
    batch_size: int = 16
    max_new_tokens: int = 64
    device: str | None = None  # default: cuda when available
    require_clean_correct: bool = True  # False: every row wrong on the degraded image restores (paper)
    system_prompt: str | None = None  # default: the probed model's own (its recipe), "": none


@dataclass
class PrepareConfig:
    """How `clear-rl prepare` degrades, labels and balances a source."""

    seed: int = 0
    levels: tuple[str, ...] = ("low", "mid", "high")
    level_weights: tuple[float, ...] | None = None
    label: Literal["rule", "probe"] = "rule"
    restore_levels: tuple[str, ...] = ("high",)  # rule labelling: these levels restore
    probe: ProbeSettings | None = None
    balance: bool = False  # keep as many direct rows as restore rows (seeded), per split
    splits: tuple[str, ...] | None = None  # source splits to prepare (default: all)
    max_samples: int | None = None  # per split, the first rows
    test_fraction: float = 0.0  # a one-split source: hold out this fraction as `test`
    reasoning_column: str | None = "reasoning"
    quality_check: QualityCheck = "decide"  # how targets' quality checks read (build_target)
    chunk_size: int = 64  # rows decoded, degraded and probed at once
    workers: int = 0  # processes corrupting chunks (0: one per core if worth it); not in the manifest
    # Corruption backend: auto (torch on a GPU, else OpenCV) | opencv | torch; checked when the
    # run starts, before anything is written (importing the engine here would load torch).
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name, values in (("levels", self.levels), ("restore_levels", self.restore_levels)):
            unknown = [v for v in values if v not in SEVERITIES]
            if unknown:
                raise DataError(f"{name}: unknown level(s) {unknown}; valid: {list(SEVERITIES)}")
        if not self.levels:
            raise DataError("levels: give at least one level")
        if self.level_weights is not None and len(self.level_weights) != len(self.levels):
            raise DataError(f"level_weights needs one weight per level {list(self.levels)}")
        if self.label == "probe" and self.probe is None:
            raise DataError("probe labelling needs a model: pass --probe-model PATH (a saved clear-rl model)")
        if self.quality_check not in QUALITY_CHECKS:
            raise DataError(
                f"quality_check must be one of {list(QUALITY_CHECKS)}, got {self.quality_check!r}"
            )
        if self.label not in ("rule", "probe"):
            raise DataError(f"label must be 'rule' or 'probe', got {self.label!r}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise DataError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.chunk_size < 1:
            raise DataError("chunk_size must be >= 1")
        check_workers(self.workers)
