"""Stage 3: InterleavedGRPOTrainer (TRL subclass) with Flow-GRPO on the restoration head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset

from clear_rl.demo.shapes_vqa import generate_shapes_vqa
from clear_rl.models import build_tiny_model
from clear_rl.models.io import load_unified, save_unified
from clear_rl.models.processing import vae_pixel_values
from clear_rl.recipe import load_recipe
from clear_rl.trainers import grpo
from clear_rl.trainers.grpo import FlowRollout, InterleavedGRPOTrainer, to_grpo_dataset
from clear_rl.trainers.grpo_config import InterleavedGRPOConfig

SMALL = {
    "per_device_train_batch_size": 4,
    "num_generations": 4,
    "max_completion_length": 6,
    "restoration_steps": 2,
    "max_steps": 1,
    "logging_steps": 1,
    "report_to": [],
    "use_cpu": True,
    "save_strategy": "no",
    "disable_tqdm": True,
    "seed": 0,
}


def _rows(n: int = 8) -> list[dict]:
    rows = []
    for record in generate_shapes_vqa(n, seed=0):
        rows.append(
            {
                "image": record["image"],
                "clean_image": record["image"],
                "question": record["question"],
                "answer": record["answer"],
                **{letter: record[letter] for letter in "ABCD"},
                "corruption": "gaussian_noise",
                "severity": "high",
            }
        )
    return rows


def constant_by_position(completions, **kwargs):
    """0, 1, 2, 3 within each group of four completions."""
    return [float(i % 4) for i in range(len(completions))]


def only_restoring_is_right(completions, restored, **kwargs):
    """The toy task: the answer is legible only in the restored image, so only restorers are right."""
    return [1.0 if r else 0.0 for r in restored]


class Recording(InterleavedGRPOTrainer):
    """Keeps what the first loss computation saw."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.scored, self.scored_rollout = output, FlowRollout.cat(output["rollout"])
        return output

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        self.last_logps = result[0].detach()
        return result

    def _compute_loss(self, model, inputs):
        if not hasattr(self, "first_inputs"):
            self.first_inputs = inputs
        return super()._compute_loss(model, inputs)

    def _flow_loss(self, rollout, velocity, advantages):
        if not hasattr(self, "flow_new"):
            self.first_rollout = rollout
            self.flow_new = self._flow_step(rollout, velocity).log_prob.view(rollout.t.shape).detach()
            self.text_new = self.last_logps
        return super()._flow_loss(rollout, velocity, advantages)


def _trainer(tmp_path, rewards, cls=InterleavedGRPOTrainer, model=None, **config):
    model, processor = model or build_tiny_model(seed=0)
    args = InterleavedGRPOConfig(output_dir=str(tmp_path), **{**SMALL, **config})
    dataset = to_grpo_dataset(Dataset.from_list(_rows()), system_prompt=None)
    return cls(model, rewards, args, dataset, processing_class=processor)


def test_first_inner_step_ratios_are_exactly_one(tmp_path):
    # Two iterations per generation: TRL recomputes the old policy's log-probs, and so do we for
    # the flow steps; at the first inner step the policy has not moved, so both ratios are 1.
    trainer = _trainer(
        tmp_path, [constant_by_position], cls=Recording, restore_policy="always", num_iterations=2
    )
    trainer.train()
    inputs, rollout = trainer.first_inputs, trainer.first_rollout
    assert "old_per_token_logps" in inputs and rollout.old_log_probs is not None
    mask = (inputs["completion_mask"] * inputs["tool_mask"]).bool()
    text_ratio = torch.exp(trainer.text_new - inputs["old_per_token_logps"])[mask]
    flow_ratio = torch.exp(trainer.flow_new - rollout.old_log_probs)[rollout.restored.bool()]
    assert text_ratio.numel() > 0 and flow_ratio.numel() > 0
    assert torch.equal(text_ratio, torch.ones_like(text_ratio))
    assert torch.equal(flow_ratio, torch.ones_like(flow_ratio))


