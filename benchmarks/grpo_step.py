"""Step time of `InterleavedGRPOTrainer` against plain `trl.GRPOTrainer`, and where a step's time goes.

1. Overhead: with restoration off (`restore_policy: never`) the interleaved trainer does what
   plain TRL does on the same VLM, plus its own rollout loop and latent bookkeeping. Both train
   the tiny model's VLM (`model.vlm`, a LlavaForConditionalGeneration) on the same prompts and
   images, with the same batch, G, completion length, temperature, rewards and trainable
   parameters (the LLM; the interleaved trainer's head and bridge get no gradient without
   restorations). Target: at most 1.15x plain TRL's step time.
2. Breakdown with a restoration in every rollout (`restore_policy: always`): timing wrappers
   around the trainer's own methods (no library code is edited).

Stop tokens are made unreachable in both trainers, so every completion has exactly
`max_completion_length` tokens and both do the same amount of work per step.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from benchmarks._common import PhaseTimer, suppress_tokens
from benchmarks.results import machine_line, update_section
from clear_rl.demo.shapes_vqa import generate_shapes_vqa
from clear_rl.eval.report import markdown_table
from clear_rl.models import build_tiny_model
from clear_rl.models.adapters import set_trainable_parts
from clear_rl.models.tokens import SYSTEM_PROMPT
from clear_rl.rewards import load_rewards
from clear_rl.rollout.interleaved import _Rollout
from clear_rl.trainers.grpo import InterleavedGRPOTrainer, to_grpo_dataset
from clear_rl.trainers.grpo_config import InterleavedGRPOConfig

WARMUP_STEPS = 1
MEASURED_STEPS = 8
TARGET_RATIO = 1.15
# The demo recipe's settings (recipes/demo/grpo.yaml), shared by both trainers.
SHARED = {
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 48,
    "temperature": 1.0,
    "learning_rate": 2e-5,
    "beta": 0.0,
    "loss_type": "grpo",
    "max_steps": WARMUP_STEPS + MEASURED_STEPS,
    "logging_steps": 1,
    "report_to": [],
    "use_cpu": True,
    "save_strategy": "no",
    "disable_tqdm": True,
    "seed": 0,
}
FLOW = {"restoration_steps": 8, "restoration_shift": 3.0, "flow_loss_weight": 0.3, "flow_train_steps": 1}
# TRL's GRPOConfig turns bf16 on by default, which on a CPU means bf16 autocast: slow matmuls on
# CPUs without native bf16, so the overhead comparison is run in float32 as well.
# Explicit both ways: TRL's GRPOConfig defaults to bf16, ours to bf16 only on a bf16 GPU.
PRECISIONS = {"bf16 autocast (TRL's default)": {"bf16": True}, "float32": {"bf16": False}}
TEXT_REWARDS = [{"name": "accuracy", "weight": 0.75}, {"name": "format", "weight": 0.10}]
ALL_REWARDS = [*TEXT_REWARDS, {"name": "decision", "weight": 0.15}, {"name": "latent_quality", "weight": 0.0}]


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (generation, rewards, forward, backward, optimizer)."""

    def __init__(self, phases: PhaseTimer):
        self.phases = phases
        self.steps: list[float] = []
        self.breakdowns: list[dict[str, float]] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.phases.take()  # drop anything timed between steps
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self._start)
        self.breakdowns.append({**self.phases.take(), "step": self.steps[-1]})

    def median_step(self) -> float:
        return statistics.median(self.steps[WARMUP_STEPS:])


def _dataset() -> Dataset:
    """ShapesVQA prompts with the CLEAR system prompt and a prepared set's columns, as stage 3 sees them."""
    records = generate_shapes_vqa(4 * (WARMUP_STEPS + MEASURED_STEPS), seed=0)
    prepared = [{**r, "clean_image": r["image"], "corruption": "none", "severity": "clean"} for r in records]
    return to_grpo_dataset(Dataset.from_list(prepared), SYSTEM_PROMPT)


def _unified_model():
    model, processor = build_tiny_model(seed=0)
    set_trainable_parts(model, ["llm", "head", "bridge"])  # what the demo recipe trains
    ids = model.token_ids
    stops = [model.config.get_text_config().eos_token_id, ids.answer_end, model.config.image_token_id]
    suppress_tokens(model.get_output_embeddings(), stops)
    return model, processor


