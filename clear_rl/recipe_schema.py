"""The keys of a recipe section, and the `training:` keys of each stage known without TRL.

A section's schema is what a recipe check needs of its dataclass: each key's type, the keys
that must be given, and keys renamed in this release. A stage's `training:` dataclass is a TRL /
transformers config class whose import takes seconds (torch, peft, transformers), so its schema
is also kept in a cache file, keyed by the versions of clear-rl, TRL and transformers and by the
source of clear-rl's config modules: from the second run on, a recipe's `training:` keys are
checked in milliseconds. The config class still builds (and checks the values of) the config
before any model loads; the cache only lets a wrong key or type be refused first.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

# Stage name -> "module:Class" of its `training:` dataclass (each trainer module's CONFIG_CLASS).
STAGE_CONFIGS: dict[str, str] = {
    "align": "clear_rl.trainers.align_config:AlignConfig",
    "sft": "clear_rl.trainers.sft_config:ClearSFTConfig",
    "bridge": "clear_rl.trainers.bridge_stage_config:BridgeStageConfig",
    "grpo": "clear_rl.trainers.grpo_config:InterleavedGRPOConfig",
}
_CONFIG_SOURCES = (
    "arguments.py",
    "align_config.py",
    "sft_config.py",
    "bridge_stage_config.py",
    "grpo_config.py",
)
_FORMAT = 1


@dataclass(frozen=True)
class Schema:
    """What checking a mapping against a dataclass needs: key -> type, required keys, renames."""

    hints: dict[str, Any]
    required: tuple[str, ...]
    renames: dict[str, str]  # old key -> new key, accepted with a deprecation message


def schema_of(cls: type) -> Schema:
    """The schema of dataclass `cls`: its init fields, those without a default, and the
    `renamed_keys` of every class in its MRO (each class names only its own renames)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # forward references to optional packages: those keys go unchecked
        hints = {}
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = tuple(
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    renames: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        renames.update(vars(klass).get("renamed_keys", {}))
    # Init-only variables are keys too, left to the class to judge: a removed key that the class
    # refuses with a message saying what to do instead (InterleavedGRPOConfig.restoration_sampler).
    init_only = {name: Any for name, tp in hints.items() if isinstance(tp, dataclasses.InitVar)}
    return Schema({**{f.name: hints.get(f.name, Any) for f in fields}, **init_only}, required, renames)


def config_class(stage: str) -> type:
    """The `training:` dataclass of a stage (imports TRL: seconds)."""
    module, _, name = STAGE_CONFIGS[stage].partition(":")
    return getattr(importlib.import_module(module), name)


def stage_schema(stage: str) -> Schema:
    """The schema of a stage's `training:` section, from the cache when it has it."""
    path = _cache_file(stage)
    cached = _read_cache(path)
    if cached is not None:
        return cached
    schema = schema_of(config_class(stage))
    document = {
        "format": _FORMAT,
        "hints": {name: _encode(tp) for name, tp in schema.hints.items()},
        "required": list(schema.required),
        "renames": schema.renames,
    }
    try:
        from clear_rl.io.atomic import write_text

        write_text(path, json.dumps(document) + "\n")
    except OSError as exc:  # a read-only home: every run imports TRL first, nothing else changes
        logger.debug("cannot cache the %s recipe schema at %s: %s", stage, path, exc)
    return schema


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/clear-rl` (default `~/.cache/clear-rl`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clear-rl"


def _cache_file(stage: str) -> Path:
    from clear_rl import __version__

    versions = [__version__]
    for package in ("trl", "transformers"):
        try:
            versions.append(importlib.metadata.version(package))
        except importlib.metadata.PackageNotFoundError:
            versions.append("-")
    digest = hashlib.sha256("|".join([STAGE_CONFIGS[stage], *versions]).encode())
    folder = Path(__file__).parent / "trainers"
    for name in _CONFIG_SOURCES:
        digest.update((folder / name).read_bytes())
    return cache_dir() / f"schema-{stage}-{digest.hexdigest()[:16]}.json"


def _read_cache(path: Path) -> Schema | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != _FORMAT:
            return None
        hints = {name: _decode(spec) for name, spec in document["hints"].items()}
        return Schema(hints, tuple(document["required"]), dict(document["renames"]))
    except (OSError, ValueError, KeyError, TypeError):  # absent, torn or foreign: rebuild it
        return None


# -- annotations <-> JSON -----------------------------------------------------------------------
# Only what the recipe check reads: enums become the Literal of their values (what a YAML file
# can give), and anything else the check does not model becomes Any (the class judges it).
_SCALARS: dict[str, Any] = {"bool": bool, "int": int, "float": float, "str": str, "dict": dict}


def _encode(tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and tp.__name__ in _SCALARS and _SCALARS[tp.__name__] is tp:
        return tp.__name__
    if origin in (typing.Union, types.UnionType):
        return {"union": [_encode(a) for a in args]}
    if origin is Literal and all(isinstance(a, (str, int, float, bool, type(None))) for a in args):
        return {"literal": list(args)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"literal": [e.value for e in tp]}
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        return {"list": _encode(args[0]) if args else "any"}
    if origin is dict:
        return "dict"
    return "any"


def _decode(spec: Any) -> Any:
    if spec == "null":
        return type(None)
    if isinstance(spec, str):
        return _SCALARS.get(spec, Any)
    if "union" in spec:
        return typing.Union[tuple(_decode(s) for s in spec["union"])]  # noqa: UP007 -- built at run time
    if "literal" in spec:
        return Literal[tuple(spec["literal"])]
    if "list" in spec:
        return list[_decode(spec["list"])]
    raise ValueError(f"unknown schema entry {spec!r}")
