"""Stage 1: corruption-aware interleaved SFT (CE + lambda_mse * flow MSE + lambda_distill * distill).

Teacher-forced interleaved sequences: the CLEAN image's latent fills the restored slot of every
restoring row. `ClearSFTTrainer` is a `trl.SFTTrainer`: TRL's dataset preparation is skipped (the
collator builds batches from prepared rows), and `compute_loss` adds the restoration head's flow
loss and the bridge distillation to the text loss, logging each term on its own.

The whole step (VAE encodes, the pass, the head, the teacher pass) runs inside ONE call of the
wrapped model, so DDP, FSDP and DeepSpeed see every parameter used in their own forward.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from trl import SFTTrainer

from clear_rl.recipe import Recipe
from clear_rl.seeds import generator_for
from clear_rl.trainers.common import (
    LossOnlyEvaluationMixin,
    UnifiedCheckpointMixin,
    run_stage,
)
from clear_rl.trainers.losses import LossTerms, loss_terms
from clear_rl.trainers.sft_config import ClearSFTConfig
from clear_rl.trainers.sharding import restores_anywhere, turn_on_same_work

CONFIG_CLASS = ClearSFTConfig


class ClearSFTTrainer(LossOnlyEvaluationMixin, UnifiedCheckpointMixin, SFTTrainer):
    """`trl.SFTTrainer` with CLEAR's stage-1 loss; the data collator is a `ClearCollator`."""

    _tag_names = ["trl", "sft", "clear-rl"]
    _name = "CLEAR SFT"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = True  # compute_loss normalises every term for accumulation itself
        turn_on_same_work(self, keep=self.parts_every_batch_needs())
        self._draw = (-1, 0)  # (global step, micro-batch) of the last random draw

    def parts_every_batch_needs(self) -> tuple[str, ...]:
        """Parts the loss needs on every batch, restoring or not (`SameWork.keep`): none here."""
        return ()

    # -- the stage's loss terms ---------------------------------------------------------------
    def stage_loss_options(self, model, forward, inputs, generator: torch.Generator) -> dict[str, Any]:
        """The stage's own keyword arguments of `losses.loss_terms` (stage 2 overrides this)."""
        args = self.args
        return {
            "with_mse": args.lambda_mse > 0,
            "train_timestep_shift": args.train_timestep_shift,
            "vit_token_dropout": args.vit_token_dropout,
        }

    def loss_terms(self, model, forward, inputs, generator: torch.Generator) -> LossTerms:
        return loss_terms(
            model,
            forward,
            inputs,
            generator,
            with_distill=self.args.lambda_distill > 0,
            distill_mode=self.args.distill_mode,
            **self.stage_loss_options(model, forward, inputs, generator),
        )

    # -- plumbing ---------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        """A generator for this micro-batch, a function of (seed, step, micro-batch, rank): resumable."""
        if self.model.training:
            step, micro = self._draw
            micro = micro + 1 if step == self.state.global_step else 0
            self._draw = (self.state.global_step, micro)
            return generator_for(
                device, self.args.seed, self.state.global_step, micro, self.args.process_index
            )
        return generator_for(device, self.args.seed, -1, self.args.process_index)

    def _step(self, generator):
        def step(model, forward, batch):
            terms = self.loss_terms(model, forward, batch, generator)
            return {f.name: getattr(terms, f.name) for f in fields(terms)}  # a dict: wrappers map over it

        return step

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        generator = self._generator(inputs["input_ids"].device)
        restores_anywhere(self, bool(inputs["restore"].any()))  # sharded: same work on every rank
        terms = LossTerms(**model(clear_step=self._step(generator), **inputs))
        args = self.args
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        if num_items_in_batch is not None and mode == "train":
            ce = terms.ce_sum / num_items_in_batch
            if args.average_tokens_across_devices:
                ce = ce * self.accelerator.num_processes
        else:
            ce = terms.ce_sum / terms.ce_tokens.clamp(min=1) / accumulation
        loss = ce
        if terms.mse is not None:
            loss = loss + getattr(args, "lambda_mse", 0.0) * terms.mse / accumulation
        if terms.distill is not None:
            loss = loss + args.lambda_distill * terms.distill / accumulation
        self._log_terms(terms, inputs, mode)
        return (loss, terms) if return_outputs else loss

    def _log_terms(self, terms: LossTerms, inputs, mode: str) -> None:
        """Gather every term over processes and keep it in `self._metrics`, TRL's way."""
        device = terms.ce_sum.device
        rows = float(terms.restore_rows)

        def part(value):
            return (value.detach().float() * rows, rows) if value is not None else (0.0, 0.0)

        mse, mse_rows = part(terms.mse)
        distill, distill_rows = part(terms.distill)
        local = torch.tensor(
            [
                float(terms.ce_sum.detach()),
                float(terms.ce_tokens),
                float(terms.ce_correct),
                float(mse),
                mse_rows,
                float(distill),
                distill_rows,
                rows,
                float(inputs["input_ids"].shape[0]),
                float(inputs["attention_mask"].sum()),
            ],
            device=device,
        )
        total = self.accelerator.gather(local).view(-1, local.numel()).sum(0).tolist()
        ce_sum, tokens, correct, mse, mse_rows, distill, distill_rows, restoring, batch, seen = total
        metrics = self._metrics[mode]
        if tokens:
            metrics["ce_loss"].append(ce_sum / tokens)
            metrics["mean_token_accuracy"].append(correct / tokens)
        if mse_rows:
            metrics["mse_loss"].append(mse / mse_rows)
        if distill_rows:
            metrics["distill_loss"].append(distill / distill_rows)
        metrics["restore_fraction"].append(restoring / batch)
        if mode == "train":
            self._total_train_tokens += int(seen)
        metrics["num_tokens"] = [self._total_train_tokens]


def train(recipe: Recipe, callbacks=()) -> ClearSFTTrainer:
    """Run stage 1 from a validated recipe; the model is saved into training.output_dir."""
    return run_stage(recipe, ClearSFTTrainer, callbacks=callbacks)
