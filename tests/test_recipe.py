"""Recipes: validation before any work, overrides, the resolved copy, and the shipped recipes."""

import logging
import warnings
from pathlib import Path

import pytest
import yaml

from clear_rl.errors import RecipeError
from clear_rl.recipe import RESOLVED_RECIPE_NAME, load_recipe
from clear_rl.trainers.align import AlignConfig
from clear_rl.trainers.bridge_stage import BridgeStageConfig
from clear_rl.trainers.grpo_config import InterleavedGRPOConfig
from clear_rl.trainers.sft import ClearSFTConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BASE = {
    "stage": "sft",
    "model": {"tiny": {}},
    "data": {"path": "data/prepared"},
    "training": {"output_dir": "out", "max_steps": 3, "report_to": "none"},
}


def write(tmp_path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def with_training(**values) -> dict:
    return {**BASE, "training": {**BASE["training"], **values}}


@pytest.mark.parametrize(
    "name, stage, config_class",
    [
        ("demo/align.yaml", "align", AlignConfig),
        ("qwen2_5_vl_3b/align.yaml", "align", AlignConfig),
        ("demo/sft.yaml", "sft", ClearSFTConfig),
        ("demo/bridge.yaml", "bridge", BridgeStageConfig),
        ("qwen2_5_vl_3b/sft-lora.yaml", "sft", ClearSFTConfig),
        ("qwen2_5_vl_3b/bridge-lora.yaml", "bridge", BridgeStageConfig),
        ("demo/base.yaml", "sft", ClearSFTConfig),
        ("demo/grpo.yaml", "grpo", InterleavedGRPOConfig),
        ("qwen2_5_vl_3b/grpo-qlora.yaml", "grpo", InterleavedGRPOConfig),
        ("bagel_7b_mot/sft-lora.yaml", "sft", ClearSFTConfig),
        ("bagel_7b_mot/bridge-lora.yaml", "bridge", BridgeStageConfig),
        ("bagel_7b_mot/grpo-lora.yaml", "grpo", InterleavedGRPOConfig),
        ("bagel_7b_mot/grpo-qlora-24gb.yaml", "grpo", InterleavedGRPOConfig),
    ],
)
def test_shipped_recipes_validate(name, stage, config_class):
    recipe = load_recipe(RECIPES / name)
    assert recipe.stage == stage and type(recipe.training) is config_class
    assert recipe.training.remove_unused_columns is False


def test_grpo_recipes_declare_the_four_rewards_with_paper_weights():
    for name in ("qwen2_5_vl_3b/grpo-qlora.yaml", "bagel_7b_mot/grpo-lora.yaml"):
        recipe = load_recipe(RECIPES / name)
        weights = {spec.name: spec.weight for spec in recipe.rewards}
        assert weights == {"accuracy": 0.75, "format": 0.10, "decision": 0.15, "latent_quality": 0.0}
        assert recipe.training.flow_loss_weight == 0.3 and recipe.training.epsilon == 0.2


def test_the_demo_trains_stage_3_on_the_releases_rewards():
    # docs/demo.md: at demo scale the paper's decision matrix restores everywhere, a flat charge nowhere.
    recipe = load_recipe(RECIPES / "demo/grpo.yaml")
    assert {spec.name: spec.weight for spec in recipe.rewards} == {"accuracy": 0.75, "format": 0.10}
    assert recipe.training.flow_loss_weight == 0.3 and recipe.training.epsilon == 0.2


def test_qwen_recipe_is_lora_on_a_4bit_base():
    recipe = load_recipe(RECIPES / "qwen2_5_vl_3b/sft-lora.yaml")
    assert recipe.model.load_in_4bit and recipe.model.lora is not None
    assert set(recipe.model.lora.modules_to_save) == {"restoration_head", "latent_bridge"}
    assert recipe.training.activation_checkpointing and recipe.training.learning_rate == 1e-4


def test_paper_defaults_and_yaml_exponents_are_floats(tmp_path):
    recipe = load_recipe(write(tmp_path, with_training()))
    assert (recipe.training.lambda_mse, recipe.training.lambda_distill) == (0.5, 0.1)
    (tmp_path / "lr.yaml").write_text(
        "stage: sft\nmodel: {tiny: {}}\ndata: {path: d}\ntraining: {output_dir: o, learning_rate: 2e-5}\n"
    )
    lr = load_recipe(tmp_path / "lr.yaml").training.learning_rate
    assert isinstance(lr, float) and lr == 2e-5


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    with pytest.raises(
        RecipeError, match=r"training\.lambda_mes: unknown key \(did you mean 'lambda_mse'\?\)"
    ):
        load_recipe(write(tmp_path, with_training(lambda_mes=0.5)))
    # Stage 2 has no flow loss: lambda_mse is not one of its keys.
    with pytest.raises(RecipeError, match=r"training\.lambda_mse: unknown key"):
        load_recipe(write(tmp_path, {**with_training(lambda_mse=0.5), "stage": "bridge"}))


def test_wrong_type_and_bad_value_name_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"training\.lambda_mse: expected float"):
        load_recipe(write(tmp_path, with_training(lambda_mse="high")))
    with pytest.raises(RecipeError, match=r"training\.distill_mode: expected one of"):
        load_recipe(write(tmp_path, with_training(distill_mode="cosine")))
    with pytest.raises(RecipeError, match=r"model\.lora\.r: expected int"):
        load_recipe(write(tmp_path, {**BASE, "model": {"tiny": {}, "lora": {"r": "sixteen"}}}))
    with pytest.raises(RecipeError, match="lambda_mse must be >= 0"):
        load_recipe(write(tmp_path, with_training(lambda_mse=-1)))


