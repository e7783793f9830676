"""Stage 3, Interleaved GRPO: `trl.GRPOTrainer` with interleaved rollouts and Flow-GRPO on the head.

What TRL does, unchanged: sampling G completions per prompt, reward gathering across processes,
group-normalised advantages, the text loss (loss types, clipping, KL), PEFT references, logging
and checkpoints. What this subclass adds:

1. Rollouts (`rollout_func`, TRL's hook for custom generation): `generate_interleaved` writes text,
   restores where the policy emits `<image_restore>` (an SDE, keeping the trajectory), bridges the
   latent back and continues. Placeholders go to TRL as `env_mask` = 0, the way TRL masks tool
   output, so the text loss covers model-written tokens only.
2. Forward passes carry the rollout's restored latents (the bridged tokens are in the context
   when text log-probs are recomputed; with `readback: reencode`, the rollout's vision-path tokens
   of the decoded latents, kept like a tool's output; with `degraded_view: drop`, the same
   hidden image tokens as in the rollout) and, in the same pass, re-run the chosen denoising steps
   of each restoring rollout (`flow_latents` of the model's forward).
3. The Flow-GRPO loss: per-step Gaussian log-prob ratios against the rollout-time policy, the
   same advantages and clipping as the text; with `beta` > 0 a KL of step means to the reference.
   L = L_text + flow_loss_weight * L_flow (`alternation: joint`), or text and flow optimizer
   steps in turn (`alternation: alternate`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import GRPOTrainer
from trl.data_utils import apply_chat_template
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from clear_rl.data.prompts import format_question, row_options
from clear_rl.errors import RecipeError
from clear_rl.flow import sampling_schedule, sde_step, step_mean_kl
from clear_rl.generation import InterleavedGenerationConfig, generate_interleaved
from clear_rl.models.processing import vae_pixel_values
from clear_rl.models.readback import first_placeholder, view_mask
from clear_rl.recipe import Recipe
from clear_rl.trainers.common import (
    DEFAULT_TRAINABLE_PARTS,
    UnifiedCheckpointMixin,
    build_model,
    finish,
    load_split,
    resume_checkpoint,
    seed_everything,
    unified_core,
)
from clear_rl.trainers.grpo_config import InterleavedGRPOConfig

logger = logging.getLogger(__name__)
CONFIG_CLASS = InterleavedGRPOConfig
FLOW_KEYS = ("flow_latents", "flow_next", "flow_t", "flow_t_next")
GRPO_COLUMNS = ("image", "question", "answer")  # clean_image, corruption, severity, ... are optional


@dataclass
class _ForwardState:
    """Per-row tensors a forward pass needs beside TRL's inputs, in the row order TRL uses."""

    restored_latents: torch.Tensor
    degraded_latents: torch.Tensor
    restored: torch.Tensor
    flow_latents: torch.Tensor
    flow_t: torch.Tensor
    restored_embeds: torch.Tensor | None = None  # (B, N, D) the slot's tokens under readback=reencode
    velocities: list[torch.Tensor] = field(default_factory=list)  # one entry per forward call


class _LatentAwareModel:
    """Stands in for the model inside TRL's `_get_per_token_logps_and_entropies`.

    TRL slices the batch into chunks (and multimodal tensors with it) and calls
    `model(**inputs, labels=labels, fused_lm_head=True)` per chunk, expecting per-token
    log-probs. This adds the chunk's restored and flow latents, runs the model's ordinary
    forward, and returns what TRL reads; TRL's slicing logic is reused, not copied.
    """

    def __init__(
        self, model, state: _ForwardState, temperature: float, keep: int, entropy: bool, drop_view: bool
    ):
        self.model, self.state, self.temperature = model, state, temperature
        self.keep, self.entropy = keep, entropy  # TRL's logits_to_keep and compute_entropy
        self.drop_view = drop_view  # hide image tokens after the slot, as the rollout did
        self.offset, self.velocities = 0, []

    def __call__(self, input_ids, attention_mask, labels, fused_lm_head=True, **inputs):
        rows = slice(self.offset, self.offset + input_ids.shape[0])
        self.offset = rows.stop
        state, keep = self.state, self.keep
        restoring = bool(state.restored[rows].any())
        flow = {}
        if restoring:  # re-run the chosen denoising steps in this same forward pass
            flow = {
                "flow_latents": state.flow_latents[rows],
                "flow_timesteps": state.flow_t[rows],
                "flow_rows": state.restored[rows],
                "degraded_latents": state.degraded_latents[rows],
            }
        if state.restored_embeds is not None:
            inputs["restored_embeds"] = state.restored_embeds[rows]
        if self.drop_view and restoring:
            unified = unified_core(self.model)
            hide_from = first_placeholder(input_ids, unified.token_ids.restored_pad)
            attention_mask = view_mask(unified, input_ids, attention_mask, hide_from)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            restored_latents=state.restored_latents[rows],
            logits_to_keep=keep + 1,
            use_cache=False,
            **flow,
            **inputs,
        )
        velocity = outputs["flow_velocity"] if restoring else torch.zeros_like(state.flow_latents[rows])
        self.velocities.append(velocity)
        logits = outputs.logits[:, :-1]  # position j predicts token j + 1
        # TRL reads the last `keep` positions; labels are -100 before them and on padding.
        mask = (labels[:, -keep:] != -100).float()
        log_probs = selective_log_softmax(
            logits, labels[:, -keep:].clamp(min=0), temperature=self.temperature
        )
        entropy = None
        if self.entropy:
            with torch.no_grad():
                entropy = entropy_from_logits(logits / self.temperature) * mask
        return _ScoredTokens(log_probs=log_probs * mask, entropy=entropy, aux_loss=None)


