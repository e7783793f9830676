"""Training on the BAGEL backbone: SFT, the bridge stage and Interleaved GRPO on a tiny random BAGEL
saved in the official layout, through the same trainers and recipes as the composed model.

The training pass is checked against generation (it must see what a rollout saw), the noised latent
block against the cached `velocity` of sampling, each loss term against the parts it may reach, and
every stage end to end through `clear-rl train`, its saved folder through `load_unified` and
`clear-rl eval`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from safetensors import safe_open

from clear_rl.cli import main
from clear_rl.data.collate import ClearCollator
from clear_rl.errors import ClearRLError
from clear_rl.models.adapters import apply_lora, set_trainable_parts
from clear_rl.models.backbone import TrainableBackbone
from clear_rl.models.bagel import build_tiny_bagel, load_bagel_unified
from clear_rl.models.bagel.modeling import LatentSegment, TextSegment
from clear_rl.models.io import load_unified
from clear_rl.models.processing import encode_prompts
from clear_rl.models.readback import first_placeholder
from clear_rl.models.settings import LoraSettings
from clear_rl.recipe import load_recipe, stage_module
from clear_rl.rollout.answering import answer_batch
from clear_rl.rollout.interleaved import InterleavedGenerationConfig
from clear_rl.rollout.restoration import RestorationSampling
from clear_rl.trainers.common import unified_core
from clear_rl.trainers.losses import loss_terms
from tests.conftest import make_images
from tests.prepared import prepared_dataset, prepared_rows

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "bagel_7b_mot"
QUIET = {"report_to": "none", "save_strategy": "no", "logging_steps": 1, "use_cpu": True}
# LoRA on both experts' attention: the understanding weights and their generation twins.
BOTH_EXPERTS = ["q_proj", "v_proj", "q_proj_moe_gen", "v_proj_moe_gen"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bagel") / "tiny-bagel"
    build_tiny_bagel(path, seed=0)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prepared"
    datasets.DatasetDict({"train": prepared_dataset(4)}).save_to_disk(str(path))
    return path


@pytest.fixture
def bagel(folder):
    return load_bagel_unified(folder, device="cpu", tags="tokens")  # clear-rl trains its single tokens


def _batch(model, processor, n: int = 2):
    return ClearCollator.for_model(model, processor, system_prompt=None)(prepared_rows(n))


def _train(recipe: Path | str, *overrides: str) -> int:
    return main(["train", str(recipe), *overrides])


def _recipe(tmp_path, stage: str, model: dict, training: dict, data: Path, rewards=None) -> Path:
    """A recipe training the tiny folder (a BAGEL-7B-MoT stand-in) with clear-rl's single-token tags."""
    recipe = {
        "stage": stage,
        "model": {"tags": "tokens", **model},
        "data": {"path": str(data)},
        "training": {**QUIET, **training},
    }
    if rewards:
        recipe["rewards"] = rewards
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


# -- the training pass ------------------------------------------------------------------------------
def test_bagel_is_a_trainable_backbone(bagel):
    assert isinstance(bagel[0], TrainableBackbone)


