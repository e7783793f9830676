"""Recipes: YAML files -> typed, validated configs, checked before any work starts.

A recipe has a `stage` (align | sft | bridge | grpo) and sections:

    model:     how to get the unified model (a saved folder, a VLM + VAE to compose, or tiny)
    data:      the prepared dataset (written by `clear-rl prepare`); align: any images
    training:  the stage's config: TRL's SFTConfig / GRPOConfig fields by their own names, plus
               clear-rl's (loss weights, restoration sampling, ...)
    rewards:   stage 3's reward plugins with weights

Every key is checked against the dataclass it fills: an unknown key (with a close-match
suggestion), a wrong type or a missing required field is a `RecipeError` that names the file
and the key path. `key.path=value` overrides are applied before validation.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import importlib
import os
import re
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from clear_rl import __version__
from clear_rl.choices import FlowSource, Tags
from clear_rl.errors import ClearRLError, RecipeError
from clear_rl.io.atomic import write_text
from clear_rl.models import registry
from clear_rl.models.settings import PARTS, LoraSettings
from clear_rl.models.tokens import SYSTEM_PROMPT
from clear_rl.recipe_schema import STAGE_CONFIGS, Schema, config_class, schema_of, stage_schema

# Stage name -> module with `CONFIG_CLASS` (the `training:` dataclass) and `train(recipe)`.
STAGES: dict[str, str] = {
    "align": "clear_rl.trainers.align",
    "sft": "clear_rl.trainers.sft",
    "bridge": "clear_rl.trainers.bridge_stage",
    "grpo": "clear_rl.trainers.grpo",
}
RESOLVED_RECIPE_NAME = "clear_rl_recipe.yaml"


# The backbone `model.vlm_path` + `model.vae_path` and `model.tiny` build (models/assemble.py, tiny.py).
BUILT_IN_CODE = "composed"


@dataclass
class ModelConfig:
    """Where the unified model comes from: exactly one of `path`, `vlm_path` + `vae_path`, `tiny`."""

    path: str | None = None  # a folder saved by clear-rl (full model or LoRA adapters), or BAGEL's
    # Which registered backbone `path` loads as (models/registry.py: composed, bagel, or a plug-in's);
    # auto: the one whose layout the folder holds.
    backbone: str = registry.AUTO
    # The inference preset of a backbone that has them (BAGEL's: image views, restoration CFG, steps;
    # docs/bagel-release.md); None: its default (BAGEL: clear-release).
    preset: str | None = None
    # How a BAGEL-family model writes the protocol tags: "tokens" (clear-rl's single tokens, the only
    # protocol clear-rl trains) or "text" (CLEAR's release); None: what the folder records (a model
    # clear-rl trained: tokens), else its preset's (text). docs/bagel-release.md.
    tags: Tags | None = None
    vlm_path: str | None = None  # compose: a local Hugging Face VLM folder...
    vae_path: str | None = None  # ...and a local diffusers AutoencoderKL folder
    vae_subfolder: str | None = None
    vae_image_size: int = 512
    head: dict[str, Any] = field(default_factory=dict)  # PixArtTransformer2DModel overrides
    bridge: dict[str, Any] = field(default_factory=dict)  # LatentBridge overrides
    # Where the restoration flow starts: noise (the paper) or noise around the degraded latent.
    flow_source: FlowSource = "noise"
    tiny: dict[str, Any] | None = None  # TinyModelConfig fields: a small model built in code
    dtype: str = "auto"
    load_in_4bit: bool = False
    trainable_parts: list[Literal[PARTS]] | None = None  # None: the stage's default (sft: llm, head, bridge)
    lora: LoraSettings | None = None

    def __post_init__(self) -> None:
        sources = [
            self.path is not None,
            self.vlm_path is not None or self.vae_path is not None,
            self.tiny is not None,
        ]
        if sum(sources) != 1:
            raise ValueError("set exactly one of model.path, model.vlm_path + model.vae_path, or model.tiny")
        if (self.vlm_path is None) != (self.vae_path is None):
            raise ValueError("model.vlm_path and model.vae_path go together")
        registry.check_backbone(self.backbone)
        if self.backbone not in (registry.AUTO, BUILT_IN_CODE) and self.path is None:
            raise ValueError(
                f"model.backbone: {self.backbone} loads a saved folder of its own: set model.path"
            )
        if self.preset is not None and self.preset not in registry.preset_names():
            raise ValueError(
                f"model.preset must be one of {list(registry.preset_names())}, got {self.preset!r}"
            )
        if self.preset is not None and self.path is None:
            raise ValueError("model.preset sets a BAGEL-family folder's inference values: set model.path")
        if self.tags == "text" and self.path is None:
            raise ValueError(
                "model.tags: text is how a BAGEL-family folder may write its tags: set model.path"
            )


@dataclass
class DataConfig:
    """The prepared dataset a stage trains on (a `save_to_disk` folder from `clear-rl prepare`).

    `stage: align` needs images only: a folder of image files, a `save_to_disk` dataset, or a
    VLMEvalKit TSV; `image_column` names the column (default: `clean_image`, else `image`).
    """

    path: str
    split: str = "train"
    eval_split: str | None = None
    max_samples: int | None = None
    system_prompt: str | None = SYSTEM_PROMPT
    image_column: str | None = None


@dataclass
class Recipe:
    """A validated recipe."""

    stage: str
    model: ModelConfig
    data: DataConfig
    training: Any  # the stage's CONFIG_CLASS instance
    rewards: list[Any] = field(default_factory=list)  # RewardSpec list (stage 3)
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the merged YAML, overrides applied
    # Start over in an output folder that holds a run (`clear-rl train --overwrite`, see runs.py).
    overwrite: bool = False

    def resolved_raw(self) -> dict[str, Any]:
        """The merged recipe with reward plugins given by file under their absolute paths: the
        same plugins load from wherever the copy is used."""
        raw = copy.deepcopy(self.raw)
        for spec in self.rewards:
            entry = raw["rewards"][spec.position] if spec.position is not None else None
            if isinstance(entry, dict) and entry.get("path") is not None and spec.path is not None:
                entry["path"] = spec.path  # absolute once parsed, for a file; a dotted path as given
        return raw

    def save_resolved(self, output_dir: str | os.PathLike) -> Path:
        """Write the merged recipe (`resolved_raw`) beside the outputs, so a run can be reproduced
        exactly."""
        path = Path(output_dir) / RESOLVED_RECIPE_NAME
        header = f"# resolved by clear-rl {__version__} from {self.source}\n"
        write_text(path, header + yaml.safe_dump(self.resolved_raw(), sort_keys=False))
        return path


# -- overrides --------------------------------------------------------------------------------
class _RecipeLoader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false. YAML 1.1 (PyYAML's default) reads `no`, `off`,
    `yes` and `on` as booleans, which would turn `save_strategy: no`, a TrainingArguments value,
    into False."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str) -> Any:
    """Parse recipe YAML (a file or an override's value) with 1.2 booleans."""
    return yaml.load(text, Loader=_RecipeLoader)


def apply_overrides(raw: dict[str, Any], overrides: list[str], where: str) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"{where}: override '{item}' is not of the form key.path=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise RecipeError(f"{where}: override '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        last = parts[-1]
        value = parse_yaml(text) if text.strip() else None
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"{where}: override '{key}' does not name a key")
    return raw


