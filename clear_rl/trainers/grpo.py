"""Stage 3, Interleaved GRPO: `trl.GRPOTrainer` with interleaved rollouts and Flow-GRPO on the head.

What TRL does, unchanged: sampling G completions per prompt, reward gathering across processes,
group-normalised advantages, the text loss (loss types, clipping, KL), PEFT references, logging
and checkpoints. What this subclass adds, in the order a batch meets it:

1. Rollout (`_rollout`, TRL's `rollout_func`): `answer_batch` writes text, restores where the
   policy emits `<image_restore>` (an SDE, keeping the trajectory), reads the latent back and
   continues. Placeholders go to TRL as `env_mask` = 0, the way TRL masks tool output, so the text
   loss covers model-written tokens only. The batch's restorations become one `FlowRollout`: what
   filled each slot and K chosen denoising steps of each trajectory.
2. TRL's scoring passes (old policy when off-policy, reference when beta > 0) see the rollout's
   slots (`_RolloutScorer`): restored latents (or the re-encoded tokens of `readback: reencode`),
   and with `degraded_view: drop` the same hidden image tokens as the rollout.
3. Rewards (`_calculate_rewards`): restoring rows first get their clean image's latent, for
   `latent_quality`.
4. Flow scoring (`_generate_and_score_completions`): the flow's own old-policy log-probs (when TRL
   is off-policy) and reference step means (beta > 0), each one no-grad pass. The `FlowRollout`
   then travels in TRL's inputs under `rollout`, shuffled and sliced with the batch.
5. The loss (`_compute_loss`): one forward scores the text (TRL's loss) and re-runs the chosen
   denoising steps (`flow_latents` of the model's forward); Flow-GRPO's loss on those steps uses
   per-step Gaussian log-prob ratios, the same advantages and clipping as the text, and with
   beta > 0 a KL of step means to the reference. L = L_text + flow_loss_weight * L_flow
   (`alternation: joint`), or text and flow optimizer steps in turn (`alternation: alternate`).

Resuming equals not stopping: each rollout's random draws are derived from (seed, step, rank)
(`_rollout_generators`), and TRL's buffered generation batch travels with the checkpoint
(`_save_rng_state`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import entropy_from_logits, selective_log_softmax, use_adapter

from clear_rl.data.grpo_prompts import prompt_image, to_grpo_dataset
from clear_rl.data.samples import GRPO_COLUMNS
from clear_rl.errors import ClearRLError
from clear_rl.flow import sde_step, step_mean_kl
from clear_rl.models import registry
from clear_rl.models.processing import vae_pixel_values
from clear_rl.models.readback import first_placeholder
from clear_rl.recipe import Recipe
from clear_rl.rollout.answering import answer_batch
from clear_rl.rollout.interleaved import InterleavedGenerationConfig, InterleavedOutput
from clear_rl.seeds import generator_for
from clear_rl.trainers.common import (
    UnifiedCheckpointMixin,
    build_model,
    finish,
    load_split,
    resume_checkpoint,
    seed_everything,
    start_run,
    unified_core,
)
from clear_rl.trainers.flow_steps import choose_flow_steps
from clear_rl.trainers.grpo_config import InterleavedGRPOConfig
from clear_rl.trainers.sharding import any_rank, full_weights, restores_anywhere, turn_on_same_work
from clear_rl.trainers.trl_api import check_grpo_api, check_grpo_attributes, multimodal_keys

check_grpo_api()  # a TRL whose private API differs fails here, naming its version and the tested range

logger = logging.getLogger(__name__)
CONFIG_CLASS = InterleavedGRPOConfig
# Per process, in each checkpoint: TRL's micro-step count and buffered generation batch.
GENERATION_STATE = "generation_state_{rank}.pt"
# The multimodal inputs TRL hands its scoring function, read from TRL (`trl_api.multimodal_keys`).
MULTIMODAL_KEYS = multimodal_keys()


@dataclass
class FlowRollout:
    """A batch of rollouts as the scoring passes and the Flow-GRPO loss need them (dim 0: rows).

    TRL carries it in its inputs under `rollout` as a list of one-row pieces (`rows()`), which it
    shuffles and slices with the rest of the batch; `FlowRollout.cat` joins a micro-batch again.
    """

    restored: torch.Tensor  # (B,) bool: the rollout restored
    restored_latents: torch.Tensor  # (B, C, h, w) what the slot holds (zeros where not restored)
    degraded_latents: torch.Tensor  # (B, C, h, w) what conditioned the head
    x_t: torch.Tensor  # (B, K, C, h, w) the states at the K chosen denoising steps...
    x_next: torch.Tensor  # (B, K, C, h, w) ...and the states the SDE drew from them
    t: torch.Tensor  # (B, K) noise levels of x_t
    t_next: torch.Tensor  # (B, K) noise levels of x_next
    restored_embeds: torch.Tensor | None = None  # (B, N, D) the slot's tokens under readback=reencode
    old_log_probs: torch.Tensor | None = None  # (B, K) under the rollout's policy, when off-policy
    reference_means: torch.Tensor | None = None  # (B, K, C, h, w) the reference's step means, beta > 0

    def __len__(self) -> int:
        return self.restored.shape[0]

    def select(self, rows: slice | torch.Tensor) -> FlowRollout:
        return FlowRollout(**{f.name: _index(getattr(self, f.name), rows) for f in fields(self)})

    def rows(self) -> list[FlowRollout]:
        return [self.select(slice(i, i + 1)) for i in range(len(self))]

    @classmethod
    def cat(cls, rows: list[FlowRollout]) -> FlowRollout:
        return cls(**{f.name: _cat([getattr(r, f.name) for r in rows]) for f in fields(cls)})


def _index(value: torch.Tensor | None, rows) -> torch.Tensor | None:
    return None if value is None else value[rows]


def _cat(values: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if values[0] is None else torch.cat(values)


class _RolloutScorer:
    """The model as TRL's `_get_per_token_logps_and_entropies` calls it, with a rollout's slots.

    TRL slices a batch into chunks (multimodal tensors with it) and calls
    `model(**inputs, labels=labels, fused_lm_head=True)` per chunk, reading per-token log-probs.
    This puts the chunk's restored latents (or re-encoded tokens) into the slot, hides the degraded
    view where the rollout did and, with `flow`, re-runs the chosen denoising steps of the
    restoring rows in the same pass (`velocity()` joins them). TRL's slicing is reused, not copied.
    """

    def __init__(
        self,
        model,
        rollout: FlowRollout,
        keep: int,
        temperature: float,
        entropy: bool,
        drop_view: bool,
        flow: bool,
    ):
        self.model, self.rollout, self.keep, self.temperature = model, rollout, keep, temperature
        self.entropy, self.drop_view, self.flow = entropy, drop_view, flow
        self.offset, self.velocities = 0, []

    def __call__(self, input_ids, attention_mask, labels, fused_lm_head=True, **inputs):
        rows = slice(self.offset, self.offset + input_ids.shape[0])
        self.offset = rows.stop
        part, keep = self.rollout.select(rows), self.keep
        restoring = bool(part.restored.any())
        flow = {}
        # Sharded, every rank runs the head in every chunk if any restores (same_work.py).
        work = unified_core(self.model).same_work
        if self.flow and (restoring or (work is not None and work.active)):
            flow = {"flow_latents": part.x_t, "flow_timesteps": part.t, "flow_rows": part.restored}
        masks = {"attention_mask": attention_mask}
        if self.drop_view and restoring:
            unified = unified_core(self.model)
            hide_from = first_placeholder(input_ids, unified.token_ids.restored_pad)
            masks = unified.hidden_view_inputs(input_ids, attention_mask, hide_from)
        outputs = self.model(
            input_ids=input_ids,
            **masks,
            restored_latents=part.restored_latents,
            restored_embeds=part.restored_embeds,
            degraded_latents=part.degraded_latents,  # the head's condition (BAGEL: the prompt's VAE block)
            logits_to_keep=keep + 1,
            use_cache=False,
            clear_step=_logits_and_velocity,
            **flow,
            **inputs,
        )
        if self.flow:
            self.velocities.append(outputs["flow_velocity"] if flow else torch.zeros_like(part.x_t))
        logits = outputs["logits"][:, :-1]  # position j predicts token j + 1
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

    def velocity(self) -> torch.Tensor:
        """(B, K, C, h, w) the head's velocities at the chosen steps, for every row scored."""
        if self.offset != len(self.rollout):
            raise RuntimeError(f"scored {self.offset} of the rollout's {len(self.rollout)} rows")
        return torch.cat(self.velocities)