def _run(trainer, phases: PhaseTimer, model=None) -> None:
    """Train with timing wrappers around the trainer's methods (and, given `model`, the model's)."""
    with phases:
        if trainer.rollout_func is not None:  # TRL holds the bound `_rollout` as rollout_func
            phases.wrap(trainer, "rollout_func", "generation")
        else:  # tokenizing is part of our rollout, so it counts for TRL's generation too
            phases.wrap(trainer, "_tokenize_prompts", "generation")
            phases.wrap(trainer, "_generate_single_turn", "generation")
        phases.wrap(trainer, "_calculate_rewards", "rewards")
        phases.wrap(trainer, "_compute_loss", "loss forward")
        phases.wrap(trainer.accelerator, "backward", "backward")
        if model is not None:
            phases.wrap(_Rollout, "restore", "restoration")  # the degraded images' VAE encode included
            phases.wrap(GRPOTrainer, "_calculate_rewards", "reward functions")  # without the clean encode
            phases.wrap(model, "_flow_velocity", "flow head forward")
            phases.wrap(trainer, "_score_flow_steps", "flow scoring passes")
            phases.wrap(trainer, "_flow_loss", "flow loss")
        trainer.train()


def _plain_trl(dataset, output_dir: str, precision: dict) -> StepTimer:
    unified, processor = _unified_model()
    vlm = unified.vlm  # a LlavaForConditionalGeneration, trainable exactly where the unified model is
    rewards, weights = load_rewards(TEXT_REWARDS)
    args = GRPOConfig(output_dir=output_dir, reward_weights=weights, **SHARED, **precision)
    phases = PhaseTimer()
    timer = StepTimer(phases)
    trainer = GRPOTrainer(
        vlm, rewards, args=args, train_dataset=dataset, processing_class=processor, callbacks=[timer]
    )
    _run(trainer, phases)
    return timer


def _interleaved(
    dataset, output_dir: str, restore_policy: str, reward_entries, precision: dict
) -> tuple[StepTimer, float]:
    model, processor = _unified_model()
    rewards, weights = load_rewards(reward_entries)
    args = InterleavedGRPOConfig(
        output_dir=output_dir,
        reward_weights=weights,
        restore_policy=restore_policy,
        **FLOW,
        **SHARED,
        **precision,
    )
    phases = PhaseTimer()
    timer = StepTimer(phases)
    trainer = InterleavedGRPOTrainer(
        model, rewards, args, dataset, processing_class=processor, callbacks=[timer]
    )
    _run(trainer, phases, model)
    history = trainer.state.log_history
    return timer, statistics.mean(h["restore_rate"] for h in history if "restore_rate" in h)


def _coarse_parts(phase: dict[str, float]) -> dict[str, float]:
    """One step's generation, rewards, loss forward, backward and the rest."""
    parts = {label: phase.get(label, 0.0) for label in ("generation", "rewards", "loss forward", "backward")}
    return {**parts, "other": phase["step"] - sum(parts.values())}


def _fine_parts(phase: dict[str, float]) -> dict[str, float]:
    """One step's timed phases -> disjoint parts (nested wrappers subtracted from their callers)."""
    coarse = _coarse_parts(phase)
    # Off-policy or beta > 0 only: none in this config, so the head's time is the loss pass's.
    scoring = phase.get("flow scoring passes", 0.0)
    return {
        "rollout: text generation": phase["generation"] - phase["restoration"],
        "rollout: restorations (VAE encode + SDE denoising)": phase["restoration"],
        "rewards: VAE encode of the clean images (restoring rows)": phase["rewards"]
        - phase["reward functions"],
        "rewards: the reward functions": phase["reward functions"],
        "flow: old-policy / reference scoring passes": scoring,
        "text loss forward (policy log-probs + TRL loss)": phase["loss forward"]
        - phase["flow head forward"]
        - phase["flow loss"],
        "flow: head forward on the chosen steps (same pass)": phase["flow head forward"],
        "flow: Flow-GRPO loss": phase["flow loss"],
        "backward (text + flow, one graph; recomputes the forward)": phase["backward"],
        "other (optimizer step, batching, TRL bookkeeping)": coarse["other"],
    }


def _medians(timer: StepTimer, parts) -> dict[str, float]:
    measured = [parts(b) for b in timer.breakdowns[WARMUP_STEPS:]]
    return {label: statistics.median(m[label] for m in measured) for label in measured[0]}


