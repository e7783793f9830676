"""The chat a saved model was trained with: its system prompt and chat-template settings.

Every training stage saves its resolved recipe (`clear_rl_recipe.yaml`) beside the model. Its
`data.system_prompt` (absent: the recipe default, clear-rl's SYSTEM_PROMPT; null or "": none)
and `training.chat_template_kwargs` are how the model was asked during training; a model asked
otherwise can answer near chance (a model trained with a short prompt, evaluated with the
default one). `load_unified` reads them into `model.clear_rl_chat`, and evaluation and probing
ask the model the same way unless told otherwise. A BAGEL-family folder without a recipe is asked
with its inference preset's prompt (clear-release: CLEAR's own).

The same files record how a model writes the protocol tags (`saved_tags`): a model clear-rl trained
uses its single tokens; a folder without a record (BAGEL-7B-MoT, CLEAR's checkpoints) is read with its
preset's tags (plain text, as CLEAR's release writes them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clear_rl.choices import TAGS
from clear_rl.errors import ClearRLError
from clear_rl.models.tokens import IMAGE_RESTORE, SYSTEM_PROMPT

# The name `clear_rl.recipe.RESOLVED_RECIPE_NAME` saves under (tests/test_chat_settings.py checks both agree).
RECIPE_FILE = "clear_rl_recipe.yaml"
ATTRIBUTE = "clear_rl_chat"


@dataclass(frozen=True)
class ChatSettings:
    """A system prompt (None: none), extra `apply_chat_template` arguments, and where both came from."""

    system_prompt: str | None = SYSTEM_PROMPT
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = f"clear-rl's default (no {RECIPE_FILE} beside the model)"


class _OwnPrompt:
    """The marker for "the model's own system prompt" in settings that may also hold a prompt or None."""

    def __repr__(self) -> str:
        return "OWN_PROMPT"


OWN_PROMPT = _OwnPrompt()


def saved_chat_settings(folder: str | os.PathLike, default: ChatSettings | None = None) -> ChatSettings:
    """The chat settings saved beside a model: its folder's recipe, else (an adapter folder) its
    base model's, else `default` (clear-rl's defaults unless given: a BAGEL preset gives its own
    prompt). A ClearRLError names a malformed file and key."""
    folder = Path(folder)
    recipe = folder / RECIPE_FILE
    if not recipe.is_file():
        base = adapter_base(folder)
        return saved_chat_settings(base, default) if base is not None else default or ChatSettings()
    document = _recipe_document(recipe)
    data = _section(document, "data", recipe)
    training = _section(document, "training", recipe)
    if "system_prompt" in data:
        prompt = data["system_prompt"]
        if prompt is not None and not isinstance(prompt, str):
            raise ClearRLError(f"{recipe}: data.system_prompt must be text or null, got {prompt!r}")
        source = f"{recipe} (data.system_prompt)"
    else:
        prompt, source = SYSTEM_PROMPT, f"{recipe} (no data.system_prompt: clear-rl's default)"
    return ChatSettings(
        prompt or None, _template_kwargs(training.get("chat_template_kwargs"), recipe), source
    )


def saved_tags(folder: str | os.PathLike) -> tuple[str | None, str]:
    """How a saved model writes the protocol tags, as its folder records it, and where that was read:
    its recipe's `model.tags` (a recipe without one: "tokens", the only protocol clear-rl trains), else
    (an adapter folder) its base's record, else "tokens" where its tokenizer holds the tags as tokens of
    their own; (None, ...) where nothing records it (BAGEL-7B-MoT, CLEAR's checkpoints: the preset says)."""
    folder = Path(folder)
    recipe = folder / RECIPE_FILE
    if recipe.is_file():
        tags = _section(_recipe_document(recipe), "model", recipe).get("tags")
        if tags is None:
            return "tokens", f"{recipe} (clear-rl trained it: single tokens)"
        if tags not in TAGS:
            raise ClearRLError(f"{recipe}: model.tags must be 'text' or 'tokens', got {tags!r}")
        return tags, f"{recipe} (model.tags)"
    base = adapter_base(folder)
    if base is not None:
        return saved_tags(base)
    if _tokenizer_holds_tags(folder):
        return "tokens", f"{folder}'s tokenizer (it holds the tags as tokens of their own)"
    return None, f"no record in {folder}"


def _tokenizer_holds_tags(folder: Path) -> bool:
    """Whether the folder's tokenizer files list `<image_restore>` as an added token (read as JSON)."""
    for name, key in (("tokenizer.json", "added_tokens"), ("tokenizer_config.json", "added_tokens_decoder")):
        path = folder / name
        if not path.is_file():
            continue
        try:
            added = json.loads(path.read_text(encoding="utf-8")).get(key) or []
        except (json.JSONDecodeError, AttributeError):
            continue
        entries = added.values() if isinstance(added, dict) else added
        if any(isinstance(e, dict) and e.get("content") == IMAGE_RESTORE for e in entries):
            return True
    return False


def _recipe_document(recipe: Path) -> dict:
    try:
        document = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ClearRLError(f"{recipe}: not valid YAML ({exc})") from None
    if not isinstance(document, dict):
        raise ClearRLError(f"{recipe}: expected a mapping of recipe sections, got {type(document).__name__}")
    return document


def _section(document: dict, key: str, recipe: Path) -> dict:
    section = document.get(key) or {}
    if not isinstance(section, dict):
        raise ClearRLError(f"{recipe}: `{key}` must be a mapping, got {section!r}")
    return section


def _template_kwargs(value: Any, recipe: Path) -> dict[str, Any]:
    """TRL's `chat_template_kwargs`: a mapping, or its JSON text."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise ClearRLError(f"{recipe}: training.chat_template_kwargs must be a mapping, got {value!r}")
    return dict(value)


def adapter_base(folder: Path) -> Path | None:
    """The base model folder an adapter folder names (None: not an adapter folder, or no such folder)."""
    config = folder / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return Path(base) if base and Path(base).is_dir() else None


def chat_settings_of(model) -> ChatSettings:
    """What `load_unified` read for `model`; clear-rl's defaults for a model built in memory."""
    settings = getattr(model, ATTRIBUTE, None)
    if isinstance(settings, ChatSettings):
        return settings
    return ChatSettings(source="clear-rl's default (a model not loaded from a folder)")


def resolve_chat(system_prompt: str | None | _OwnPrompt, model, override_source: str) -> ChatSettings:
    """The settings to ask `model` with: its own (`OWN_PROMPT`), or its own chat-template arguments
    with the given prompt (None or "": none), the source saying who chose it."""
    own = chat_settings_of(model)
    if system_prompt is OWN_PROMPT:
        return own
    return ChatSettings(system_prompt or None, own.chat_template_kwargs, override_source)