def test_missing_required_key_and_section(tmp_path):
    with pytest.raises(RecipeError, match=r"data: missing required key\(s\) path"):
        load_recipe(write(tmp_path, {**BASE, "data": {"split": "train"}}))
    without_data = {k: v for k, v in BASE.items() if k != "data"}
    with pytest.raises(RecipeError, match="missing required section 'data'"):
        load_recipe(write(tmp_path, without_data))


def test_dotted_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, BASE)
    recipe = load_recipe(
        path, ["training.max_steps=7", "model.lora.r=8", "data.split=test", "training.lambda_mse=0"]
    )
    assert recipe.training.max_steps == 7 and recipe.model.lora.r == 8 and recipe.data.split == "test"
    assert recipe.training.lambda_mse == 0.0
    with pytest.raises(RecipeError, match=r"training\.max_step: unknown key \(did you mean 'max_steps'\?\)"):
        load_recipe(path, ["training.max_step=7"])


def test_yes_and_no_stay_strings_as_trainingarguments_expects(tmp_path):
    # PyYAML's YAML 1.1 would read `no` as False and fail `save_strategy`; only true/false are booleans.
    path = tmp_path / "r.yaml"
    path.write_text(
        "stage: sft\nmodel: {tiny: {}}\ndata: {path: d}\ntraining: {output_dir: o, save_strategy: no}\n"
    )
    recipe = load_recipe(path, ["training.eval_strategy=no", "training.bf16=false", "training.use_cpu=True"])
    assert recipe.training.save_strategy == "no" and recipe.training.eval_strategy == "no"
    assert recipe.training.bf16 is False and recipe.training.use_cpu is True


def test_resolved_recipe_is_saved_with_overrides(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), ["training.max_steps=9"])
    saved = recipe.save_resolved(tmp_path / "run")
    assert saved == tmp_path / "run" / RESOLVED_RECIPE_NAME
    reloaded = load_recipe(saved)
    assert reloaded.training.max_steps == 9 and reloaded.raw == recipe.raw


