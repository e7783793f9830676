"""Stages 1 and 2 end to end on a small tiny model: learning, accumulation, resume, recipes, LoRA."""

import datasets
import pytest
import torch
import yaml

from clear_rl.data.collate import ClearCollator
from clear_rl.models import build_tiny_model
from clear_rl.models.adapters import set_trainable_parts
from clear_rl.models.io import load_unified
from clear_rl.recipe import RESOLVED_RECIPE_NAME, load_recipe, stage_module
from clear_rl.trainers.sft import ClearSFTConfig, ClearSFTTrainer
from tests.prepared import SMALL, prepared_dataset

QUIET = {"report_to": "none", "disable_tqdm": True, "activation_checkpointing": False, "use_cpu": True}


def make_trainer(tmp_path, dataset, **overrides) -> ClearSFTTrainer:
    model, processor = build_tiny_model(SMALL, seed=0)
    set_trainable_parts(model, ["llm", "projector", "head", "bridge"])
    settings = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "learning_rate": 3e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        **QUIET,
        **overrides,
    }
    return ClearSFTTrainer(
        model=model,
        args=ClearSFTConfig(**settings),
        train_dataset=dataset,
        data_collator=ClearCollator.for_model(model, processor),
        processing_class=processor,
    )


def test_sft_overfits_a_tiny_set_and_logs_each_term(tmp_path):
    trainer = make_trainer(tmp_path, prepared_dataset(4), max_steps=50)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    first, last = logs[0], logs[-5:]
    assert min(h["loss"] for h in last) < 0.5 * first["loss"]
    for key in ("ce_loss", "mse_loss", "distill_loss", "mean_token_accuracy", "restore_fraction"):
        assert key in first
    # The logged total is the weighted sum of the logged terms (lambda_mse 0.5, lambda_distill 0.1).
    expected = first["ce_loss"] + 0.5 * first["mse_loss"] + 0.1 * first["distill_loss"]
    assert first["loss"] == pytest.approx(expected, rel=1e-3)
    assert last[-1]["mean_token_accuracy"] > 0.9


def _one_step_parameters(tmp_path, batch_size, accumulation):
    trainer = make_trainer(
        tmp_path,
        prepared_dataset(4),
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=0.5,
        lambda_mse=0.0,  # the flow loss draws noise per micro-batch: compare the deterministic terms
    )
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    whole = _one_step_parameters(tmp_path / "a", 4, 1)
    accumulated = _one_step_parameters(tmp_path / "b", 2, 2)
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-5, msg=name)


class _StopAt(__import__("transformers").TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resume_from_checkpoint_reaches_the_uninterrupted_parameters(tmp_path):
    dataset = prepared_dataset(8)
    common = {"max_steps": 4, "per_device_train_batch_size": 2, "save_strategy": "steps", "save_steps": 2}
    straight = make_trainer(tmp_path / "straight", dataset, **common)
    straight.train()
    interrupted = make_trainer(tmp_path / "resumed", dataset, **common)
    interrupted.add_callback(_StopAt(2))
    interrupted.train()
    assert interrupted.state.global_step == 2
    resumed = make_trainer(tmp_path / "resumed", dataset, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    expected = dict(straight.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def _recipe(tmp_path, stage: str, model: dict, training: dict) -> str:
    data = tmp_path / "prepared"
    if not data.exists():
        datasets.DatasetDict({"train": prepared_dataset(6)}).save_to_disk(str(data))
    recipe = {
        "stage": stage,
        "model": model,
        "data": {"path": str(data)},
        "training": {
            "max_steps": 3,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            **QUIET,
            **training,
        },
    }
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_recipes_chain_sft_then_bridge_and_stage_two_trains_only_the_bridge(tmp_path):
    tiny = {field: getattr(SMALL, field) for field in ("image_size", "vit_patch_size", "llm_layers")}
    tiny.update(
        llm_hidden_size=64, llm_heads=2, llm_kv_heads=1, vae_channels=[16, 16, 16], num_inference_steps=2
    )
    sft_out = tmp_path / "sft"
    recipe = load_recipe(_recipe(tmp_path, "sft", {"tiny": tiny}, {"output_dir": str(sft_out)}))
    stage_module("sft").train(recipe)
    assert (sft_out / RESOLVED_RECIPE_NAME).exists()
    before, _ = load_unified(sft_out)
    bridge_out = tmp_path / "bridge"
    recipe = load_recipe(_recipe(tmp_path, "bridge", {"path": str(sft_out)}, {"output_dir": str(bridge_out)}))
    trainer = stage_module("bridge").train(recipe)
    assert len(trainer.train_dataset) == 3  # restore rows only
    after, _ = load_unified(bridge_out)
    reference = dict(before.named_parameters())
    changed = {n.split(".")[0] for n, p in after.named_parameters() if not torch.equal(p, reference[n])}
    assert changed == {"latent_bridge"}


def test_lora_recipe_saves_adapters_that_load_onto_a_saved_base(tmp_path):
    out = tmp_path / "lora"
    lora = {
        "r": 4,
        "alpha": 8,
        "head_target_modules": [],
        "modules_to_save": ["restoration_head", "latent_bridge"],
    }
    recipe = load_recipe(
        _recipe(tmp_path, "sft", {"tiny": {"llm_layers": 2}, "lora": lora}, {"output_dir": str(out)})
    )
    stage_module("sft").train(recipe)
    assert (out / "adapter_config.json").exists() and (out / "base" / "config.json").exists()
    model, _ = load_unified(out)
    base, _ = load_unified(out / "base")
    restore_id = base.token_ids.image_restore
    merged_rows = model.get_input_embeddings()(torch.tensor([restore_id]))
    assert not torch.equal(merged_rows, base.get_input_embeddings()(torch.tensor([restore_id])))


def test_evaluation_reports_the_loss_and_its_terms(tmp_path):
    trainer = make_trainer(tmp_path, prepared_dataset(4), max_steps=1)
    metrics = trainer.evaluate(prepared_dataset(4, seed=1))
    for key in ("eval_loss", "eval_ce_loss", "eval_mse_loss", "eval_distill_loss"):
        assert key in metrics and metrics[key] > 0


def test_the_merged_recipe_is_saved_when_the_run_starts(tmp_path, monkeypatch):
    from clear_rl.trainers import common

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # the run is stopped while the model loads

    monkeypatch.setattr(common, "load_model", stopped)
    out = tmp_path / "out"
    recipe = load_recipe(
        _recipe(tmp_path, "sft", {"tiny": {}}, {"output_dir": str(out)}), ["training.max_steps=7"]
    )
    with pytest.raises(KeyboardInterrupt):
        stage_module("sft").train(recipe)
    saved = load_recipe(out / RESOLVED_RECIPE_NAME)
    assert saved.training.max_steps == 7 and saved.raw == recipe.raw