@dataclass
class _ScoredTokens:
    log_probs: torch.Tensor
    entropy: torch.Tensor | None
    aux_loss: torch.Tensor | None


class InterleavedGRPOTrainer(UnifiedCheckpointMixin, GRPOTrainer):
    """GRPO over interleaved text + restoration rollouts, with Flow-GRPO on the restoration head."""

    def __init__(
        self, model, reward_funcs, args: InterleavedGRPOConfig, train_dataset, processing_class, **kwargs
    ):
        # `rollout_func` is TRL's documented hook for custom generation; its experimental warning is
        # about TRL's API, which this class pins, not about anything a user does.
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            rollout_func=self._rollout,
            **kwargs,
        )
        unified = self._unified_model()
        if unified.token_ids.answer_end not in self.eos_token_ids:
            self.eos_token_ids.append(unified.token_ids.answer_end)  # `</answer>` ends a completion too
        self._schedule = sampling_schedule(args.num_inference_steps, args.flow_shift)
        seed = args.seed + self.accelerator.process_index
        self._generator = torch.Generator(device=self.accelerator.device).manual_seed(seed)
        self._step_chooser = torch.Generator().manual_seed(seed)
        self._batch_inputs: list[dict] | None = None  # rows of the batch being rolled out
        self._stash: dict[str, torch.Tensor] = {}  # the rollout's per-row tensors, added to TRL's output
        self._state: _ForwardState | None = None  # what forward passes need beside TRL's inputs

    def _unified_model(self):
        return unified_core(self.model)

    # -- rollouts ---------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._batch_inputs = inputs  # the rollout reads `image` and `clean_image` from the rows
        output = super()._generate_and_score_completions(inputs)
        state, stash = self._state, self._stash
        calls = iter(state.velocities)  # forwards TRL ran after the rollout: old policy, then reference
        if "old_per_token_logps" in output:
            output["flow_old_logps"] = self._flow_step(stash, next(calls)).log_prob.view(
                stash["flow_t"].shape
            )
        if self.beta != 0.0:
            reference = self._flow_step(stash, next(calls)).mean
            output["flow_ref_mean"] = reference.view(*stash["flow_t"].shape, *reference.shape[1:])
        output.update(stash)
        mode = "train" if self.model.training else "eval"
        restore_rate = self.accelerator.gather(stash["restored"].float()).mean().item()
        self._metrics[mode]["restore_rate"].append(restore_rate)
        return output

    def _rollout(self, prompts: list, trainer) -> dict:
        """TRL's `rollout_func`: interleaved generation for a batch of (already repeated) prompts."""
        args, device = self.args, self.accelerator.device
        rows = self._batch_inputs  # TRL's rows of these prompts, in order (it inserted `image` into them)
        images = [row["image"] for row in rows]
        texts = [
            apply_chat_template({"prompt": p}, self.processing_class, **self.chat_template_kwargs)["prompt"]
            for p in prompts
        ]
        encoded = self.processing_class(
            images=[[image] for image in images],
            text=texts,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(device)
        unified = self._unified_model()
        size = unified.config.vae_image_size
        config = InterleavedGenerationConfig(
            max_new_tokens=args.max_completion_length,
            do_sample=True,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k or 0,
            restore=args.restore_policy,
            readback=args.readback,
            degraded_view=args.degraded_view,
            sampler="sde",
            num_inference_steps=args.num_inference_steps,
            flow_shift=args.flow_shift,
            noise_level=args.sde_noise_level,
        )
        vlm_inputs = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
        with (
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation
            ) as generator_model,
            torch.no_grad(),
        ):
            # The degraded images' latents only condition restorations: generation encodes them when
            # the first row restores, so a batch in which nobody restores (all of them under
            # `restore_policy: never`) skips that VAE encode.
            out = generate_interleaved(
                generator_model,
                encoded["input_ids"],
                encoded["attention_mask"],
                config,
                vae_pixel_values=vae_pixel_values(images, size).to(device),
                generator=self._generator,
                image_processor=self.processing_class if args.readback == "reencode" else None,
                **vlm_inputs,
            )
            degraded = out.degraded_latents
            if degraded is None:  # nobody restored: the flow tensors, all masked, only need the shape
                degraded = torch.zeros(len(prompts), *unified.latent_shape, device=device)
            # The clean image's latent is what restorations are compared with (latent_quality):
            # encoded for the rows that restored, None for the others.
            clean_latents: list[torch.Tensor | None] = [None] * len(prompts)
            restoring = [
                i for i, r in enumerate(out.restored.tolist()) if r and rows[i].get("clean_image") is not None
            ]
            if restoring:
                encoded_clean = generator_model.encode_latents(
                    vae_pixel_values([rows[i]["clean_image"] for i in restoring], size).to(device)
                ).float()
                for i, latent in zip(restoring, encoded_clean.cpu()):
                    clean_latents[i] = latent
        self._stash = self._flow_stash(out, degraded)
        if out.restored_embeds is not None:  # readback=reencode and someone restored: what the slot read
            self._stash["restored_embeds"] = out.restored_embeds
        self._state = _ForwardState(
            out.restored_latents,
            degraded,
            out.restored,
            self._stash["flow_latents"],
            self._stash["flow_t"],
            self._stash.get("restored_embeds"),
        )
        real = out.completion_mask.bool()
        text = out.text_mask
        restored = out.restored.tolist()
        return {
            "prompt_ids": [
                ids[m.bool()].tolist() for ids, m in zip(encoded["input_ids"], encoded["attention_mask"])
            ],
            "completion_ids": [ids[m].tolist() for ids, m in zip(out.completion_ids, real)],
            "logprobs": [lp[m].tolist() for lp, m in zip(out.token_logprobs, real)],
            "env_mask": [t[m].int().tolist() for t, m in zip(text, real)],
            # Per-completion keyword arguments of the reward functions.
            "restored": restored,
            "restored_latents": [lat.cpu() if r else None for lat, r in zip(out.restored_latents, restored)],
            "clean_latents": clean_latents,
        }

    def _flow_stash(self, out, degraded: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-row tensors of the flow loss: K chosen denoising steps of each trajectory."""
        batch, steps = out.restored.shape[0], self.args.num_inference_steps
        k = steps if self.args.flow_train_steps == -1 else self.args.flow_train_steps
        chosen = torch.stack([torch.randperm(steps, generator=self._step_chooser)[:k] for _ in range(batch)])
        chosen = chosen.sort(dim=1).values.to(degraded.device)
        schedule = self._schedule.to(degraded.device)
        trajectory = out.trajectory
        if trajectory is None:  # nobody restored: flow tensors exist (for TRL's batching) but are masked
            trajectory = degraded.new_zeros(batch, steps + 1, *degraded.shape[1:])
        rows = torch.arange(batch, device=degraded.device)[:, None]
        return {
            "restored": out.restored,
            "restored_latents": out.restored_latents,
            "degraded_latents": degraded,
            "flow_latents": trajectory[rows, chosen],
            "flow_next": trajectory[rows, chosen + 1],
            "flow_t": schedule[chosen],
            "flow_t_next": schedule[chosen + 1],
        }

    def _flow_step(self, batch: dict[str, torch.Tensor], velocity: torch.Tensor):
        """Score the stored transitions x_t -> x_next under `velocity` (Flow-GRPO's SDE step)."""
        flat = {key: batch[key].flatten(0, 1) for key in FLOW_KEYS}
        steps = batch["flow_latents"].shape[1]
        mean = self._unified_model().flow_source_mean(batch["degraded_latents"])
        return sde_step(
            flat["flow_latents"],
            velocity.flatten(0, 1),
            flat["flow_t"],
            flat["flow_t_next"],
            self.args.sde_noise_level,
            t_max=float(self._schedule[1]),
            next_sample=flat["flow_next"],
            source_mean=None if mean is None else mean.repeat_interleave(steps, dim=0),
        )

    # -- forward passes ---------------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        **kwargs,
    ):
        stand_in = _LatentAwareModel(
            model,
            self._state,
            self.temperature,
            logits_to_keep,
            compute_entropy,
            drop_view=self.args.degraded_view == "drop",
        )
        result = super()._get_per_token_logps_and_entropies(
            stand_in, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
        )
        self._state.velocities.append(torch.cat(stand_in.velocities))
        return result

    # -- the loss ---------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        self._state = _ForwardState(
            inputs["restored_latents"],
            inputs["degraded_latents"],
            inputs["restored"],
            inputs["flow_latents"],
            inputs["flow_t"],
            inputs.get("restored_embeds"),
        )
        text_loss = super()._compute_loss(model, inputs)
        flow_loss = self._flow_loss(inputs, self._state.velocities[-1])
        mode = "train" if self.model.training else "eval"
        weight = self.args.flow_loss_weight
        if self.args.alternation == "alternate" and mode == "train":
            flow_turn = self.state.global_step % 2 == 1
            # The resting term stays in the graph with weight 0, so every rank sees the same parameters.
            loss = weight * flow_loss + 0.0 * text_loss if flow_turn else text_loss + 0.0 * flow_loss
        else:
            loss = text_loss + weight * flow_loss
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        self._metrics[mode]["text/loss"].append(
            self.accelerator.gather(text_loss.detach() * scale).mean().item()
        )
        return loss

    def _flow_loss(self, inputs, velocity: torch.Tensor) -> torch.Tensor:
        """PPO-clipped Flow-GRPO loss over the chosen steps of restoring rollouts."""
        step = self._flow_step(inputs, velocity)
        shape = inputs["flow_t"].shape
        log_prob = step.log_prob.view(shape)
        old = inputs.get("flow_old_logps")
        old = log_prob.detach() if old is None else old  # on-policy: ratio exactly 1, as TRL does for text
        ratio = torch.exp(log_prob - old)
        advantages = inputs["advantages"].view(-1, 1)
        clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
        per_step = -torch.min(ratio * advantages, clipped * advantages)
        mask = inputs["restored"].bool()[:, None].expand(shape)
        kl = None
        if self.beta != 0.0:
            kl = step_mean_kl(step.mean, inputs["flow_ref_mean"].flatten(0, 1), step.std).view(shape)
            per_step = per_step + self.beta * kl
        count = mask.sum().clamp(min=1)
        loss = torch.where(mask, per_step, 0.0).sum() / count
        mode = "train" if self.model.training else "eval"
        is_clipped = ((ratio < 1 - self.epsilon_low) & (advantages < 0)) | (
            (ratio > 1 + self.epsilon_high) & (advantages > 0)
        )
        stats = torch.stack(
            [
                loss.detach() * count,
                torch.where(mask, is_clipped.float(), 0.0).sum(),
                torch.where(mask, ratio.detach(), 0.0).sum(),
                torch.where(mask, kl.detach(), 0.0).sum() if kl is not None else loss.new_zeros(()),
                mask.sum().float(),
            ]
        )
        totals = self.accelerator.reduce(stats, reduction="sum")
        denominator = totals[4].clamp(min=1)
        self._metrics[mode]["flow/loss"].append((totals[0] / denominator).item())
        self._metrics[mode]["flow/clip_ratio"].append((totals[1] / denominator).item())
        self._metrics[mode]["flow/ratio_mean"].append(
            (totals[2] / denominator).item() if totals[4] > 0 else 1.0
        )
        if kl is not None:
            self._metrics[mode]["flow/kl"].append((totals[3] / denominator).item())
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return loss / normalizer


