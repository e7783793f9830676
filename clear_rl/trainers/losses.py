"""The loss terms of stages 1 and 2, computed from one teacher-forced pass over a collated batch.

- CE: next-token cross-entropy on the assistant text (labels from the collator: prompt,
  placeholders and padding are -100). Logits are built only at positions that have a label.
- MSE (stage 1): the flow-matching velocity loss of the restoration head, conditioned on the
  hidden states up to each restoring row's `<image_restore>` from the same pass, with the CLEAN
  image's latent as x0: mean over restoring rows and latent elements of
  (v_theta(x_t, t, context) - (eps - x0))^2, x_t = (1 - t) x0 + t eps, t = shift(sigmoid(randn)).
- Distill: how well the bridged-latent tokens (student, at `<|restored_pad|>` positions of the
  same pass) match the clean image's ViT tokens (teacher: a no-grad pass of the prompt with the
  clean image). `per_layer_kl` (CLEAR's released code): at every LLM layer l = 1..L and token,
  KL(softmax(h_vit.detach()) || softmax(h_vae)) over the hidden dimension, on token grids
  matched by adaptive average pooling; mean over tokens, sum over layers with weight
  l / sum(1..L), mean over restoring rows. `pooled_mse`: mean over rows of the squared distance
  between the token-mean last-layer states, averaged over the hidden dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clear_rl.choices import DistillMode
from clear_rl.data.collate import IGNORE_INDEX, split_inputs
from clear_rl.flow import add_noise, sample_training_timesteps, velocity_target
from clear_rl.models.backbone import TrainableBackbone
from clear_rl.models.same_work import runs_every_pass


@dataclass
class LossTerms:
    """Unweighted loss terms of one micro-batch; `None` where a term does not apply."""

    ce_sum: torch.Tensor  # summed token cross-entropy
    ce_tokens: torch.Tensor  # number of label tokens
    ce_correct: torch.Tensor  # label tokens predicted by the argmax
    mse: torch.Tensor | None  # flow-matching MSE, mean over restoring rows
    distill: torch.Tensor | None  # distill loss, mean over restoring rows
    restore_rows: int


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict a label (in any row): the only logits the CE needs."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def token_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of CE, token count, correct count) for logits (B, K, V) computed at `positions` (K,)."""
    targets = labels[:, positions + 1]
    valid = targets != IGNORE_INDEX
    flat = logits.float().flatten(0, 1)
    ce = F.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((logits.argmax(-1) == targets) & valid).sum()
    return ce, valid.sum(), correct


