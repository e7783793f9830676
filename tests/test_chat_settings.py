"""A saved model carries the system prompt and chat settings it was trained with."""

from __future__ import annotations

import json

import pytest
from conftest import make_images

from clear_rl import labelling
from clear_rl.data.samples import ProbeSettings
from clear_rl.data.sources import SourceRow
from clear_rl.errors import ClearRLError
from clear_rl.models.chat import (
    OWN_PROMPT,
    RECIPE_FILE,
    ChatSettings,
    chat_settings_of,
    resolve_chat,
    saved_chat_settings,
)
from clear_rl.models.io import load_unified, save_unified
from clear_rl.models.tokens import SYSTEM_PROMPT
from clear_rl.recipe import RESOLVED_RECIPE_NAME, Recipe


def _write(folder, text):
    folder.mkdir(exist_ok=True)
    (folder / RECIPE_FILE).write_text(text)
    return folder


def test_reads_what_a_training_stage_saves(tmp_path):
    assert RECIPE_FILE == RESOLVED_RECIPE_NAME
    raw = {
        "stage": "grpo",
        "data": {"path": "prepared", "system_prompt": "no"},  # YAML 1.1 would read a bare no as False
        "training": {"chat_template_kwargs": {"enable_thinking": False}},
    }
    Recipe(stage="grpo", model=None, data=None, training=None, raw=raw).save_resolved(tmp_path)
    settings = saved_chat_settings(tmp_path)
    assert settings.system_prompt == "no" and settings.chat_template_kwargs == {"enable_thinking": False}
    assert settings.source == f"{tmp_path / RECIPE_FILE} (data.system_prompt)"


def test_defaults_none_and_json_kwargs(tmp_path):
    assert saved_chat_settings(tmp_path) == ChatSettings()  # no recipe: clear-rl's default prompt
    unset = saved_chat_settings(_write(tmp_path / "a", "stage: sft\ndata: {path: x}\n"))
    assert unset.system_prompt == SYSTEM_PROMPT and "no data.system_prompt" in unset.source
    none = _write(
        tmp_path / "b", "data: {system_prompt: null}\ntraining: {chat_template_kwargs: '{\"x\": 1}'}\n"
    )
    assert saved_chat_settings(none).system_prompt is None
    assert saved_chat_settings(none).chat_template_kwargs == {"x": 1}
    # An adapter folder without a recipe of its own takes its base model's.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "b")}))
    assert saved_chat_settings(adapter).system_prompt is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: [unclosed", "not valid YAML"),
        ("data: {system_prompt: 3}", "data.system_prompt must be text or null, got 3"),
        (
            "data: {}\ntraining: {chat_template_kwargs: [1]}",
            "training.chat_template_kwargs must be a mapping",
        ),
        ("data: words", "`data` must be a mapping"),
    ],
)
def test_a_malformed_recipe_names_the_file_and_key(tmp_path, text, message):
    folder = _write(tmp_path / "m", text)
    with pytest.raises(ClearRLError, match=message) as info:
        saved_chat_settings(folder)
    assert RECIPE_FILE in str(info.value)


def test_an_explicit_prompt_overrides_the_models_own_but_keeps_its_template_arguments():
    class Model:
        clear_rl_chat = ChatSettings("own", {"enable_thinking": False}, "somewhere")

    assert resolve_chat(OWN_PROMPT, Model(), "cli") == Model.clear_rl_chat
    assert resolve_chat("given", Model(), "cli") == ChatSettings("given", {"enable_thinking": False}, "cli")
    assert resolve_chat("", Model(), "cli").system_prompt is None  # "": no system prompt
    assert chat_settings_of(object()).system_prompt == SYSTEM_PROMPT


def test_load_unified_and_probing_use_the_saved_prompt(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    save_unified(model, processor, tmp_path / "base")
    _write(tmp_path / "base", "data: {path: x, system_prompt: Short demo prompt.}\n")
    loaded, _ = load_unified(tmp_path / "base")
    assert loaded.clear_rl_chat.system_prompt == "Short demo prompt."
    seen = []
    original = labelling.answer_batch

    def spy(*args, **kwargs):
        seen.append(kwargs["system_prompt"])
        return original(*args, **kwargs)

    monkeypatch.setattr(labelling, "answer_batch", spy)
    row = SourceRow("0", make_images(1)[0], "Which shape?", "A", {"A": "circle", "B": "square"}, None)
    labelling.Prober(
        ProbeSettings(model_path=str(tmp_path / "base"), max_new_tokens=2, device="cpu")
    ).correct([row.image], [row])
    labelling.Prober(
        ProbeSettings(
            model_path=str(tmp_path / "base"), max_new_tokens=2, device="cpu", system_prompt="Other."
        )
    ).correct([row.image], [row])
    assert seen == ["Short demo prompt.", "Other."]
