"""Configuration of stage 3, Interleaved GRPO: TRL's GRPOConfig plus the restoration branch's knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from trl import GRPOConfig


@dataclass
class InterleavedGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` (every field by its own name) plus Flow-GRPO on the restoration head.

    The text policy gradient is TRL's, untouched (loss_type, epsilon, beta, scale_rewards, ...).
    The flow term re-runs `flow_train_steps` stored denoising steps of each restoring rollout with
    the same advantage and the same clipping (`epsilon`, `epsilon_high`); with `beta` > 0 it also
    gets the KL of each step's mean to the reference model's. Defaults follow the CLEAR paper.
    """

    # Rollouts: whether a completion may restore, and how the restoration is sampled.
    restore_policy: Literal["model", "always", "never"] = field(
        default="model", metadata={"help": "model: the policy decides; always/never force it (baselines)."}
    )
    readback: Literal["bridge", "reencode"] = field(
        default="bridge",
        metadata={
            "help": "What fills the restored slot, in rollouts and in scoring passes: bridge (CLEAR) or "
            "reencode (VAE decode -> the VLM's own image processor and vision path; the paper's baseline)."
        },
    )
    degraded_view: Literal["keep", "drop"] = field(
        default="keep",
        metadata={
            "help": "drop: once a rollout restores, its degraded image tokens are hidden after the slot."
        },
    )
    num_inference_steps: int = field(default=30, metadata={"help": "Denoising steps of a restoration."})
    flow_shift: float = field(default=3.0, metadata={"help": "Timestep shift of the sampling schedule."})
    sde_noise_level: float = field(default=0.7, metadata={"help": "Flow-GRPO's noise level `a` of the SDE."})
    # The flow loss.
    flow_loss_weight: float = field(default=0.3, metadata={"help": "lambda in L = L_text + lambda * L_flow."})
    flow_train_steps: int = field(
        default=1, metadata={"help": "Denoising steps re-run per trajectory (random, per rollout); -1: all."}
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

    # None: bf16 on a GPU that supports it, fp32 otherwise (bf16 autocast on a CPU is ~4x slower).
    bf16: bool | None = field(default=None, metadata={"help": "See TrainingArguments."})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()
        if self.flow_train_steps == 0 or self.flow_train_steps < -1:
            raise ValueError(f"flow_train_steps must be >= 1 or -1 (all steps), got {self.flow_train_steps}")
        if self.flow_train_steps > self.num_inference_steps:
            raise ValueError(
                f"flow_train_steps ({self.flow_train_steps}) exceeds num_inference_steps ({self.num_inference_steps})"
            )