def flow_matching_sample(
    model: TrainableBackbone,
    clean_latents: torch.Tensor,
    degraded_latents: torch.Tensor,
    shift: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, velocity target) at one random noise level per row, x0 = the clean latent (source:
    noise, or noise centred on the degraded latent, as the model's `flow_source` says)."""
    x0 = clean_latents.float()
    t = sample_training_timesteps(x0.shape[0], shift, generator=generator, device=x0.device)
    source = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    mean = model.flow_source_mean(degraded_latents)
    if mean is not None:
        source = source + mean.to(x0.device)
    return add_noise(x0, source, t), t, velocity_target(x0, source)


def _grid_states(states: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(layers, tokens, D) row-major tokens -> (layers, D, rows, cols)."""
    return states.transpose(1, 2).reshape(states.shape[0], states.shape[2], *grid)


def per_layer_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Layer-weighted token KL(softmax(teacher) || softmax(student)); inputs (layers, D, rows, cols)."""
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    s = F.adaptive_avg_pool2d(student.float(), size).flatten(2).transpose(1, 2)  # (layers, T, D)
    t = F.adaptive_avg_pool2d(teacher.detach().float(), size).flatten(2).transpose(1, 2)
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none")
    per_layer = kl.sum(-1).mean(-1)  # (layers,)
    weights = torch.arange(1, per_layer.shape[0] + 1, device=per_layer.device, dtype=per_layer.dtype)
    return (per_layer * weights).sum() / weights.sum()


def distill_loss(
    model,
    student_output,
    student_ids: torch.Tensor,
    teacher_output,
    teacher_ids: torch.Tensor,
    rows: torch.Tensor,
    mode: DistillMode = "per_layer_kl",
    teacher_grid_thw: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over `rows` of the distance between bridged-latent tokens and clean ViT tokens."""
    losses = []
    for row in rows.tolist():
        # (layers, tokens, D) over the outputs of every LLM layer
        s = model.restored_token_states(student_output, student_ids, row)
        t = model.image_token_states(teacher_output, teacher_ids, row)
        if mode == "pooled_mse":
            losses.append((t[-1].detach().float().mean(0) - s[-1].float().mean(0)).pow(2).mean())
            continue
        thw = None if teacher_grid_thw is None else teacher_grid_thw[row]  # one image per row
        grid_s = model.restored_token_grid(student_output, row)
        grid_t = model.image_token_grid(teacher_output, row, t.shape[1], thw)
        losses.append(per_layer_kl(_grid_states(s, grid_s), _grid_states(t, grid_t)))
    return torch.stack(losses).mean()


def _drop_vit_tokens(model, input_ids, attention_mask, labels, rows, probability: float, generator):
    """CLEAR's ViT-token dropout: some restoring rows do not see the degraded image's ViT tokens.

    For a dropped row the attention mask hides its image tokens from every position, so the answer
    must come from the restored slot (the bridged latent) and the head's context from the degraded
    latent it is given; the text up to `<image_restore>`, a quality check of the now unseen image,
    leaves the CE. Without it the model can answer from the degraded view and ignore the slot.
    Returns the new (attention_mask, labels).
    """
    chosen = torch.rand(len(rows), generator=generator, device=generator.device).to(rows.device) < probability
    dropped = rows[chosen]
    if not len(dropped):
        return attention_mask, labels
    attention_mask, labels = attention_mask.clone(), labels.clone()
    ids = input_ids[dropped]
    attention_mask[dropped] = attention_mask[dropped] * (~model.image_token_mask(ids)).to(
        attention_mask.dtype
    )
    # Up to the row's last `<image_restore>` (the prompt may mention the tag too): the decision and
    # the quality check before it judged an image this row no longer sees.
    labels[dropped] = labels[dropped].masked_fill(model.up_to_last_restore(ids), -100)
    return attention_mask, labels


def loss_terms(
    model: TrainableBackbone,
    forward: Callable[..., Any],
    inputs: Mapping[str, torch.Tensor],
    generator: torch.Generator,
    *,
    with_mse: bool,
    with_distill: bool,
    distill_mode: DistillMode = "per_layer_kl",
    train_timestep_shift: float | None = None,
    vit_token_dropout: float = 0.0,
    restored_latents: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LossTerms:
    """Run the teacher-forced pass (and the teacher's, for distill) and return the loss terms.

    `forward` is the model's own forward (called with `restored_latents=...`); `restored_latents`
    maps the degraded latents to what fills the restored slot (stage 2); by default the clean
    image's latent fills it (stage 1, teacher forcing).
    """
    student, teacher = split_inputs(inputs)
    input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    restore = inputs["restore"].bool()
    rows = restore.nonzero().squeeze(1)
    if vit_token_dropout > 0 and len(rows):
        attention_mask, labels = _drop_vit_tokens(
            model, input_ids, attention_mask, labels, rows, vit_token_dropout, generator
        )
        student = {**student, "attention_mask": attention_mask}
    # Under sharding a rank without restoring rows still runs what one with them runs (the degraded
    # encode, stage 2's restorations, the teacher pass): models/same_work.py.
    restores = len(rows) > 0 or runs_every_pass(model)
    with torch.no_grad():  # the VAE never trains
        clean_latents = model.encode_latents(inputs["clean_vae_pixel_values"]).float()
        need_degraded = (with_mse or restored_latents is not None) and restores
        degraded_latents = model.encode_latents(inputs["vae_pixel_values"]).float() if need_degraded else None
    slot = restored_latents(degraded_latents) if restored_latents is not None and restores else clean_latents
    flow, target = {}, None
    if with_mse and restores:  # the head runs in the same pass, through the model's flow arguments
        flow_latents = clean_latents.new_zeros(restore.shape[0], 1, *clean_latents.shape[1:])
        timesteps = clean_latents.new_zeros(restore.shape[0], 1)
        if len(rows):
            shift = model.config.flow_shift if train_timestep_shift is None else train_timestep_shift
            x_t, t, target = flow_matching_sample(
                model, clean_latents[rows], degraded_latents[rows], shift, generator
            )
            flow_latents[rows, 0] = x_t
            timesteps[rows, 0] = t
        flow = {
            "flow_latents": flow_latents,
            "flow_timesteps": timesteps,
            "flow_rows": restore,
            "degraded_latents": degraded_latents,
        }
    positions = label_positions(labels)
    out = forward(
        **student,
        restored_latents=slot,
        output_hidden_states=True,
        use_cache=False,
        logits_to_keep=positions,
        **flow,
    )
    ce_sum, ce_tokens, ce_correct = token_cross_entropy(out.logits, labels, positions)
    mse = distill = None
    if flow and len(rows):
        mse = (out["flow_velocity"][rows, 0].float() - target).pow(2).mean()
    elif flow:  # the same-work rule: the idle head's result, weight zero (models/same_work.py)
        mse = 0.0 * out["flow_velocity"].float().sum()
    if with_distill and restores:
        with torch.no_grad():
            teacher_out = forward(**teacher, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        if len(rows):
            distill = distill_loss(
                model,
                out,
                input_ids,
                teacher_out,
                teacher["input_ids"],
                rows,
                distill_mode,
                teacher.get("image_grid_thw"),
            )
        else:  # the same-work rule: row 0's layer states, as the distill reads them, weight zero
            distill = 0.0 * model.image_token_states(out, input_ids, 0).float().sum()
    return LossTerms(ce_sum, ce_tokens, ce_correct, mse, distill, len(rows))