def test_advantages_match_a_hand_computation_and_placeholders_are_masked(tmp_path):
    trainer = _trainer(tmp_path, [constant_by_position], cls=Recording, restore_policy="always")
    trainer.train()
    scored = trainer.scored
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0])
    expected = (rewards - rewards.mean()) / (rewards.std() + 1e-4)  # TRL: group mean and (unbiased) std
    torch.testing.assert_close(scored["advantages"], expected.repeat(len(scored["advantages"]) // 4))
    # Placeholders are in the completion but out of the text loss (TRL's tool mask), and only there.
    model = trainer._unified_model()
    placeholders = scored["completion_ids"] == model.token_ids.restored_pad
    assert bool(trainer.scored_rollout.restored.all())
    assert int(placeholders.sum(1).min()) == model.num_restored_tokens
    assert torch.equal(
        scored["tool_mask"].bool()[scored["completion_mask"].bool()],
        ~placeholders[scored["completion_mask"].bool()],
    )


@pytest.mark.parametrize("flow_turn", [False, True])
def test_alternation_gives_text_and_flow_their_own_steps(tmp_path, flow_turn):
    trainer = _trainer(tmp_path, [constant_by_position], restore_policy="always", alternation="alternate")
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    inputs = trainer._prepare_inputs(batch)
    trainer.state.global_step = 1 if flow_turn else 0
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test skips
    trainer._compute_loss(trainer.model, inputs).backward()
    model = trainer._unified_model()
    lm_head_grad = model.vlm.lm_head.weight.grad
    head_grad = model.restoration_head.proj_out.weight.grad
    text_moves = lm_head_grad is not None and float(lm_head_grad.abs().sum()) > 0
    flow_moves = head_grad is not None and float(head_grad.abs().sum()) > 0
    assert (text_moves, flow_moves) == ((False, True) if flow_turn else (True, False))


@pytest.mark.slow
def test_toy_task_restore_rate_and_reward_rise(tmp_path):
    # Only restoring answers right. Start from a policy that restores about one time in five;
    # within a few dozen CPU steps GRPO must make restoring the habit (measured, not assumed).
    model, processor = build_tiny_model(seed=0)
    boost = torch.zeros(model.vlm.lm_head.out_features)
    boost[model.token_ids.image_restore] = 3.0
    model.vlm.lm_head.register_forward_hook(lambda module, args, out: out + boost)
    trainer = _trainer(
        tmp_path,
        [only_restoring_is_right],
        model=(model, processor),
        per_device_train_batch_size=8,
        max_completion_length=4,
        max_steps=16,
        learning_rate=1e-3,
    )
    trainer.train()
    history = [h for h in trainer.state.log_history if "restore_rate" in h]
    rates = [h["restore_rate"] for h in history]
    rewards = [h["reward"] for h in history]
    first, last = sum(rates[:4]) / 4, sum(rates[-4:]) / 4
    assert first < 0.5 and last > first + 0.3, rates
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.3, rewards


def _prepared_folder(path: Path) -> Path:
    Dataset.from_list(_rows()).save_to_disk(str(path))
    return path


def test_recipe_with_a_custom_reward_file_runs_end_to_end(tmp_path):
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(completions, **kwargs):\n    return [1.0 / (1 + len(str(c))) for c in completions]\n"
    )
    (tmp_path / "grpo.yaml").write_text(
        f"""
stage: grpo
model: {{tiny: {{}}}}
data: {{path: {_prepared_folder(tmp_path / "data")}}}
training:
  output_dir: {tmp_path / "out"}
  per_device_train_batch_size: 4
  num_generations: 4
  max_completion_length: 6
  restoration_steps: 2
  max_steps: 2
  logging_steps: 1
  report_to: none
  use_cpu: true
  save_strategy: "no"
rewards:
  - {{name: format, weight: 0.5}}
  - {{path: my_rewards.py:brevity, weight: 0.5}}
"""
    )
    recipe = load_recipe(tmp_path / "grpo.yaml")
    grpo.train(recipe)
    out = tmp_path / "out"
    assert (out / "clear_rl_recipe.yaml").exists()
    model, processor = load_unified(out)
    assert model.num_restored_tokens > 0 and len(processor.tokenizer) > 0


def _scored_first_batch(trainer):
    """Run TRL's rollout-and-score on the first training batch; returns (rows, scored output)."""
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    scored = trainer._generate_and_score_completions(batch)
    return batch, FlowRollout.cat(scored["rollout"])


def test_restoring_rollouts_condition_on_the_degraded_images_latents(tmp_path):
    trainer = _trainer(tmp_path, [constant_by_position], restore_policy="always")
    rows, rollout = _scored_first_batch(trainer)
    model = trainer._unified_model()
    with torch.no_grad():
        expected = model.encode_latents(
            vae_pixel_values([row["image"] for row in rows], model.config.vae_image_size)
        ).float()
    assert bool(rollout.restored.all())
    torch.testing.assert_close(rollout.degraded_latents, expected)


def test_rollouts_without_restoration_encode_nothing(tmp_path):
    trainer = _trainer(tmp_path, [constant_by_position], restore_policy="never")
    model = trainer._unified_model()
    encoded_batches = []
    original = model.encode_latents
    model.encode_latents = lambda images: encoded_batches.append(len(images)) or original(images)
    rows, rollout = _scored_first_batch(trainer)
    assert not bool(rollout.restored.any())
    # Neither the degraded images (no restoration to condition) nor the clean ones (latent_quality
    # compares restorations only) are encoded; rewards get clean_latents None for every row.
    assert encoded_batches == []
    assert not bool(rollout.degraded_latents.any())  # all-masked flow tensors keep their shape
    assert rollout.degraded_latents.shape == (len(rows), *model.latent_shape)


def test_reencode_and_drop_reach_rollouts_and_scoring_passes(tmp_path):
    # readback=reencode: rollouts' slots hold the vision path's tokens of the decoded restorations,
    # and the scoring passes (the loss's log-probs) re-insert exactly those; degraded_view=drop:
    # scoring hides the image tokens from the slot on, as the rollout did.
    from tests.test_readback import _expected_vision_tokens

    trainer = _trainer(
        tmp_path,
        [constant_by_position],
        cls=Recording,
        restore_policy="always",
        readback="reencode",
        degraded_view="drop",
    )
    model = trainer._unified_model()
    ids_seen, scored_calls = [], []
    pad, image = model.token_ids.restored_pad, model.config.image_token_id

    def record_ids(module, args, kwargs):
        ids_seen.append((kwargs["input_ids"], kwargs["attention_mask"]))

    def record_embeds(module, args, kwargs):
        ids, mask = ids_seen[-1]
        if bool((ids == pad).any()) and bool((ids == image).any()):  # a teacher-forced scoring pass
            scored_calls.append((ids, mask, kwargs["inputs_embeds"].detach()))

    hooks = [
        model.vlm.register_forward_pre_hook(record_ids, with_kwargs=True),
        model.vlm.model.language_model.register_forward_pre_hook(record_embeds, with_kwargs=True),
    ]
    trainer.train()
    for hook in hooks:
        hook.remove()
    scored, rollout = trainer.scored, trainer.scored_rollout
    embeds = rollout.restored_embeds
    assert embeds.shape == (
        4,
        model.config.vlm_config.image_seq_length,
        model.config.get_text_config().hidden_size,
    )
    expected = _expected_vision_tokens(model, trainer.processing_class, rollout.restored_latents)
    # Rows restored at different steps were decoded in different batches, which may flip a pixel's
    # 8-bit rounding: close to the vision tokens, far from the bridge's embeddings.
    torch.testing.assert_close(embeds, expected, atol=1e-3, rtol=0)
    assert not torch.allclose(model.bridge(rollout.restored_latents), embeds, atol=1e-2)
    assert int((scored["completion_ids"] == pad).sum(1).min()) == embeds.shape[1]
    assert scored_calls, "no scoring pass saw the restored slot"
    for ids, mask, inputs_embeds in scored_calls:
        assert mask.dim() == 4  # per-query: the degraded view is hidden after the slot only
        for row in range(ids.shape[0]):
            slot = inputs_embeds[row, ids[row] == pad]
            distance = (slot[None] - embeds.to(slot)).abs().flatten(1).amax(1)
            assert float(distance.min()) < 1e-5  # one of the rollout's re-encoded slots, exactly
            first = int((ids[row] == pad).float().argmax())
            image_keys = ids[row] == image
            assert not bool(mask[row, 0, first:, image_keys].any())
            assert bool(mask[row, 0, first - 1, image_keys].all())


def test_kl_to_the_reference_scores_the_flow_steps_against_the_reference_model(tmp_path):
    # beta > 0: the flow's reference step means come from the reference model, in their own pass.
    # Before the first update the policy is the reference, so the flow KL is zero; then it moves.
    model, processor = build_tiny_model(seed=0)
    save_unified(model, processor, tmp_path / "model")
    model, processor = load_unified(tmp_path / "model")
    trainer = _trainer(
        tmp_path / "out",
        [constant_by_position],
        cls=Recording,
        model=(model, processor),
        restore_policy="always",
        beta=0.5,
        max_steps=2,
        learning_rate=1e-2,
    )
    assert trainer.ref_model is not None
    trainer.train()
    rollout = trainer.first_rollout
    assert rollout.reference_means is not None and rollout.reference_means.shape == rollout.x_t.shape
    kls = [h["flow/kl"] for h in trainer.state.log_history if "flow/kl" in h]
    assert len(kls) == 2 and abs(kls[0]) < 1e-6 and kls[1] > 1e-6, kls


def test_prompts_are_built_without_writing_into_the_prepared_folder(tmp_path):
    from datasets import load_from_disk

    folder = _prepared_folder(tmp_path / "data")
    before = sorted(p.name for p in folder.iterdir())
    dataset = to_grpo_dataset(load_from_disk(str(folder)), system_prompt="Be brief.")
    assert sorted(p.name for p in folder.iterdir()) == before  # no cache-*.arrow beside the data
    prompt = dataset[0]["prompt"]
    assert prompt[0] == {"role": "system", "content": "Be brief."}
    assert "A. " in prompt[1]["content"] and prompt[1]["content"].startswith(_rows(1)[0]["question"])


def test_scoring_outside_a_rollout_is_refused_with_a_clear_error(tmp_path):
    # TRL's scoring passes must score the rows this trainer's rollout just made; a TRL that calls
    # them in another order gets an error, not log-probs of contexts without their restorations.
    trainer = _trainer(tmp_path, [constant_by_position], restore_policy="always")
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(RuntimeError, match="outside a rollout of this trainer"):
        trainer._get_per_token_logps_and_entropies(trainer.model, ids, torch.ones_like(ids), 2)
