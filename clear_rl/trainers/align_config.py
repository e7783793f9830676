"""Configuration of bridge alignment: `transformers.TrainingArguments` plus the loss weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from transformers import TrainingArguments

from clear_rl.trainers.arguments import AutoPrecisionArguments, CheckpointingArguments


@dataclass
class AlignConfig(AutoPrecisionArguments, CheckpointingArguments, TrainingArguments):
    """`transformers.TrainingArguments` plus the alignment loss weights."""

    lambda_cos: float = 0.5  # weight of (1 - cosine) beside the standardised MSE
    lambda_hidden: float = 0.0  # > 0: also match the LLM's hidden states over the image tokens
    remove_unused_columns: bool = False  # the collator reads the image column itself
    default_trainable_parts: ClassVar[tuple[str, ...]] = ("bridge",)
    default_activation_checkpointing: ClassVar[bool] = False  # TrainingArguments' default

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lambda_cos", "lambda_hidden"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
