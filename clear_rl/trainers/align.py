"""Bridge alignment: teach the latent bridge the VLM's own language, from images alone.

An LLM that was never trained on VAE latents reads `bridge(latent)` as noise; it does read what
its own vision path hands it. So, before stage 1, the bridge is trained so that
`bridge(VAE latent of an image)` matches, token for token, the VLM's vision-path tokens of the
same image (vision tower + projector: `models/vision.py`), at the LLM's input and, optionally,
through the LLM's layers (the image tokens alone run through the decoder; the bridged tokens'
hidden states follow the vision tokens'). No questions or labels: any folder of images aligns the
bridge of any VLM + VAE pair.

Loss per batch, on the bridge's token grid (the vision grid resampled to it when they differ):
  MSE(bridged, vision) / var(vision)  +  lambda_cos * (1 - cos(bridged, vision))
  [+ lambda_hidden * the same standardised MSE on the LLM hidden states, layer-weighted]
The variance is per hidden dimension over the batch's tokens (detached), so every dimension
counts whatever its scale. The trainer is a plain `transformers.Trainer`: TRL's trainers train on
text, and this objective has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from clear_rl.data.image_sources import AlignCollator, load_image_dataset
from clear_rl.errors import DataError
from clear_rl.models.composed import ComposedUnifiedModel
from clear_rl.models.vision import vision_token_grid, vision_tokens
from clear_rl.recipe import Recipe
from clear_rl.trainers.align_config import AlignConfig
from clear_rl.trainers.common import (
    LossOnlyEvaluationMixin,
    UnifiedCheckpointMixin,
    build_model,
    finish,
    resume_checkpoint,
    seed_everything,
    start_run,
    unified_core,
)
from clear_rl.trainers.progress import attach_callbacks

CONFIG_CLASS = AlignConfig


@dataclass
class AlignmentTerms:
    """Unweighted terms of one batch (standardised MSE, 1 - cosine, hidden-state MSE or None)."""

    mse: torch.Tensor
    cosine: torch.Tensor
    hidden: torch.Tensor | None


def _on_grid(tokens: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """(B, rows*cols, D) row-major tokens resampled to the `target` grid (area when shrinking)."""
    if grid == target:
        return tokens
    b, _, d = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, d, *grid).float()
    shrink = target[0] <= grid[0] and target[1] <= grid[1]
    x = F.adaptive_avg_pool2d(x, target) if shrink else F.interpolate(x, target, mode="bilinear")
    return x.flatten(2).transpose(1, 2).to(tokens.dtype)


def _standardised_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    var = teacher.detach().float().flatten(0, -2).var(0).clamp(min=1e-6)
    return ((student.float() - teacher.float()).pow(2) / var).mean()


def token_terms(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(standardised MSE, 1 - mean cosine) between bridged tokens and the vision path's tokens."""
    return _standardised_mse(student, teacher), 1 - F.cosine_similarity(student, teacher, dim=-1).mean()


def vision_targets(model: ComposedUnifiedModel, inputs: Mapping[str, Any]) -> torch.Tensor:
    """The vision path's tokens of each image, laid on the bridge's grid: (B, N_bridge, D)."""
    vlm_inputs = {k: v for k, v in inputs.items() if k != "vae_pixel_values"}
    per_image = vision_tokens(model.vlm, vlm_inputs)
    bridge_grid = model.latent_bridge.grid_size(model.latent_shape[1:])
    thw = vlm_inputs.get("image_grid_thw")
    targets = []
    for i, tokens in enumerate(per_image):
        grid = vision_token_grid(model.config.vlm_config, tokens.shape[0], None if thw is None else thw[i])
        targets.append(_on_grid(tokens[None], grid, bridge_grid)[0])
    return torch.stack(targets)


def _llm_states(model: ComposedUnifiedModel, embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Hidden states of every decoder layer for a sequence of image tokens alone."""
    decoder = model.vlm.get_decoder()
    return decoder(inputs_embeds=embeds, output_hidden_states=True, use_cache=False).hidden_states[1:]


def alignment_terms(
    model: ComposedUnifiedModel, inputs: Mapping[str, Any], with_hidden: bool
) -> AlignmentTerms:
    """The alignment terms of one batch: bridged clean latents vs the vision path's tokens."""
    with torch.no_grad():  # the VAE and the vision path are the fixed reference
        teacher = vision_targets(model, inputs).float()
        latents = model.encode_latents(inputs["vae_pixel_values"])
    student = model.bridge(latents).float()
    mse, cosine = token_terms(student, teacher)
    hidden = None
    if with_hidden:
        with torch.no_grad():
            teacher_states = _llm_states(model, teacher.to(model.dtype))
        student_states = _llm_states(model, student.to(model.dtype))
        weights = torch.arange(1, len(student_states) + 1, dtype=torch.float32, device=student.device)
        per_layer = torch.stack([_standardised_mse(s, t) for s, t in zip(student_states, teacher_states)])
        hidden = (per_layer * weights).sum() / weights.sum()
    return AlignmentTerms(mse, cosine, hidden)


class AlignTrainer(LossOnlyEvaluationMixin, UnifiedCheckpointMixin, Trainer):
    """`transformers.Trainer` whose loss is the bridge alignment; logs each term on its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._terms: dict[str, list[float]] = {}
        self.loss_is_scaled_for_ga = False  # Trainer divides the loss by the accumulation steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args

        def step(core, forward, batch):
            terms = alignment_terms(core, batch, with_hidden=args.lambda_hidden > 0)
            return {f.name: getattr(terms, f.name) for f in fields(terms)}

        # The bridge and VAE run beside the VLM: inside the model's forward call, so DDP/FSDP see them.
        terms = AlignmentTerms(**model(clear_step=step, **inputs))
        loss = terms.mse + args.lambda_cos * terms.cosine
        if terms.hidden is not None:
            loss = loss + args.lambda_hidden * terms.hidden
        for name, value in (
            ("align_mse", terms.mse),
            ("align_cos", 1 - terms.cosine),
            ("align_hidden", terms.hidden),
        ):
            if value is not None:
                self._terms.setdefault(name, []).append(float(value.detach()))
        return (loss, terms) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each term since the last log (as TRL's trainers do with `_metrics`)."""
        logs.update({name: sum(v) / len(v) for name, v in self._terms.items() if v})
        self._terms = {}
        super().log(logs, start_time)


def train(recipe: Recipe, callbacks=()) -> AlignTrainer:
    """Align the bridge from a validated recipe (`stage: align`); the model is saved into output_dir."""
    args = recipe.training
    start_run(recipe)
    seed_everything(args.seed)
    data = recipe.data
    train_dataset = load_image_dataset(data.path, data.split, data.image_column, data.max_samples)
    eval_dataset = (
        load_image_dataset(data.path, data.eval_split, data.image_column, data.max_samples)
        if data.eval_split
        else None
    )
    if len(train_dataset) == 0:
        raise DataError(f"{data.path}: no images to align the bridge on")
    model, processor = build_model(recipe.model, adapter_base_dir=None, args=args)
    core = unified_core(model)
    trainer = AlignTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=AlignCollator(processor, core.config.vae_image_size),
        processing_class=processor,
    )
    attach_callbacks(trainer, callbacks)
    trainer.train(resume_from_checkpoint=resume_checkpoint(args.resume_from_checkpoint, args.output_dir))
    finish(trainer, processor, recipe)
    return trainer