def test_train_command_rejects_a_bad_recipe_before_loading_anything(tmp_path, capsys, monkeypatch):
    from clear_rl import cli
    from clear_rl.trainers import common

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the recipe was validated")

    monkeypatch.setattr(common, "load_model", no_model)
    path = write(tmp_path, with_training(lambda_mse="lots"))
    assert cli.main(["train", str(path), "training.max_steps=1"]) == 2
    assert "training.lambda_mse: expected float" in capsys.readouterr().err
    assert cli.main(["train", str(write(tmp_path, BASE)), "training.lamda_distill=1"]) == 2
    assert "did you mean 'lambda_distill'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu", "zero2", "zero3", "fsdp"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / "accelerate" / f"{name}.yaml"))
    kind = {"single_gpu": "NO", "multi_gpu": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
    assert config.distributed_type.value == kind.get(name, "FSDP")
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_grpo_readback_and_degraded_view_keys(tmp_path):
    path = RECIPES / "demo/grpo.yaml"
    recipe = load_recipe(path, ["training.readback=reencode", "training.degraded_view=drop"])
    assert (recipe.training.readback, recipe.training.degraded_view) == ("reencode", "drop")
    assert load_recipe(path).training.readback == "bridge"
    with pytest.raises(RecipeError, match=r"training\.readback: expected one of"):
        load_recipe(path, ["training.readback=decode"])
    with pytest.raises(RecipeError, match=r"training\.degraded_view: expected one of"):
        load_recipe(path, ["training.degraded_view=hide"])


def test_renamed_keys_still_work_this_release_and_name_their_new_spelling(tmp_path):
    raw = yaml.safe_load((RECIPES / "demo/grpo.yaml").read_text())
    for new in ("restoration_steps", "restoration_shift", "restoration_noise_level"):
        del raw["training"][new]
    raw["training"].update(num_inference_steps=4, flow_shift=2.0, sde_noise_level=0.5)
    path = write(tmp_path, raw, "old-grpo.yaml")
    with pytest.warns(
        FutureWarning, match=r"training\.num_inference_steps is deprecated.*'restoration_steps'"
    ):
        recipe = load_recipe(path)
    sampling = recipe.training.restoration_sampling
    assert (sampling.steps, sampling.shift, sampling.sampler, sampling.noise_level) == (4, 2.0, "sde", 0.5)
    with pytest.raises(
        RecipeError, match=r"'num_inference_steps' and 'restoration_steps' are the same setting"
    ):
        load_recipe(path, ["training.restoration_steps=4"])
    with pytest.warns(FutureWarning, match="'train_timestep_shift'"):
        sft = load_recipe(write(tmp_path, with_training(flow_shift=2.5)))
    assert sft.training.train_timestep_shift == 2.5


def test_one_restoration_sampling_spelling_in_every_stage(tmp_path):
    bridge = {**with_training(restoration_steps=3, restoration_sampler="sde"), "stage": "bridge"}
    sampling = load_recipe(write(tmp_path, bridge)).training.restoration_sampling
    assert (sampling.steps, sampling.sampler) == (3, "sde")
    grpo = RECIPES / "demo/grpo.yaml"
    assert load_recipe(grpo).training.restoration_sampling.sampler == "sde"
    # Stage 3 has one sampler and no key for it: an old recipe naming it, even as sde, is told so.
    for value in ("sde", "ode"):
        with pytest.raises(RecipeError, match=r"training: restoration_sampler is no longer a stage-3 key"):
            load_recipe(grpo, [f"training.restoration_sampler={value}"])
    with pytest.raises(RecipeError, match="restoration steps must be >= 1"):
        load_recipe(write(tmp_path, {**bridge, "training": {**bridge["training"], "restoration_steps": 0}}))


def test_shipped_recipes_use_no_deprecated_key():
    # TRL defaults `gradient_checkpointing` to True, which transformers 5 warns about on every run.
    for path in sorted(RECIPES.glob("[bdq]*/*.yaml")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            recipe = load_recipe(path)
        deprecated = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
        assert deprecated == [], (path.name, deprecated)
        assert recipe.training.gradient_checkpointing == recipe.training.activation_checkpointing


def test_gradient_checkpointing_is_renamed_and_honoured(tmp_path):
    assert load_recipe(write(tmp_path, BASE)).training.activation_checkpointing is True  # TRL's default
    with pytest.warns(
        FutureWarning, match=r"training\.gradient_checkpointing is deprecated.*'activation_checkpointing'"
    ):
        recipe = load_recipe(write(tmp_path, with_training(gradient_checkpointing=False)))
    assert (
        recipe.training.activation_checkpointing is False and recipe.training.gradient_checkpointing is False
    )


def test_a_recipe_without_output_dir_is_refused(tmp_path):
    recipe = {**BASE, "training": {"max_steps": 3}}
    with pytest.raises(RecipeError, match=r"recipe\.yaml: training\.output_dir: missing"):
        load_recipe(write(tmp_path, recipe))


def test_saved_recipe_finds_its_reward_plugins_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "mine.py").write_text(
        "def brevity(completions, **kw):\n    return [0.0] * len(completions)\n"
    )
    raw = yaml.safe_load((RECIPES / "demo/grpo.yaml").read_text())
    raw["rewards"].append({"path": "plugins/mine.py:brevity", "weight": 0.5})
    recipe = load_recipe(write(tmp_path, raw, "grpo.yaml"))
    saved = recipe.save_resolved(tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run")  # re-run the saved copy from its own folder
    again = load_recipe(saved)
    assert again.rewards[-1].path == f"{(tmp_path / 'plugins' / 'mine.py').resolve()}:brevity"
    assert again.rewards[-1].path == recipe.rewards[-1].path
    assert again.raw["training"] == recipe.raw["training"]


def test_a_renamed_key_is_announced_once(tmp_path, caplog, recwarn):
    with caplog.at_level(logging.INFO, logger="clear_rl"):
        load_recipe(write(tmp_path, with_training(gradient_checkpointing=False)))
    said = [str(w.message) for w in recwarn if "gradient_checkpointing is deprecated" in str(w.message)]
    assert len(said) == 1 and "deprecated" not in caplog.text  # one FutureWarning, no log line repeating it


def test_the_cli_help_lists_every_stage():
    from clear_rl.cli import build_parser

    assert "run a training stage (align | sft | bridge | grpo)" in build_parser().format_help()
