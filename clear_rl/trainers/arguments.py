"""Pieces every stage's config shares: automatic precision, restoration sampling, renamed keys.

Each stage's config is a `transformers.TrainingArguments` subclass (TRL's SFTConfig / GRPOConfig
for stages 1 to 3) built from these mixins, so a recipe's `training:` section spells the same
setting the same way in every stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from clear_rl.choices import NoiseSchedule, Sampler
from clear_rl.rollout.restoration import RestorationSampling


def bf16_supported() -> bool:
    """Whether bf16 is the better default here: on a GPU that supports it (bf16 autocast on a CPU
    is ~4x slower than float32)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class AutoPrecisionArguments:
    """`bf16: null` (the default): bf16 on a GPU that supports it, float32 otherwise.

    TRL's configs default to bf16, which fails or crawls on a CPU. Put this mixin first among
    the bases, so the choice is made before TrainingArguments validates it.
    """

    bf16: bool | None = field(default=None, metadata={"help": "null: bf16 where the GPU supports it."})
    # Parts trained in full when a recipe names none (`model.trainable_parts`): the stage's own default.
    default_trainable_parts: ClassVar[tuple[str, ...]] = ("llm", "head", "bridge")
    # Old recipe key -> its new name, accepted with a deprecation message; each class names only its
    # own renames (`recipe_schema.schema_of` gathers them over the MRO).
    renamed_keys: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = not self.fp16 and bf16_supported()
        super().__post_init__()


@dataclass
class CheckpointingArguments:
    """Activation checkpointing under its transformers 5 name, `activation_checkpointing`.

    TRL's configs turn checkpointing on by defaulting the old name, `gradient_checkpointing`,
    to True, and transformers warns that the old name is deprecated whenever it is set, so
    every run would warn even with nothing set. Here the old name is unset unless a caller sets
    it, and the stage's default (`default_activation_checkpointing`: TRL's True, or False for
    plain TrainingArguments) goes to the new name. A recipe's `gradient_checkpointing*` keys are
    renamed to the new ones, with a message that names them.
    """

    activation_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute activations in the backward pass; null: the stage's default."},
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing (transformers 5)."}
    )
    default_activation_checkpointing: ClassVar[bool] = True
    renamed_keys: ClassVar[dict[str, str]] = {
        "gradient_checkpointing": "activation_checkpointing",
        "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
    }

    def __post_init__(self) -> None:
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = self.default_activation_checkpointing
        super().__post_init__()


@dataclass
class RestorationSamplingArguments:
    """How a stage samples restorations: the `restoration_*` keys of `RestorationSampling`.

    The sampler is Flow-GRPO's SDE unless the stage offers a choice (`RestorationSamplerArguments`,
    stage 2): stage 3's flow loss scores SDE steps, so it has no `restoration_sampler` key.
    """

    restoration_steps: int | None = field(
        default=None, metadata={"help": "Denoising steps of a restoration; null: the model's (CLEAR: 30)."}
    )
    restoration_shift: float | None = field(
        default=None, metadata={"help": "Timestep shift of the sampling schedule; null: the model's (3.0)."}
    )
    restoration_noise_level: float = field(
        default=0.7, metadata={"help": "The SDE's noise: Flow-GRPO's level `a`, or the constant sigma."}
    )
    restoration_noise_schedule: NoiseSchedule = field(
        default="flow_grpo",
        metadata={"help": "flow_grpo: std a*sqrt(t/(1-t)); constant: CLEAR's released SDE, std sigma."},
    )

    def stage_sampler(self) -> Sampler:
        """The sampler this stage's restorations use."""
        return "sde"

    @property
    def restoration_sampling(self) -> RestorationSampling:
        return RestorationSampling(
            steps=self.restoration_steps,
            shift=self.restoration_shift,
            sampler=self.stage_sampler(),
            noise_level=self.restoration_noise_level,
            noise_schedule=self.restoration_noise_schedule,
        )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.restoration_sampling  # noqa: B018 -- validates the values together


@dataclass
class RestorationSamplerArguments(RestorationSamplingArguments):
    """Restoration sampling for a stage that chooses its sampler (`restoration_sampler`)."""

    restoration_sampler: Sampler = field(
        default="ode", metadata={"help": "ode, or sde: Flow-GRPO's SDE with per-step log-probs."}
    )

    def stage_sampler(self) -> Sampler:
        return self.restoration_sampler
