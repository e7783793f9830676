"""Stage 0 for the restoration head of the demo's tiny model: flow matching on cached contexts.

The head learns what stage 1's flow term teaches it (`losses.flow_matching_sample`: the clean
latent as x0, from the degraded one), conditioned on the base VLM's hidden states up to
`<image_restore>` of each row's teacher-forced target. In stage 0 the VLM and the VAE are frozen,
so a row's context and latents never change: they are computed once, in no-grad passes
(`teacher_forced_context`, `encode_latents`), and the head then trains on them alone. Running the
stage-1 trainer with only the head trainable recomputes the frozen VLM and two VAE encodes at
every step, which cost about 20 times the head's own step at the demo's sizes; no library
trainer caches a frozen conditioning model's outputs, hence the cached loop (cached_training.py).
"""

from __future__ import annotations

import torch

from clear_rl.data.collate import ClearCollator, split_inputs
from clear_rl.demo.cached_training import train_on_cache
from clear_rl.models.composed import ComposedUnifiedModel, RestorationContext
from clear_rl.trainers.losses import flow_matching_sample


@torch.no_grad()
def cache_contexts(
    model: ComposedUnifiedModel, processor, rows, system_prompt: str | None, batch_size: int = 64
) -> tuple[RestorationContext, torch.Tensor]:
    """(every row's restoration context, every row's clean latent) for restoring `rows` (prepared rows)."""
    model.eval()
    collator = ClearCollator.for_model(model, processor, system_prompt)
    states, masks, degraded, clean = [], [], [], []
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        student, _ = split_inputs(batch)
        latents = model.encode_latents(batch["vae_pixel_values"]).float()
        context = model.teacher_forced_context(model.forward, student, latents, torch.arange(len(latents)))
        length = int(context.attention_mask.sum(1).max())  # right-padded: the contexts end by here
        states.append(context.hidden_states[:, :length].float())
        masks.append(context.attention_mask[:, :length])
        degraded.append(latents)
        clean.append(model.encode_latents(batch["clean_vae_pixel_values"]).float())
    longest = max(s.shape[1] for s in states)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(
            x, (0, 0, 0, longest - x.shape[1]) if x.dim() == 3 else (0, longest - x.shape[1])
        )

    context = RestorationContext(
        torch.cat([pad(s) for s in states]), torch.cat([pad(m) for m in masks]), torch.cat(degraded)
    )
    return context, torch.cat(clean)


def train_head(
    model: ComposedUnifiedModel,
    context: RestorationContext,
    clean_latents: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    warmup_steps: int = 20,
    seed: int = 0,
) -> list[float]:
    """Train `model.restoration_head` by flow matching on cached contexts; returns the loss curve."""

    def step_loss(rows: torch.Tensor, generator: torch.Generator):
        part = context.select(rows)
        x_t, t, target = flow_matching_sample(
            model, clean_latents[rows], part.degraded_latents, model.config.flow_shift, generator
        )
        return (model.velocity(x_t, t, part).float() - target).pow(2).mean(), {}

    return train_on_cache(
        model.restoration_head, context.num_rows, step_loss, steps, "stage 0: restoration head",
        batch_size, learning_rate, warmup_steps, seed,
    )  # fmt: skip