@pytest.mark.parametrize("view", ["keep", "drop"])
def test_the_training_pass_scores_a_rollout_as_generation_did(bagel, view):
    """Prompt + completion (tag, slot, text after it) in one packed pass: each written token's
    log-prob equals the rollout's, so the bridge block and the implied turn markers line up (and,
    under `degraded_view: drop`, the degraded view is hidden from the same tokens)."""
    model, processor = bagel
    boost = torch.zeros(model.bagel.language_model.lm_head.out_features)
    boost[model.token_ids.image_restore] = 50.0  # the model writes the tag first
    model.bagel.language_model.lm_head.register_forward_hook(lambda module, args, out: out + boost)
    images, questions = make_images(2, 40, seed=1), ["What is shown?", "Describe the image."]
    config = InterleavedGenerationConfig(
        max_new_tokens=5,
        do_sample=False,
        degraded_view=view,
        restoration=RestorationSampling(steps=2, sampler="sde"),
    )
    answered = answer_batch(
        model, processor, images, questions, config, generator=torch.Generator().manual_seed(0)
    )
    out = answered.output
    assert out.restored.all() and out.restored_mask.any()
    prompt = encode_prompts(processor, images, questions)
    ids = torch.cat([answered.prompt_ids, out.completion_ids], 1)
    mask = torch.cat([answered.prompt_mask, out.completion_mask.long()], 1)
    keep = out.completion_ids.shape[1]
    masks = {"attention_mask": mask}
    if view == "drop":
        masks = model.hidden_view_inputs(ids, mask, first_placeholder(ids, model.token_ids.restored_pad))
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            **masks,
            pixel_values=prompt["pixel_values"],
            image_sizes=prompt["image_sizes"],
            restored_latents=out.restored_latents,
            degraded_latents=out.degraded_latents,
            logits_to_keep=keep + 1,
        ).logits[:, :-1]
    # the decoder's bans: placeholders, markers, unused rows (and the tag once used)
    ban = [model.token_ids.restored_pad, model.config.image_token_id, *model.cut_token_ids()]
    ban += [model.bagel.config.vision_start_id, model.bagel.config.vision_end_id]
    logits[:, :, ban] = float("-inf")
    after_tag = out.completion_ids == model.token_ids.image_restore
    after_tag = after_tag.cumsum(1) - after_tag.long() > 0  # once restored, the tag is banned
    logits[..., model.token_ids.image_restore] = logits[..., model.token_ids.image_restore].masked_fill(
        after_tag, float("-inf")
    )
    written = out.text_mask & out.completion_mask.bool()
    scored = torch.log_softmax(logits, -1).gather(2, out.completion_ids[..., None]).squeeze(2)
    torch.testing.assert_close(scored[written], out.token_logprobs[written], atol=1e-4, rtol=0)
    assert (written & (out.restored_mask.cumsum(1) > 0)).any()  # text after the slot was scored


def test_the_noised_block_predicts_the_cached_velocity_and_hides_from_later_tokens(bagel):
    """The flow pass's velocity equals `velocity` on the teacher-forced prefix's KV cache (what
    sampling conditions on), and changing the noised latent changes no logit."""
    model, processor = bagel
    batch = _batch(model, processor)
    rows = batch["restore"].nonzero().squeeze(1)
    student = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    with torch.no_grad():
        degraded = model.encode_latents(batch["vae_pixel_values"]).float()
        clean = model.encode_latents(batch["clean_vae_pixel_values"]).float()
        x_t = torch.randn(2, 1, *model.latent_shape, generator=torch.Generator().manual_seed(0))
        t = torch.full((2, 1), 0.6)

        def run(x):
            return model(
                **student, restored_latents=clean, degraded_latents=degraded,
                flow_latents=x, flow_timesteps=t, flow_rows=batch["restore"],
            )  # fmt: skip

        out, other = run(x_t), run(x_t + 1.0)
        context = model.teacher_forced_context(model.forward, student, degraded, rows)
        cached = model.velocity(x_t[rows, 0], t[rows, 0], context)
    torch.testing.assert_close(out.flow_velocity[rows, 0], cached, atol=1e-4, rtol=0)
    assert out.flow_velocity[~batch["restore"]].abs().sum() == 0
    torch.testing.assert_close(out.logits, other.logits, atol=0, rtol=0)
    assert not torch.allclose(out.flow_velocity[rows], other.flow_velocity[rows])


def test_text_after_a_noised_block_takes_its_position(bagel):
    model, processor = bagel
    text = torch.tensor(processor.tokenizer("<|im_start|>hi<|im_end|>")["input_ids"])
    packed = model.bagel.pack(
        [[TextSegment(text), LatentSegment(torch.zeros(4, 4, 4), 0.5, noised=True), TextSegment(text)]]
    )
    first, noised, last = packed.spans
    positions = packed.position_ids
    assert positions[noised.start : noised.end].eq(text.numel()).all()
    assert positions[last.start].item() == text.numel()  # as after a velocity call at sampling time


