"""Configuration of stage 2: stage 1's fields plus the restoration sampling that fills the slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from clear_rl.trainers.arguments import RestorationSamplerArguments
from clear_rl.trainers.sft_config import ClearTrainingConfig


@dataclass
class BridgeStageConfig(RestorationSamplerArguments, ClearTrainingConfig):
    """TRL's SFTConfig fields, stage 1's shared ones, and `restoration_*` (ODE by default)."""

    answer_only: bool = True  # CE only on the text after the restored slot (rows without one: none)
    restore_rows_only: bool = True  # train on `restore` rows only (direct rows have no slot)
    default_trainable_parts: ClassVar[tuple[str, ...]] = ("bridge",)
