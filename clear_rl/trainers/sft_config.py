"""Configuration of stages 1 and 2: TRL's SFTConfig plus CLEAR's loss weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from trl import SFTConfig

from clear_rl.choices import DistillMode
from clear_rl.trainers.arguments import AutoPrecisionArguments, CheckpointingArguments


@dataclass
class ClearTrainingConfig(AutoPrecisionArguments, CheckpointingArguments, SFTConfig):
    """TRL's SFTConfig (all its fields, by their own names) plus what stages 1 and 2 share."""

    lambda_distill: float = 0.1  # paper 0.1; released script 0.4
    # Paper 0.4: per restoring row, with this probability the degraded image's ViT tokens are hidden,
    # so the answer has to come from the restored slot (losses._drop_vit_tokens).
    vit_token_dropout: float = 0.0
    distill_mode: DistillMode = "per_layer_kl"
    # TRL would tokenize a text column; the collator builds batches from prepared rows instead.
    dataset_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True}
    )
    remove_unused_columns: bool = False
    prediction_loss_only: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lambda_distill", "lambda_mse", "vit_token_dropout"):
            if getattr(self, name, 0.0) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.vit_token_dropout > 1.0:
            raise ValueError(f"vit_token_dropout must be in [0, 1], got {self.vit_token_dropout}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must stay false: the collator reads the prepared columns")


@dataclass
class ClearSFTConfig(ClearTrainingConfig):
    """Stage 1: the paper's defaults (lambda_mse 0.5, lambda_distill 0.1, lr 2e-5)."""

    lambda_mse: float = 0.5  # paper 0.5; released script 1.0
    # The timestep shift of the flow-matching loss's noise levels t = shift(sigmoid(randn)), a
    # training setting; restorations are sampled with `restoration_shift` in stages 2 and 3.
    train_timestep_shift: float | None = None  # None: the model's flow_shift
    renamed_keys: ClassVar[dict[str, str]] = {"flow_shift": "train_timestep_shift"}