def test_vit_token_dropout_hides_the_vit_block_and_keeps_the_vae_block(bagel):
    model, processor = bagel
    batch = _batch(model, processor)
    inputs = {k: batch[k] for k in ("input_ids", "pixel_values", "image_sizes", "latent_pixel_values")}
    hidden = batch["attention_mask"].masked_fill(model.image_token_mask(batch["input_ids"]), 0)
    with torch.no_grad():
        clean = model.encode_latents(batch["clean_vae_pixel_values"]).float()
        seen = model(**inputs, attention_mask=batch["attention_mask"], restored_latents=clean)
        dropped = model(**inputs, attention_mask=hidden, restored_latents=clean)
    kinds = [[span.kind for span in row] for row in dropped.layout.spans]
    assert all(k.count("vit") == 0 and k.count("latent") >= 1 for k in kinds)  # the VAE block stays
    assert all(row.vit is not None for row in seen.layout.rows)
    assert not torch.allclose(seen.logits, dropped.logits)


def _grads(model, batch, **options):
    model.zero_grad()
    terms = loss_terms(model, model.forward, batch, torch.Generator().manual_seed(0), **options)
    loss = 0.0
    if options.get("with_ce", True):
        loss = terms.ce_sum / terms.ce_tokens
    if terms.mse is not None:
        loss = loss + terms.mse
    if terms.distill is not None:
        loss = loss + terms.distill
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _reached(grads, pattern: str) -> bool:
    return any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if pattern in n)


def test_each_loss_term_reaches_its_parts_and_frozen_parts_get_nothing(bagel):
    """CE reaches the LM head, never the velocity head; the flow MSE reaches `llm2vae` and the
    generation expert; the distill reaches the bridge's `vae2llm`; the frozen ViT gets nothing."""
    model, processor = bagel
    set_trainable_parts(model, ["llm", "head", "bridge", "projector"])
    assert not any(p.requires_grad for n, p in model.named_parameters() if "vit_model" in n)
    batch = _batch(model, processor)
    ce = _grads(model, batch, with_mse=False, with_distill=False)
    assert _reached(ce, "lm_head") and _reached(ce, "self_attn.q_proj.") and not _reached(ce, "llm2vae")
    model.zero_grad()
    terms = loss_terms(
        model, model.forward, batch, torch.Generator().manual_seed(0), with_mse=True, with_distill=False
    )
    terms.mse.backward()
    mse = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert _reached(mse, "llm2vae") and _reached(mse, "mlp_moe_gen") and not _reached(mse, "lm_head")
    model.zero_grad()
    terms = loss_terms(
        model, model.forward, batch, torch.Generator().manual_seed(0), with_mse=False, with_distill=True
    )
    terms.distill.backward()
    distill = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert _reached(distill, "vae2llm") and not _reached(distill, "lm_head")
    assert terms.mse is None and float(terms.distill.detach()) > 0