def to_grpo_dataset(prepared, system_prompt: str | None):
    """Prepared rows -> TRL's conversational prompts (the image is inserted by TRL from `image`)."""

    def prompt(row):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": format_question(row["question"], row_options(row))})
        return {"prompt": messages}

    return prepared.map(prompt, desc="GRPO prompts")


def train(recipe: Recipe, callbacks=()) -> None:
    """Run stage 3 from a validated recipe (`callbacks`: extra TrainerCallbacks)."""
    from clear_rl.trainers.progress import attach_callbacks

    args: InterleavedGRPOConfig = recipe.training
    if not recipe.rewards:
        raise RecipeError(f"{recipe.source}: the grpo stage needs a `rewards:` section")
    from clear_rl.rewards import load_rewards

    reward_funcs, weights = load_rewards(recipe.rewards)
    if args.reward_weights is not None:
        raise RecipeError(
            f"{recipe.source}: training.reward_weights: give weights in the rewards: list instead"
        )
    args.reward_weights = weights
    seed_everything(args.seed)
    model, processor = build_model(
        recipe.model,
        default_parts=DEFAULT_TRAINABLE_PARTS,
        adapter_base_dir=Path(args.output_dir) / "base",
        args=args,
    )
    data = load_split(recipe.data.path, recipe.data.split, recipe.data.max_samples, required=GRPO_COLUMNS)
    trainer = InterleavedGRPOTrainer(
        model,
        reward_funcs,
        args,
        to_grpo_dataset(data, recipe.data.system_prompt),
        processing_class=processor,
    )
    attach_callbacks(trainer, callbacks)
    trainer.train(resume_from_checkpoint=resume_checkpoint(args.resume_from_checkpoint, args.output_dir))
    finish(trainer, processor, recipe)
