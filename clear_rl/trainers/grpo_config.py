"""Configuration of stage 3, Interleaved GRPO: TRL's GRPOConfig plus the restoration branch's knobs."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import ClassVar, Literal

from trl import GRPOConfig

from clear_rl.choices import (
    DegradedView,
    FlowStepSelection,
    RolloutRestorePolicy,
    TrainingReadback,
)
from clear_rl.trainers.arguments import (
    AutoPrecisionArguments,
    CheckpointingArguments,
    RestorationSamplingArguments,
)


@dataclass
class InterleavedGRPOConfig(
    AutoPrecisionArguments, CheckpointingArguments, RestorationSamplingArguments, GRPOConfig
):
    """`trl.GRPOConfig` (every field by its own name) plus Flow-GRPO on the restoration head.

    The text policy gradient is TRL's, untouched (loss_type, epsilon, beta, scale_rewards, ...).
    The flow term re-runs `flow_train_steps` stored denoising steps of each restoring rollout with
    the same advantage and the same clipping (`epsilon`, `epsilon_high`); with `beta` > 0 it also
    gets the KL of each step's mean to the reference model's. Defaults follow the CLEAR paper.
    Restorations are sampled with the `restoration_*` keys, always with Flow-GRPO's SDE (the flow
    loss scores its steps).
    """

    # Rollouts: whether a completion may restore, and how the restoration is sampled.
    restore_policy: RolloutRestorePolicy = field(
        default="model", metadata={"help": "model: the policy decides; always/never force it (baselines)."}
    )
    readback: TrainingReadback = field(
        default="bridge",
        metadata={
            "help": "What fills the restored slot, in rollouts and in scoring passes: bridge (CLEAR) or "
            "reencode (VAE decode -> the VLM's own image processor and vision path; the paper's baseline)."
        },
    )
    degraded_view: DegradedView = field(
        default="keep",
        metadata={
            "help": "drop: once a rollout restores, its degraded image tokens are hidden after the slot."
        },
    )
    restoration_steps: int | None = field(
        default=30, metadata={"help": "Denoising steps of a restoration (CLEAR: 30); null: the model's."}
    )
    restoration_shift: float | None = field(
        default=3.0, metadata={"help": "Timestep shift of the sampling schedule; null: the model's."}
    )
    # Removed: stage 3 always samples the SDE. An init-only variable, not a config field, so that
    # a recipe still setting it is told what to do (`recipe_schema` lists such keys).
    restoration_sampler: InitVar[str | None] = None
    # The flow loss.
    flow_loss_weight: float = field(default=0.3, metadata={"help": "lambda in L = L_text + lambda * L_flow."})
    flow_train_steps: int = field(
        default=1, metadata={"help": "Denoising steps re-run per trajectory (random, per rollout); -1: all."}
    )
    flow_step_selection: FlowStepSelection = field(
        default="random",
        metadata={
            "help": "random: drawn per rollout (paper); round_robin: a counter over restoring rollouts "
            "(CLEAR's released trainer; trainers/flow_steps.py)."
        },
    )
    alternation: Literal["joint", "alternate"] = field(
        default="joint",
        metadata={"help": "joint: text + flow every step; alternate: text and flow optimizer steps in turn."},
    )
    # Rollouts of different rows touch different parts (head, bridge) of the model.
    ddp_find_unused_parameters: bool | None = field(default=True, metadata={"help": "See TrainingArguments."})
    remove_unused_columns: bool | None = field(
        default=False, metadata={"help": "Keep dataset columns: rewards receive them all."}
    )

    renamed_keys: ClassVar[dict[str, str]] = {
        "num_inference_steps": "restoration_steps",
        "flow_shift": "restoration_shift",
        "sde_noise_level": "restoration_noise_level",
    }

    def __post_init__(self, restoration_sampler: str | None = None):
        if restoration_sampler is not None:
            raise ValueError(
                "restoration_sampler is no longer a stage-3 key: GRPO always samples restorations with "
                "Flow-GRPO's SDE, whose per-step log-probs the flow loss scores; delete the key"
            )
        super().__post_init__()
        if self.restoration_steps is None:
            raise ValueError("restoration_steps must be set in stage 3 (the flow loss picks steps of it)")
        if self.flow_train_steps == 0 or self.flow_train_steps < -1:
            raise ValueError(f"flow_train_steps must be >= 1 or -1 (all steps), got {self.flow_train_steps}")
        if self.flow_train_steps > self.restoration_steps:
            raise ValueError(
                f"flow_train_steps ({self.flow_train_steps}) exceeds restoration_steps ({self.restoration_steps})"
            )