def test_parts_split_the_experts(bagel):
    model, _ = bagel
    set_trainable_parts(model, ["head"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("_moe_gen" in n or "llm2vae" in n or "time_embedder" in n for n in trained)
    set_trainable_parts(model, ["llm"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "bagel.language_model.lm_head.weight" in trained and not any("_moe_gen" in n for n in trained)
    assert not any(n.startswith(("bagel.vit_model", "bagel.connector")) for n in trained)


def test_lora_targets_both_experts_only_where_named(bagel):
    model, _ = bagel
    peft = apply_lora(
        model, LoraSettings(r=2, llm_target_modules=["q_proj", "o_proj_moe_gen"], head_target_modules=[])
    )
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in peft.named_parameters() if ".lora_A" in n}
    assert any(n.endswith("self_attn.q_proj") for n in wrapped)
    assert any(n.endswith("self_attn.o_proj_moe_gen") for n in wrapped)
    assert not any(n.endswith(("q_proj_moe_gen", "self_attn.o_proj")) for n in wrapped)


def test_training_refuses_what_bagel_cannot_train_with_a_clear_error(bagel):
    model, processor = bagel
    batch = _batch(model, processor)
    four_d = batch["attention_mask"][:, None, None, :].expand(-1, 1, batch["input_ids"].shape[1], -1)
    with pytest.raises(ClearRLError, match="hide_view_from"):
        model(
            input_ids=batch["input_ids"], attention_mask=four_d, latent_pixel_values=batch["vae_pixel_values"]
        )
    with pytest.raises(ClearRLError, match="reencode"):
        model(input_ids=batch["input_ids"], restored_embeds=torch.zeros(2, 4, 32))
    with pytest.raises(ClearRLError, match="latent_pixel_values"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


# -- the stages, end to end -------------------------------------------------------------------------
def test_sft_full_fine_tune_trains_the_named_parts_and_saves_an_official_folder(tmp_path, folder, data):
    out = tmp_path / "sft"
    recipe = _recipe(
        tmp_path, "sft", {"path": str(folder), "trainable_parts": ["llm", "head", "bridge"]},
        {"output_dir": str(out), "max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-2,
         "activation_checkpointing": False},
        data,
    )  # fmt: skip
    assert _train(recipe) == 0
    before, _ = load_unified(folder)
    after, _ = load_unified(out)  # the official layout, reloaded
    assert type(after).__name__ == "BagelUnifiedModel" and (out / "model.safetensors").exists()
    reference = dict(before.named_parameters())
    changed = {n for n, p in after.named_parameters() if not torch.equal(p, reference[n])}
    assert any("_moe_gen" in n for n in changed) and any("self_attn.q_proj.weight" in n for n in changed)
    assert "bagel.vae2llm.weight" in changed and "bagel.llm2vae.weight" in changed
    assert not any(n.startswith(("bagel.vit_model", "bagel.connector")) for n in changed)
    for key, value in before.bagel.vae.state_dict().items():  # the VAE never trains
        torch.testing.assert_close(after.bagel.vae.state_dict()[key], value, atol=0, rtol=0)


def test_lora_sft_then_bridge_train_adapters_and_eval_reads_them(tmp_path, folder, data):
    sft_out, bridge_out = tmp_path / "sft-lora", tmp_path / "bridge-lora"
    lora = {"r": 2, "alpha": 4, "llm_target_modules": BOTH_EXPERTS, "head_target_modules": []}
    training = {
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "activation_checkpointing": True,
    }
    sft = _recipe(
        tmp_path, "sft", {"path": str(folder), "lora": lora}, {**training, "output_dir": str(sft_out)}, data
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _train(sft) == 0
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]  # peft's base check
    tensors = _adapter_tensors(sft_out)
    assert all("lora_" in k or "trainable_tokens" in k for k in tensors)  # only adapters were trained
    for name in ("self_attn.q_proj.lora_B", "self_attn.q_proj_moe_gen.lora_B"):
        assert any(name in k and v.abs().sum() > 0 for k, v in tensors.items()), name  # B starts at zero
    assert not (sft_out / "base").exists()  # the BAGEL folder itself is the adapters' base
    assert json.loads((sft_out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        folder.resolve()
    )
    bridge = _recipe(
        tmp_path, "bridge", {"path": str(sft_out)},
        {**training, "output_dir": str(bridge_out), "restoration_steps": 2}, data,
    )  # fmt: skip
    assert _train(bridge) == 0
    assert not all(torch.equal(v, _adapter_tensors(bridge_out)[k]) for k, v in tensors.items())
    model, processor = load_unified(bridge_out)
    assert type(unified_core(model)).__name__ == "BagelUnifiedModel"
    assert type(processor).__name__ == "BagelProcessor"


def _reward_file(tmp_path) -> Path:
    path = tmp_path / "rewards.py"
    path.write_text(
        "def by_position(completions, **kwargs):\n    return [float(i % 2) for i in range(len(completions))]\n"
    )
    return path


def test_grpo_step_runs_flow_grpo_on_the_generation_expert(tmp_path, folder, data):
    """restore_policy always: every rollout restores, and the Flow-GRPO loss (the only one that
    reaches `llm2vae`, trained beside the adapters) moves it; the base folder is untouched."""
    out = tmp_path / "grpo"
    lora = {
        "r": 2,
        "alpha": 4,
        "llm_target_modules": BOTH_EXPERTS,
        "head_target_modules": [],
        "modules_to_save": ["llm2vae"],
    }
    recipe = _recipe(
        tmp_path, "grpo", {"path": str(folder), "lora": lora},
        {"output_dir": str(out), "max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 2,
         "max_completion_length": 6, "restoration_steps": 2, "restore_policy": "always", "learning_rate": 1e-2,
         "beta": 0.0, "activation_checkpointing": False},
        data, rewards=[{"path": f"{_reward_file(tmp_path)}:by_position", "weight": 1.0}],
    )  # fmt: skip
    assert _train(recipe) == 0
    base, _ = load_unified(folder)
    tensors = _adapter_tensors(out)
    velocity_head = [v for k, v in tensors.items() if "llm2vae" in k and k.endswith("weight")]
    assert velocity_head and not torch.equal(velocity_head[0], base.bagel.llm2vae.weight)
    assert any("q_proj_moe_gen.lora_B" in k and v.abs().sum() > 0 for k, v in tensors.items())
    logged = yaml.safe_load((out / "clear_rl_recipe.yaml").read_text())
    assert logged["stage"] == "grpo"


def test_grpo_with_a_kl_to_the_adapter_free_reference_and_a_dropped_view_runs(tmp_path, folder, data):
    out = tmp_path / "grpo-kl"
    lora = {"r": 2, "alpha": 4, "llm_target_modules": BOTH_EXPERTS, "head_target_modules": []}
    recipe = _recipe(
        tmp_path, "grpo", {"path": str(folder), "lora": lora},
        {"output_dir": str(out), "max_steps": 1, "per_device_train_batch_size": 2, "num_generations": 2,
         "max_completion_length": 4, "restoration_steps": 2, "restore_policy": "always", "beta": 0.04,
         "degraded_view": "drop", "activation_checkpointing": False},
        data, rewards=[{"path": f"{_reward_file(tmp_path)}:by_position", "weight": 1.0}],
    )  # fmt: skip
    assert _train(recipe) == 0 and (out / "adapter_config.json").exists()


def test_full_fine_tune_grpo_with_a_kl_is_refused_with_a_clear_error(tmp_path, folder, data):
    recipe = _recipe(
        tmp_path, "grpo", {"path": str(folder)},
        {"output_dir": str(tmp_path / "o"), "max_steps": 1, "per_device_train_batch_size": 2,
         "num_generations": 2, "beta": 0.04},
        data, rewards=[{"name": "format", "weight": 1.0}],
    )  # fmt: skip
    with pytest.raises(ClearRLError, match="train through model.lora, or set beta: 0"):
        stage_module("grpo").train(load_recipe(recipe))


def test_grpo_with_the_reencode_readback_is_refused_before_any_rollout(tmp_path, folder, data):
    # Eval re-encodes restorations as ViT blocks; the training pass would lay them out as latent
    # blocks, scoring tokens the rollout did not see: refused at the trainer's start instead.
    recipe = _recipe(
        tmp_path, "grpo", {"path": str(folder)},
        {"output_dir": str(tmp_path / "o"), "max_steps": 1, "per_device_train_batch_size": 2,
         "num_generations": 2, "readback": "reencode"},
        data, rewards=[{"name": "format", "weight": 1.0}],
    )  # fmt: skip
    with pytest.raises(
        ClearRLError, match="training.readback 'reencode' cannot be trained on BagelUnifiedModel"
    ):
        stage_module("grpo").train(load_recipe(recipe))
    assert not (tmp_path / "o" / "checkpoint-1").exists()


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_resuming_from_a_checkpoint_reaches_the_uninterrupted_weights(tmp_path, folder, data, kind):
    lora = {"r": 2, "alpha": 4, "llm_target_modules": BOTH_EXPERTS, "head_target_modules": []}
    model = {"lora": lora} if kind == "lora" else {"trainable_parts": ["head", "bridge"]}
    training = {"per_device_train_batch_size": 2, "activation_checkpointing": False, "learning_rate": 1e-2,
                "lr_scheduler_type": "constant",  # the stopped run has max_steps 1: the same schedule
                "save_strategy": "steps", "save_steps": 1, "max_steps": 2}  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    recipe = _recipe(
        tmp_path, "sft", {"path": str(folder), **model}, {**training, "output_dir": str(whole)}, data
    )
    assert _train(recipe) == 0
    assert _train(recipe, f"training.output_dir={parts}", "training.max_steps=1") == 0
    resume = [f"training.output_dir={parts}", f"training.resume_from_checkpoint={parts / 'checkpoint-1'}"]
    assert _train(recipe, *resume) == 0
    expected = dict(unified_core(load_unified(whole)[0]).named_parameters())
    for name, param in unified_core(load_unified(parts)[0]).named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_trained_folder_is_evaluated_by_clear_rl_eval(tmp_path, folder, data):
    out = tmp_path / "sft"
    lora = {"r": 2, "alpha": 4, "llm_target_modules": BOTH_EXPERTS, "head_target_modules": []}
    recipe = _recipe(
        tmp_path, "sft", {"path": str(folder), "lora": lora},
        {"output_dir": str(out), "max_steps": 1, "per_device_train_batch_size": 2, "activation_checkpointing": False},
        data,
    )  # fmt: skip
    assert _train(recipe) == 0
    from tests.test_bagel_eval import _benchmark

    tsv = _benchmark(tmp_path / "MMStar.tsv", n=2)
    code = main(
        ["eval", "--model", str(out), "--data", str(tsv), "--levels", "clean", "--restore", "always",
         "--max-new-tokens", "3", "--steps", "2", "--batch-size", "2", "--out", str(tmp_path / "eval")]
    )  # fmt: skip
    assert code == 0 and (tmp_path / "eval" / "scores.csv").exists()


@pytest.mark.slow
def test_two_process_ddp_runs_the_bagel_grpo_recipe(tmp_path, folder, data):
    from tests.test_accelerate_launch import _launch

    out = tmp_path / "grpo"
    logs = _launch(
        tmp_path, "recipes/bagel_7b_mot/grpo-lora.yaml", f"model.path={folder}", "model.tags=tokens", f"data.path={data}",
        f"training.output_dir={out}", "training.max_steps=1", "training.gradient_accumulation_steps=1",
        "training.per_device_train_batch_size=2", "training.num_generations=2", "training.max_completion_length=4",
        "training.restoration_steps=2", "training.restore_policy=always", "training.report_to=none",
        "training.save_strategy=no", "training.logging_steps=1",
    )  # fmt: skip
    assert "'flow/loss'" in logs and (out / "adapter_config.json").exists()


# -- the recipes ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["sft-lora.yaml", "bridge-lora.yaml", "grpo-lora.yaml", "grpo-qlora-24gb.yaml"]
)
def test_bagel_recipes_parse_and_validate(name):  # the clear-rl defaults (LoRA, one GPU)
    recipe = load_recipe(RECIPES / name)
    lora = recipe.model.lora
    if name.startswith("bridge"):  # from stage 1's adapters, which keep training
        assert lora is None and recipe.model.path.endswith("sft-lora")
        return
    assert lora is not None and any(m.endswith("_moe_gen") for m in lora.llm_target_modules)
    if name.startswith("grpo-qlora"):
        assert recipe.model.load_in_4bit and recipe.training.max_completion_length <= 256


def test_the_bagel_recipes_run_one_step_on_the_tiny_folder(tmp_path, folder, data):
    tiny = ["training.max_steps=1", "training.gradient_accumulation_steps=1", "training.report_to=none",
            "training.save_strategy=no", "training.use_cpu=true", f"data.path={data}"]  # fmt: skip
    sft_out = tmp_path / "sft"
    assert (
        _train(RECIPES / "sft-lora.yaml", f"model.path={folder}", f"training.output_dir={sft_out}", *tiny)
        == 0
    )
    bridge = [
        f"model.path={sft_out}",
        f"training.output_dir={tmp_path / 'bridge'}",
        "training.restoration_steps=2",
    ]
    assert _train(RECIPES / "bridge-lora.yaml", *bridge, *tiny) == 0
    grpo = [f"model.path={folder}", "model.tags=tokens", f"training.output_dir={tmp_path / 'grpo'}", "training.restoration_steps=2",
            "training.max_completion_length=4", "training.per_device_train_batch_size=2",
            "training.num_generations=2"]  # fmt: skip
    assert _train(RECIPES / "grpo-lora.yaml", *grpo, *tiny) == 0
    assert (tmp_path / "grpo" / "adapter_config.json").exists()


# The released training and the paper's, value for value (docs/bagel-release.md); full fine-tunes.
RELEASED = {
    "sft-release.yaml": {"learning_rate": 1e-5, "max_steps": 8000, "warmup_steps": 500, "lambda_mse": 1.0,
                         "lambda_distill": 0.4, "vit_token_dropout": 0.4, "weight_decay": 0.01,
                         "adam_beta2": 0.95, "adam_epsilon": 1e-15, "seed": 4396},
    "grpo-release.yaml": {"loss_type": "dr_grpo", "beta": 0.0, "num_generations": 8,
                          "gradient_accumulation_steps": 32, "learning_rate": 5e-6, "max_steps": 400,
                          "restoration_steps": 19, "restoration_noise_level": 0.3,
                          "restoration_noise_schedule": "constant", "flow_loss_weight": 0.5,
                          "flow_step_selection": "round_robin", "max_completion_length": 16384},
    "sft-paper.yaml": {"learning_rate": 2e-5, "num_train_epochs": 3, "lambda_mse": 0.5, "lambda_distill": 0.1,
                       "vit_token_dropout": 0.4},
    "grpo-paper.yaml": {"loss_type": "grpo", "num_generations": 4, "learning_rate": 1e-6, "epsilon": 0.2,
                        "restoration_steps": 30, "flow_loss_weight": 0.3, "flow_step_selection": "random"},
}  # fmt: skip


@pytest.mark.parametrize("name", list(RELEASED))
def test_release_and_paper_recipes_hold_their_values(name):
    recipe = load_recipe(RECIPES / name)
    assert recipe.model.lora is None and recipe.model.preset == "clear-release"
    for key, value in RELEASED[name].items():
        assert getattr(recipe.training, key) == value, key
    if name == "grpo-release.yaml":  # only accuracy and format are on, at the release's weights
        assert [(r.name, r.weight) for r in recipe.rewards] == [("accuracy", 0.75), ("format", 0.10)]
    if name == "grpo-paper.yaml":
        assert [r.name for r in recipe.rewards] == ["accuracy", "format", "decision", "latent_quality"]


def test_the_release_and_paper_recipes_run_one_step_on_the_tiny_folder(tmp_path, folder, data):
    tiny = ["training.max_steps=1", "training.gradient_accumulation_steps=1", "training.report_to=none",
            "training.save_strategy=no", "training.use_cpu=true", f"data.path={data}"]  # fmt: skip
    for stage in ("release", "paper"):
        sft_out = tmp_path / f"sft-{stage}"
        sft = [f"model.path={folder}", f"training.output_dir={sft_out}", "training.num_train_epochs=1"]
        assert _train(RECIPES / f"sft-{stage}.yaml", *sft, *tiny) == 0
        assert (sft_out / "model.safetensors").exists()  # a full fine-tune: the official layout
        grpo = [f"model.path={sft_out}", f"training.output_dir={tmp_path / f'grpo-{stage}'}",
                "training.restoration_steps=2", "training.max_completion_length=4",
                "training.per_device_train_batch_size=2", "training.num_generations=2",
                "training.restore_policy=always"]  # fmt: skip
        assert _train(RECIPES / f"grpo-{stage}.yaml", *grpo, *tiny) == 0
        assert (tmp_path / f"grpo-{stage}" / "model.safetensors").exists()
