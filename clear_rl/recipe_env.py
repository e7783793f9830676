"""Recipe overrides from the environment, for a script of several `clear-rl train` runs.

  CLEAR_RL_TRAIN_OVERRIDES="training.max_steps=2 grpo:training.max_completion_length=32" bash workflow.sh

shrinks every stage of a workflow script (a smoke run of the whole chain, a quick check on a new
cluster) without editing the script or its recipes. Each item is a `key.path=value` override as on
the command line; `STAGE:key.path=value` applies to recipes of that stage only (align, sft, bridge,
grpo), since a key one stage has may not exist in another. They apply before the command line's
overrides, which win, are validated like them, and land in the saved `clear_rl_recipe.yaml`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from clear_rl.errors import RecipeError
from clear_rl.recipe import STAGES

ENV = "CLEAR_RL_TRAIN_OVERRIDES"


def recipe_stage(recipe: str | os.PathLike) -> str | None:
    """The `stage:` a recipe file names, or None when it cannot be read (load_recipe reports why)."""
    try:
        loaded = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return loaded.get("stage") if isinstance(loaded, dict) else None


def env_overrides(stage: str | None, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The overrides `CLEAR_RL_TRAIN_OVERRIDES` gives a recipe of `stage`, in order."""
    text = environ.get(ENV, "").strip()
    if not text:
        return []
    try:
        items = shlex.split(text)
    except ValueError as exc:
        raise RecipeError(f"{ENV}: cannot split {text!r} into overrides: {exc}") from None
    chosen = []
    for item in items:
        scope, colon, override = item.partition(":")
        if not colon or "=" in scope:  # no stage prefix (a value may hold a colon: a URL, a path)
            scope, override = "", item
        if "=" not in override:
            raise RecipeError(f"{ENV}: {item!r} is not [stage:]key.path=value")
        if scope and scope not in STAGES:
            raise RecipeError(f"{ENV}: {item!r} names no stage; stages: {', '.join(STAGES)}")
        if scope in ("", stage):
            chosen.append(override)
    if chosen:
        print(f"clear-rl: overrides from {ENV}: {' '.join(chosen)}", file=sys.stderr)
    return chosen