def main() -> None:
    dataset = _dataset()
    overhead_rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision, overrides in PRECISIONS.items():
            plain = _plain_trl(dataset, f"{tmp}/plain", overrides)
            never, _ = _interleaved(dataset, f"{tmp}/never", "never", TEXT_REWARDS, overrides)
            ratios[precision] = never.median_step() / plain.median_step()
            for label, timer in (
                ("`trl.GRPOTrainer` on `model.vlm`", plain),
                ("`InterleavedGRPOTrainer`", never),
            ):
                parts = _medians(timer, _coarse_parts)
                overhead_rows.append(
                    [
                        label,
                        precision,
                        f"**{timer.median_step():.2f}**",
                        *(f"{v:.2f}" for v in parts.values()),
                    ]
                )
                print(f"{label}, {precision}: {timer.median_step():.2f} s/step", parts, flush=True)
            print(f"ratio ({precision}): {ratios[precision]:.2f}x (target <= {TARGET_RATIO}x)", flush=True)
        # float32: CPU bf16 autocast would inflate every matmul and hide the structure of a step.
        always, restore_rate = _interleaved(dataset, f"{tmp}/always", "always", ALL_REWARDS, {"bf16": False})
    step = always.median_step()
    fine = _medians(always, _fine_parts)
    for label, seconds in fine.items():
        print(f"  {label}: {seconds:.3f}s ({seconds / step:.0%})")
    ratio_text = ", ".join(f"{ratio:.2f}x in {precision}" for precision, ratio in ratios.items())
    settings = (
        f"batch {SHARED['per_device_train_batch_size']}, G = {SHARED['num_generations']}, "
        f"max_completion_length {SHARED['max_completion_length']}, temperature {SHARED['temperature']}"
    )
    markdown = "\n\n".join(
        [
            "## GRPO step time (`grpo_step`)",
            f"Tiny model, CPU, {settings}; stop tokens unreachable, so every completion is "
            f"{SHARED['max_completion_length']} tokens. Median over {MEASURED_STEPS} optimizer steps "
            f"after {WARMUP_STEPS} warm-up step; a step includes generation, rewards, loss, backward "
            "and the optimizer. TRL's GRPO default `gradient_checkpointing: true` holds in every run, "
            "so the backward pass recomputes the forward; TRL's default `bf16: true` means CPU bf16 "
            "autocast, which is slow on CPUs without native bf16 matmuls, so the overhead is measured "
            "in float32 (`bf16: false`) too.",
            "### Overhead over plain TRL (restoration off)",
            markdown_table(
                [
                    "trainer",
                    "precision",
                    "s/step",
                    "generation",
                    "rewards",
                    "loss forward",
                    "backward",
                    "other",
                ],
                overhead_rows,
            ),
            f"**Interleaved / plain: {ratio_text}** (target at most {TARGET_RATIO}x). Rewards: accuracy 0.75 + format "
            "0.10 in both; trainable: the LLM (plus, unused without restorations, the head and bridge). "
            "Generation: TRL's `_tokenize_prompts` + `_generate_single_turn` (transformers' `generate`) "
            "for plain TRL; `rollout_func` (chat template, processor, VAE encodes, `generate_interleaved`) "
            "for ours. With restoration off ours runs no VAE encode (the rewards' `clean_latents` are "
            "encoded for restoring rollouts only); the text generation loops themselves "
            "(`generate_interleaved` and transformers' `generate`) cost about the same.",
            f"### Where a step goes with a restoration in every rollout (`restore_policy: always`, "
            f"{FLOW['restoration_steps']} SDE steps, restore rate {restore_rate:.0%}, float32)",
            markdown_table(
                ["part", "s/step", "share"],
                [[label, f"{seconds:.3f}", f"{seconds / step:.0%}"] for label, seconds in fine.items()]
                + [["**step**", f"**{step:.2f}**", "100%"]],
            ),
            "Median of each part over the measured steps (the parts' medians need not add up to "
            "the step's). Measured by timing wrappers around `rollout_func` (`_rollout`), the "
            "rollout's `restore`, `_calculate_rewards` (ours, and TRL's inside it), `_compute_loss`, "
            "the model's `_flow_velocity`, `_score_flow_steps`, `_flow_loss` and "
            "`accelerator.backward`. Rewards: accuracy, format, decision, latent_quality (the demo "
            "recipe's).",
            machine_line(),
        ]
    )
    update_section("grpo_step", markdown)


if __name__ == "__main__":
    main()