# -- validation -------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (numbers converted), or raise TypeError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object or isinstance(tp, (str, typing.ForwardRef)):
        return value  # unresolvable annotation: let the dataclass itself judge
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # `X | None`: X's own message says what is wrong
            return _coerce(value, options[0], where)
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except TypeError:
                continue
        raise TypeError(f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise TypeError(f"expected one of {list(args)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `2e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        valid = [e.value for e in tp]
        if isinstance(value, tp) or value in valid:
            return value
        raise TypeError(f"expected one of {valid}, got {value!r}")
    elif origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            item_tp = args[0] if args else Any
            return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return build_dataclass(tp, value, where)
    elif tp is type(None):
        if value is None:
            return None
    else:
        return value  # an annotation this checker does not model: left to the dataclass
    raise TypeError(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def check_mapping(schema: Schema, data: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """`data` checked against a dataclass's schema: renamed keys under their new names, values
    coerced; an unknown key (with a close match), a wrong type or a missing key is a RecipeError
    naming `where` (e.g. 'recipe.yaml: training') and the key."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = _renamed(schema.renames, data, where)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in schema.hints:
            close = difflib.get_close_matches(str(key), list(schema.hints), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"{where}.{key}: unknown key{hint}")
        try:
            values[key] = _coerce(value, schema.hints[key], f"{where}.{key}")
        except TypeError as exc:
            raise RecipeError(f"{where}.{key}: {exc}") from None
    missing = [name for name in schema.required if name not in values]
    if missing:
        raise RecipeError(f"{where}: missing required key(s) {', '.join(missing)}")
    return values


def build_dataclass(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    """Instantiate dataclass `cls` from `data`, naming `where` (e.g. 'recipe.yaml: training') in errors."""
    values = check_mapping(schema_of(cls), data, where)
    try:
        return cls(**values)
    except (ValueError, TypeError, ClearRLError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


def _renamed(renames: dict[str, str], data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` with keys renamed in this release (old -> new) under their new names, each with a
    deprecation message; an old and a new spelling together are an error."""
    if not any(key in renames for key in data):
        return data
    out = dict(data)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise RecipeError(f"{where}: '{old}' and '{new}' are the same setting; keep '{new}' only")
        message = f"{where}.{old} is deprecated and will be removed in the next release: use '{new}'"
        warnings.warn(message, FutureWarning, stacklevel=4)  # shown once; a log line would repeat it
        out[new] = out.pop(old)
    return out


def stage_module(stage: str):
    """The module implementing a stage (imported on demand: it pulls in TRL)."""
    if stage not in STAGES:
        raise RecipeError(f"unknown stage '{stage}'; valid stages: {list(STAGES)}")
    return importlib.import_module(STAGES[stage])


def _read(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The recipe file's mapping of sections, overrides applied, its sections and stage known."""
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    apply_overrides(raw, overrides, str(path))
    known = {"stage", "model", "data", "training", "rewards"}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"{path}: {key}: unknown section{hint}; sections: {sorted(known)}")
    if "stage" not in raw:
        raise RecipeError(f"{path}: missing required key 'stage' ({' | '.join(STAGES)})")
    if raw["stage"] not in STAGE_CONFIGS:
        raise RecipeError(f"{path}: stage: unknown stage {raw['stage']!r}; valid stages: {list(STAGES)}")
    if "data" not in raw:
        raise RecipeError(f"{path}: missing required section 'data'")
    return raw


def load_recipe(
    path: str | os.PathLike,
    overrides: list[str] | None = None,
    check_inputs: Callable[[Recipe], None] | None = None,
    overwrite: bool = False,
) -> Recipe:
    """Read, override and validate a recipe file.

    Everything but the values of `training:` is checked before TRL is imported (see
    `recipe_schema`), so a wrong key, type or section is refused in well under a second; with
    `check_inputs=clear_rl.preflight.check_inputs`, so are missing files, data and model folders,
    weights files, reward plugins and the output folder (the check is passed in: preflight reads
    recipes, so the recipe does not import it). Then the stage's config class is built,
    which checks the values themselves. `overwrite`: the run may start over in an output folder
    that holds a run (`runs.py`).
    """
    path = Path(path)
    raw = _read(path, list(overrides or []))
    stage = raw["stage"]
    model = build_dataclass(ModelConfig, raw.get("model"), f"{path}: model")
    data = build_dataclass(DataConfig, raw.get("data"), f"{path}: data")
    where = f"{path}: training"
    training = check_mapping(stage_schema(stage), raw.get("training"), where)
    if not training.get("output_dir"):
        raise RecipeError(
            f"{where}.output_dir: missing; name the folder that receives the checkpoints, the model "
            f"and {RESOLVED_RECIPE_NAME} (e.g. training.output_dir=outputs/{stage})"
        )
    rewards = []
    if raw.get("rewards"):
        if stage != "grpo":
            raise RecipeError(f"{path}: rewards: only the grpo stage uses rewards")
        if training.get("reward_weights") is not None:
            raise RecipeError(f"{where}.reward_weights: give weights in the rewards: list instead")
        from clear_rl.rewards import parse_reward_specs

        rewards = parse_reward_specs(raw["rewards"], base_dir=path.parent)
    elif stage == "grpo":
        raise RecipeError(f"{path}: the grpo stage needs a `rewards:` section")
    recipe = Recipe(stage, model, data, None, rewards, source=path, raw=raw, overwrite=overwrite)
    if check_inputs is True:  # the former flag: the check itself is passed now
        raise TypeError(
            "load_recipe(check_inputs=...) takes the check itself: clear_rl.preflight.check_inputs"
        )
    if check_inputs is not None:
        check_inputs(recipe)
    recipe.training = build_dataclass(config_class(stage), training, where)
    return recipe
