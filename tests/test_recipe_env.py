"""CLEAR_RL_TRAIN_OVERRIDES: overrides for every `clear-rl train` of a script, scoped by stage."""

from __future__ import annotations

import argparse

import pytest

from clear_rl.errors import RecipeError
from clear_rl.recipe_env import ENV, env_overrides, recipe_stage


def test_unscoped_items_apply_to_every_stage_and_scoped_ones_to_theirs(capsys):
    environ = {
        ENV: "training.max_steps=2 grpo:training.max_completion_length=16 align:model.head.num_layers=1"
    }
    assert env_overrides("grpo", environ) == ["training.max_steps=2", "training.max_completion_length=16"]
    assert env_overrides("align", environ) == ["training.max_steps=2", "model.head.num_layers=1"]
    assert env_overrides("sft", environ) == ["training.max_steps=2"]
    assert f"overrides from {ENV}: training.max_steps=2" in capsys.readouterr().err  # never silent


def test_values_may_hold_colons_and_quoted_spaces():
    environ = {ENV: "data.path=/data/a:b 'data.system_prompt=Answer: briefly.'"}
    assert env_overrides("sft", environ) == ["data.path=/data/a:b", "data.system_prompt=Answer: briefly."]


def test_nothing_set_means_no_overrides():
    assert env_overrides("sft", {}) == []
    assert env_overrides("sft", {ENV: "  "}) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training.max_steps", "is not \\[stage:\\]key.path=value"),
        ("grop:training.max_steps=2", "names no stage; stages: align, sft, bridge, grpo"),
        ("training.max_steps='2", "cannot split"),
    ],
)
def test_malformed_items_are_refused_naming_the_variable(text, message):
    with pytest.raises(RecipeError, match=f"{ENV}: .*{message}"):
        env_overrides("sft", {ENV: text})


def test_recipe_stage_reads_the_file_or_leaves_errors_to_load_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: bridge\nmodel: {path: x}\n")
    assert recipe_stage(recipe) == "bridge"
    assert recipe_stage(tmp_path / "missing.yaml") is None
    (tmp_path / "bad.yaml").write_text("stage: [unclosed\n")
    assert recipe_stage(tmp_path / "bad.yaml") is None


def test_train_puts_the_command_line_after_the_environment(tmp_path, monkeypatch):
    import clear_rl.recipe
    from clear_rl.commands import train

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: sft\n")
    seen = {}

    def load_recipe(path, overrides, check_inputs, overwrite):
        seen["overrides"] = overrides
        raise RecipeError("stop here")

    monkeypatch.setattr(clear_rl.recipe, "load_recipe", load_recipe)
    monkeypatch.setenv(ENV, "training.max_steps=2 sft:training.seed=1 grpo:training.beta=0")
    with pytest.raises(RecipeError, match="stop here"):
        train.run(argparse.Namespace(recipe=str(recipe), overrides=["training.max_steps=5"], overwrite=False))
    assert seen["overrides"] == ["training.max_steps=2", "training.seed=1", "training.max_steps=5"]