def _logits_and_velocity(model, forward, batch) -> dict:
    """The scoring pass's outputs as a plain dict, the form wrappers map over: DDP rebuilds a
    returned ModelOutput from its class's fields, which have no `flow_velocity`."""
    out = forward(**batch)
    return {"logits": out.logits, "flow_velocity": out.get("flow_velocity")}


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
        if args.beta != 0.0 and not isinstance(model, PreTrainedModel | PeftModel):
            raise ClearRLError(  # TRL rebuilds a full fine-tune's reference with transformers' Auto classes
                f"training.beta {args.beta} needs a reference model, which TRL builds only for a transformers "
                f"model or LoRA adapters, not {type(model).__name__}: train through model.lora, or set beta: 0"
            )
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
        check_grpo_attributes(self)
        unified = self._unified_model()
        readbacks = registry.spec_of(unified).training_readbacks
        if args.readback not in readbacks:
            raise ClearRLError(
                f"training.readback {args.readback!r} cannot be trained on {type(unified).__name__}: its "
                f"training pass replays {list(readbacks)}"
            )
        if unified.token_ids.answer_end not in self.eos_token_ids:
            self.eos_token_ids.append(unified.token_ids.answer_end)  # `</answer>` ends a completion too
        self._schedule = args.restoration_sampling.schedule(unified)
        self._draw = ("train", -1, 0)  # (mode, global step, n-th rollout at that step) of the last rollout
        self._flow_counter = 0  # restoring rollouts so far (flow_step_selection: round_robin)
        # The rollout being scored: set by `_rollout`, read by TRL's scoring passes, cleared when
        # `_generate_and_score_completions` returns (TRL gives those passes no way to carry it).
        self._scoring: FlowRollout | None = None
        self._restores_anywhere = True  # whether any rank's latest rollout restored
        turn_on_same_work(self)

    def _unified_model(self):
        return unified_core(self.model)

    # -- resuming ---------------------------------------------------------------------------------
    def _rollout_generators(self) -> tuple[torch.Generator, torch.Generator]:
        """(sampling + restoration noise on the device, chosen denoising steps on the CPU) of this rollout.

        Derived from (seed, mode, global step, n-th rollout at that step, rank), as SFT's draws
        are, rather than kept as running generators: a resumed run draws what the uninterrupted
        one did without saving any generator state, and each rollout is reproducible on its own.
        """
        mode = "train" if self.model.training else "eval"
        last_mode, last_step, n = self._draw
        step = self.state.global_step
        n = n + 1 if (last_mode, last_step) == (mode, step) else 0
        self._draw = (mode, step, n)
        parts = (self.args.seed, mode, step, n, self.accelerator.process_index)
        sampling = generator_for(self.accelerator.device, "rollout", *parts)
        return sampling, generator_for("cpu", "flow steps", *parts)

    def _save_rng_state(self, output_dir: str) -> None:
        """Trainer's random states, plus TRL's micro-step count and, between generations, its
        buffered generation batch (`steps_per_generation` x `num_iterations` micro-steps share one
        rollout), which the policy that made them cannot make again once it has moved."""
        super()._save_rng_state(output_dir)
        generate_every = self.args.steps_per_generation * self.num_iterations
        buffered = self._buffered_inputs if self._step % generate_every else None
        state = {"step": self._step, "buffered_inputs": buffered, "flow_counter": self._flow_counter}
        torch.save(state, Path(output_dir) / GENERATION_STATE.format(rank=self.args.process_index))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / GENERATION_STATE.format(rank=self.args.process_index)
        if not path.exists():
            generate_every = self.args.steps_per_generation * self.num_iterations
            if self.state.global_step * self.args.gradient_accumulation_steps % generate_every:
                logger.warning(
                    "%s has no %s: the rollouts buffered across this step are generated again, by the "
                    "current policy, so the run differs from an uninterrupted one",
                    checkpoint,
                    path.name,
                )
            return
        device = self.accelerator.device  # `cpu:0` in multi-process CPU runs, which torch.load refuses
        with torch.serialization.safe_globals([FlowRollout]):
            state = torch.load(
                path, map_location="cpu" if device.type == "cpu" else device, weights_only=True
            )
        self._step = state["step"]
        self._flow_counter = state.get("flow_counter", 0)
        if state["buffered_inputs"] is not None:
            self._buffered_inputs = state["buffered_inputs"]

    # -- 1. the rollout ---------------------------------------------------------------------------
    def _rollout(self, prompts: list, trainer) -> dict:
        """TRL's `rollout_func`: interleaved generation for a batch of (already repeated) prompts."""
        args = self.args
        sampling, step_chooser = self._rollout_generators()
        config = InterleavedGenerationConfig(
            max_new_tokens=args.max_completion_length,
            do_sample=True,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k or 0,
            restore=args.restore_policy,
            readback=args.readback,
            degraded_view=args.degraded_view,
            restoration=args.restoration_sampling,
        )
        with full_weights(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation
        ) as generator_model:
            answered = answer_batch(
                generator_model,
                self.processing_class,
                [prompt_image(p) for p in prompts],  # TRL put each row's `image` into its prompt
                prompts,
                config,
                generator=sampling,
                chat_template_kwargs=self.chat_template_kwargs,
            )
        out = answered.output
        self._scoring = self._flow_rollout(out, step_chooser)
        # Sharded: whether any rank restored decides the same-work rule for this batch's passes.
        self._restores_anywhere = restores_anywhere(self, bool(out.restored.any()))
        real, text, restored = out.completion_mask.bool(), out.text_mask, out.restored.tolist()
        return {
            "prompt_ids": [
                ids[m.bool()].tolist() for ids, m in zip(answered.prompt_ids, answered.prompt_mask)
            ],
            "completion_ids": [ids[m].tolist() for ids, m in zip(out.completion_ids, real)],
            "logprobs": [lp[m].tolist() for lp, m in zip(out.token_logprobs, real)],
            "env_mask": [t[m].int().tolist() for t, m in zip(text, real)],
            # Per-completion keyword arguments of the reward functions.
            "restored": restored,
            "restored_latents": [lat.cpu() if r else None for lat, r in zip(out.restored_latents, restored)],
        }

    def _flow_rollout(self, out: InterleavedOutput, step_chooser: torch.Generator) -> FlowRollout:
        """The batch's slots and K chosen denoising steps of each trajectory (random, per rollout)."""
        batch, steps = out.restored.shape[0], self.args.restoration_steps
        device = out.restored_latents.device
        degraded = out.degraded_latents
        if degraded is None:  # nobody restored: flow tensors exist (for TRL's batching) but are masked
            degraded = torch.zeros(batch, *self._unified_model().latent_shape, device=device)
        trajectory = out.trajectory
        if trajectory is None:
            trajectory = degraded.new_zeros(batch, steps + 1, *degraded.shape[1:])
        k = steps if self.args.flow_train_steps == -1 else self.args.flow_train_steps
        chosen, self._flow_counter = choose_flow_steps(
            out.restored, steps, k, self.args.flow_step_selection, step_chooser, self._flow_counter
        )
        chosen = chosen.to(device)
        schedule, rows = self._schedule.to(device), torch.arange(batch, device=device)[:, None]
        return FlowRollout(
            restored=out.restored,
            restored_latents=out.restored_latents,
            degraded_latents=degraded,
            x_t=trajectory[rows, chosen],
            x_next=trajectory[rows, chosen + 1],
            t=schedule[chosen],
            t_next=schedule[chosen + 1],
            restored_embeds=out.restored_embeds,
        )

    # -- 2. scoring passes ------------------------------------------------------------------------
    def _scorer(self, model, rollout: FlowRollout, keep: int, entropy: bool, flow: bool) -> _RolloutScorer:
        drop = self.args.degraded_view == "drop"
        return _RolloutScorer(model, rollout, keep, self.temperature, entropy, drop, flow)

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
        if not isinstance(model, _RolloutScorer):  # one of TRL's scoring passes of a fresh rollout
            rollout = self._scoring
            if rollout is None or len(rollout) != input_ids.shape[0]:
                raise RuntimeError(
                    "TRL scored completions outside a rollout of this trainer; this TRL version's call "
                    "order is not the one InterleavedGRPOTrainer supports"
                )
            model = self._scorer(model, rollout, logits_to_keep, compute_entropy, flow=False)
        # A processor's extra outputs (BAGEL's VAE view) reach here with TRL's; its scoring takes its own.
        kwargs = {k: v for k, v in kwargs.items() if k in MULTIMODAL_KEYS or k == "compute_aux_loss"}
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
        )

    # -- 3. rewards -------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards, after giving each restoring row its clean image's latent (`clean_latents`,
        None elsewhere: `latent_quality` compares restorations only)."""
        restoring = [
            i for i, row in enumerate(inputs) if row["restored"] and row.get("clean_image") is not None
        ]
        clean_latents: list[torch.Tensor | None] = [None] * len(inputs)
        if any_rank(self.accelerator, bool(restoring)):  # a sharded model gathers on every rank
            with (
                full_weights(
                    self.model_wrapped,
                    self.accelerator,
                    gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                ) as model,
                torch.no_grad(),
            ):
                if restoring:
                    pixels = vae_pixel_values(
                        [inputs[i]["clean_image"] for i in restoring], model.config.vae_image_size
                    )
                    encoded = model.encode_latents(pixels.to(self.accelerator.device)).float().cpu()
                    for i, latent in zip(restoring, encoded):
                        clean_latents[i] = latent
        for row, latent in zip(inputs, clean_latents):
            row["clean_latents"] = latent
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    # -- 4. flow scoring --------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._scoring = None
        try:
            output = super()._generate_and_score_completions(inputs)
            rollout = self._scoring
        finally:
            self._scoring = None
        if rollout is None or len(rollout) != output["completion_ids"].shape[0]:
            raise RuntimeError("TRL returned completions this trainer's rollout did not make")
        scored = self._restores_anywhere  # under sharding, ranks without restorations score too
        if scored:
            if "old_per_token_logps" in output:  # off-policy: the flow's ratio needs the rollout's policy
                velocity = self._score_flow_steps(self.model, rollout, output)
                rollout.old_log_probs = self._flow_step(rollout, velocity).log_prob.view(rollout.t.shape)
            if self.beta != 0.0:
                with self._reference_model() as reference:
                    velocity = self._score_flow_steps(reference, rollout, output)
                mean = self._flow_step(rollout, velocity).mean
                rollout.reference_means = mean.view(*rollout.t.shape, *mean.shape[1:])
        if not scored:  # nothing to score: the loss masks every step
            rollout.old_log_probs = torch.zeros_like(rollout.t) if "old_per_token_logps" in output else None
            rollout.reference_means = torch.zeros_like(rollout.x_t) if self.beta != 0.0 else None
        output["rollout"] = rollout.rows()  # TRL shuffles and slices lists with the batch
        mode = "train" if self.model.training else "eval"
        restore_rate = self.accelerator.gather(rollout.restored.float()).mean().item()
        self._metrics[mode]["restore_rate"].append(restore_rate)
        return output

    @torch.no_grad()
    def _score_flow_steps(self, model, rollout: FlowRollout, output) -> torch.Tensor:
        """`model`'s head velocities at the rollout's chosen steps: one no-grad pass over the batch."""
        scorer = self._scorer(model, rollout, keep=1, entropy=False, flow=True)
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            super()._get_per_token_logps_and_entropies(
                scorer,
                input_ids,
                attention_mask,
                1,
                batch_size=self.args.per_device_train_batch_size,
                **{key: output.get(key) for key in MULTIMODAL_KEYS},
            )
        return scorer.velocity()

    @contextlib.contextmanager
    def _reference_model(self):
        """The model TRL scores its reference with: `ref_model`, else the PEFT model with its
        adapters off (or its `ref` adapter), as in `GRPOTrainer._generate_and_score_completions`."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(self.model)
        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            yield self.model

    def _flow_step(self, rollout: FlowRollout, velocity: torch.Tensor):
        """Score the stored transitions x_t -> x_next under `velocity` (Flow-GRPO's SDE step)."""
        steps = rollout.x_t.shape[1]
        mean = self._unified_model().flow_source_mean(rollout.degraded_latents)
        return sde_step(
            rollout.x_t.flatten(0, 1),
            velocity.flatten(0, 1),
            rollout.t.flatten(),
            rollout.t_next.flatten(),
            self.args.restoration_noise_level,
            t_max=float(self._schedule[1]),
            next_sample=rollout.x_next.flatten(0, 1),
            source_mean=None if mean is None else mean.repeat_interleave(steps, dim=0),
            noise_schedule=self.args.restoration_noise_schedule,
        )

    # -- 5. the loss ------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        rollout = FlowRollout.cat(inputs["rollout"])
        scorer = self._scorer(model, rollout, inputs["completion_ids"].shape[1], entropy=True, flow=True)
        text_loss = super()._compute_loss(scorer, inputs)  # TRL's GRPO loss, scored by our forward
        flow_loss = self._flow_loss(rollout, scorer.velocity(), inputs["advantages"])
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

    def _flow_loss(
        self, rollout: FlowRollout, velocity: torch.Tensor, advantages: torch.Tensor
    ) -> torch.Tensor:
        """PPO-clipped Flow-GRPO loss over the chosen steps of restoring rollouts."""
        step = self._flow_step(rollout, velocity)
        shape = rollout.t.shape
        log_prob = step.log_prob.view(shape)
        old = rollout.old_log_probs
        old = log_prob.detach() if old is None else old  # on-policy: ratio exactly 1, as TRL does for text
        ratio = torch.exp(log_prob - old)
        advantages = advantages.view(-1, 1)
        clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
        per_step = -torch.min(ratio * advantages, clipped * advantages)
        mask = rollout.restored.bool()[:, None].expand(shape)
        kl = None
        if self.beta != 0.0:
            kl = step_mean_kl(step.mean, rollout.reference_means.flatten(0, 1), step.std).view(shape)
            per_step = per_step + self.beta * kl
        count = mask.sum().clamp(min=1)
        loss = torch.where(mask, per_step, 0.0).sum() / count
        self._log_flow_metrics(loss, count, mask, ratio, advantages, kl)
        normalizer = self.current_gradient_accumulation_steps if self.model.training else 1.0
        return loss / normalizer

    def _log_flow_metrics(self, loss, count, mask, ratio, advantages, kl) -> None:
        """The flow loss, clip fraction, mean ratio and KL over every process's restoring steps."""
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
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["flow/loss"].append((totals[0] / denominator).item())
        metrics["flow/clip_ratio"].append((totals[1] / denominator).item())
        metrics["flow/ratio_mean"].append((totals[2] / denominator).item() if totals[4] > 0 else 1.0)
        if kl is not None:
            metrics["flow/kl"].append((totals[3] / denominator).item())


def train(recipe: Recipe, callbacks=()) -> InterleavedGRPOTrainer:
    """Run stage 3 from a validated recipe (`callbacks`: extra TrainerCallbacks); returns the trainer."""
    from clear_rl.rewards import load_rewards
    from clear_rl.trainers.progress import attach_callbacks

    args: InterleavedGRPOConfig = recipe.training
    start_run(recipe)
    reward_funcs, weights = load_rewards(recipe.rewards)
    args.reward_weights = weights
    data = load_split(recipe.data.path, recipe.data.split, recipe.data.max_samples, required=GRPO_COLUMNS)
    seed_everything(args.seed)
    model, processor = build_model(recipe.model, adapter_base_dir=Path(args.output_dir) / "base", args=args)
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
    return trainer
