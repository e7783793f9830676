"""Every closed set of choices a user picks from, defined once: the CLI, recipes, configs and code import it.

Each set is a `typing.Literal` (what type checkers and the recipe check read) and a tuple of its values
(`typing.get_args`, what argparse's `choices` and error messages read). A set that extends another is
written as the Literal of the smaller one plus its extra values, so no value is spelled twice.

This module imports nothing but `typing`: `clear_rl.commands` builds its parser and refuses bad input
before torch is imported (commands/checks.py; tests/test_refusals.py times it). The backbone names are
not here: backbones are plug-ins, named by the registry (`clear_rl.models.registry.backbone_names`).
"""

from __future__ import annotations

from typing import Literal, get_args

# How a restoration enters the LLM's context (models/readback.py). The training pass replays the
# first two; `reencode-vae` (decoded to 8-bit pixels, encoded again by the VAE) is CLEAR's eval's.
TrainingReadback = Literal["bridge", "reencode"]
Readback = Literal[TrainingReadback, "reencode-vae"]
# eval's --readback: `model` is the model's own (its preset's for a BAGEL-family model, else bridge).
MODEL_READBACK = "model"
ReadbackChoice = Literal["model", Readback]
TRAINING_READBACKS: tuple[str, ...] = get_args(TrainingReadback)
READBACKS: tuple[str, ...] = get_args(Readback)
READBACK_CHOICES: tuple[str, ...] = get_args(ReadbackChoice)

# What the prompt's degraded image becomes once a rollout restores: kept, or hidden after the slot.
DegradedView = Literal["keep", "drop"]
DEGRADED_VIEWS: tuple[str, ...] = get_args(DegradedView)

# Whether a completion restores: the model decides, or always / never (baselines). `oracle` (eval and
# generation only) puts the clean image's latent in the slot.
RolloutRestorePolicy = Literal["model", "always", "never"]
RestorePolicy = Literal[RolloutRestorePolicy, "oracle"]
ROLLOUT_RESTORE_POLICIES: tuple[str, ...] = get_args(RolloutRestorePolicy)
RESTORE_POLICIES: tuple[str, ...] = get_args(RestorePolicy)

# How a model writes the protocol tags <think>, <answer>, <image_restore>: as plain text (CLEAR's
# release) or as clear-rl's single tokens.
Tags = Literal["text", "tokens"]
TAGS: tuple[str, ...] = get_args(Tags)

# The inference presets of BAGEL-family folders (models/bagel/presets.py defines their values).
Preset = Literal["clear-release", "bagel-upstream"]
PRESETS: tuple[str, ...] = get_args(Preset)

# The unconditional contexts of BAGEL's restoration CFG (models/bagel/guidance.py).
CfgContexts = Literal["drop-thought", "drop-tag", "upstream"]
CFG_CONTEXTS: tuple[str, ...] = get_args(CfgContexts)

# The restoration sampler: the ODE, or Flow-GRPO's SDE (which stage 3 needs: per-step log-probs).
Sampler = Literal["ode", "sde"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)

# How classifier-free guidance renormalises the guided velocity (restoration.py).
Renorm = Literal["global", "channel", "text_channel"]
RENORMS: tuple[str, ...] = get_args(Renorm)

# The SDE's noise level over time (flow.py).
NoiseSchedule = Literal["flow_grpo", "constant"]
NOISE_SCHEDULES: tuple[str, ...] = get_args(NoiseSchedule)

# Which stored denoising steps the flow loss re-runs (trainers/flow_steps.py).
FlowStepSelection = Literal["random", "round_robin"]
FLOW_STEP_SELECTIONS: tuple[str, ...] = get_args(FlowStepSelection)

# Stage 1's distillation of the bridged tokens towards the ViT's (trainers/losses.py).
DistillMode = Literal["per_layer_kl", "pooled_mse"]
DISTILL_MODES: tuple[str, ...] = get_args(DistillMode)

# Where a composed model's restoration flow starts: pure noise (the paper) or noise around the
# degraded latent (flow.py).
FlowSource = Literal["noise", "degraded"]
FLOW_SOURCES: tuple[str, ...] = get_args(FlowSource)

# The corruption levels of MMD-Bench, the clean one first (eval/scoring.py).
Level = Literal["clean", "low", "mid", "high"]
LEVELS: tuple[str, ...] = get_args(Level)

# Scoring protocols: CLEAR's VLMEvalKit copy (the paper's tables) or upstream VLMEvalKit's.
ScoringProtocol = Literal["paper", "vlmevalkit"]
SCORING_PROTOCOLS: tuple[str, ...] = get_args(ScoringProtocol)
