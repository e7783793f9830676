"""Stage 2: train the latent bridge on the restoration head's own outputs.

The restored slot holds latents the head itself denoised from the degraded image (ODE sampling,
no gradient), conditioned on the context up to `<image_restore>`. A first no-grad pass provides
that context (`teacher_forced_context`: the composed model's hidden states, BAGEL's KV cache):
causality makes it independent of what later fills the slot. Loss = CE on the
answer (the text after the slot, by default) + lambda_distill * distill, so the understanding side
learns to read imperfect restorations. The bridge trains by default; `model.lora` adds LoRA on the
LLM (list `latent_bridge` in `lora.modules_to_save` to train the bridge beside the adapters).
"""

from __future__ import annotations

from typing import Any

import torch

from clear_rl.data.collate import split_inputs
from clear_rl.models.same_work import runs_every_pass
from clear_rl.recipe import Recipe
from clear_rl.rollout.restoration import restore_latents
from clear_rl.trainers.bridge_stage_config import BridgeStageConfig
from clear_rl.trainers.common import run_stage
from clear_rl.trainers.sft import ClearSFTTrainer

CONFIG_CLASS = BridgeStageConfig


@torch.no_grad()
def denoised_latents(
    model,
    forward,
    inputs,
    degraded_latents: torch.Tensor,
    generator: torch.Generator,
    config: BridgeStageConfig,
) -> torch.Tensor:
    """The head's restoration of every restoring row (zeros elsewhere), from a no-grad context pass."""
    restore = inputs["restore"].bool()
    latents = torch.zeros(restore.shape[0], *model.latent_shape, device=degraded_latents.device)
    rows = restore.nonzero().squeeze(1)
    idle = len(rows) == 0
    if idle and not runs_every_pass(model):
        return latents
    if idle:  # sharded: restore row 0 as another rank restores its rows, and discard it (same_work.py)
        rows = torch.zeros(1, dtype=torch.long, device=restore.device)
    student, _ = split_inputs(inputs)
    context = model.teacher_forced_context(forward, student, degraded_latents, rows)
    sample = restore_latents(model, context, config.restoration_sampling, generator=generator)
    if not idle:
        latents[rows] = sample.latents.to(latents.dtype)
    return latents


class BridgeTrainer(ClearSFTTrainer):
    """Stage 2: the slot holds the head's own restorations; CE + distill."""

    _tag_names = ["trl", "sft", "clear-rl", "clear-bridge"]
    _name = "CLEAR bridge"

    def parts_every_batch_needs(self) -> tuple[str, ...]:
        """Without `restore_rows_only`, a batch may hold no restoring row, and then nothing of a
        bridge-only run takes part in the loss: the bridge runs on an idle row so that every process
        still has a gradient (zero, and dropped when no process restored)."""
        return () if self.args.restore_rows_only else ("bridge",)

    def stage_loss_options(self, model, forward, inputs, generator: torch.Generator) -> dict[str, Any]:
        args = self.args
        return {
            "with_mse": False,
            "vit_token_dropout": args.vit_token_dropout,
            "restored_latents": lambda degraded: denoised_latents(
                model, forward, inputs, degraded, generator, args
            ),
        }


def _restore_rows(dataset):
    # `select`, not `filter`: filter would write cache files into the prepared dataset's folder.
    return dataset.select([i for i, label in enumerate(dataset["label"]) if label == "restore"])


def train(recipe: Recipe, callbacks=()) -> BridgeTrainer:
    """Run stage 2 from a validated recipe; the model is saved into training.output_dir."""
    select = _restore_rows if recipe.training.restore_rows_only else None
    return run_stage(
        recipe,
        BridgeTrainer,
        select=select,
        labels_after_slot=recipe.training.answer_only,
        callbacks=callbacks,
    )
