"""The backbone registry: each backbone is declared once, and every caller asks here by name or by folder.

A backbone (a unified model family: `composed`, `bagel`, or yours) is a `BackboneSpec`: its name, how
a folder of it is recognised and checked (from config files and safetensors headers, without importing
torch), how it loads and how a tiny one is built, which readbacks eval and the training pass support,
which training stages it runs, and its inference presets and how each writes the protocol tags. Its
parts and LoRA scopes are methods of its model (`part_patterns`, `lora_scopes`: models/backbone.py).

Loading (`models/io.py`), the folder checks (`models/weights.py`), the recipe and its preflight, eval's
`--backbone` / `--preset` choices and the trainers ask the registry; none of them names a backbone.

To add one without editing clear-rl, register it before the CLI parses its arguments: call
`register(BackboneSpec(...))` from your code, or name a module (or a `BackboneSpec`) under the
`clear_rl.backbones` entry-point group of your package; CONTRIBUTING.md walks through it.

Importing this module imports no torch: the built-in declarations (models/composed/backbone.py,
models/bagel/backbone.py) import their heavy code inside the callables they register.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from clear_rl.choices import READBACKS, TRAINING_READBACKS
from clear_rl.errors import ClearRLError

if TYPE_CHECKING:
    from clear_rl.models.backbone import TrainableBackbone

AUTO = "auto"  # `model.backbone` / `--backbone`: recognise the folder
ENTRY_POINT_GROUP = "clear_rl.backbones"
# The built-in declarations (each module's `SPEC`), imported and registered on the first look-up.
BUILTIN_MODULES = ("clear_rl.models.composed.backbone", "clear_rl.models.bagel.backbone")
Stage = Literal["align", "sft", "bridge", "grpo"]


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone's declaration. The callables import their heavy code when called.

    - `detect(folder)`: whether a folder holds this backbone's own layout (config files only);
    - `check_folder(folder)`: its weights present and whole, from safetensors headers; raises a
      `models.weights.WeightsError` naming the file;
    - `load(folder, dtype=, load_in_4bit=, preset=, tags=)`: (model, processor), the model a
      `TrainableBackbone` (models/backbone.py) with `clear_rl_chat` set (models/chat.py);
    - `model_classes()`: the unified model class(es) its `load` returns (trainers find the model
      inside peft / DDP wrappers by them);
    - `build_tiny(folder, seed=)`: writes a small random folder `load` reads (tests, demos).
    """

    name: str
    detect: Callable[[Path], bool]
    check_folder: Callable[[Path], None]
    load: Callable[..., tuple[Any, Any]]
    model_classes: Callable[[], tuple[type, ...]]
    build_tiny: Callable[..., Path] | None = None
    description: str = ""
    # What eval may read a restoration back through, and what the training pass can replay.
    readbacks: tuple[str, ...] = READBACKS
    training_readbacks: tuple[str, ...] = TRAINING_READBACKS
    training_stages: tuple[Stage, ...] = ("sft", "bridge", "grpo")
    # Inference presets (`--preset`, `model.preset`) and the tags each writes; none: single tokens.
    presets: tuple[str, ...] = ()
    default_preset: str | None = None
    preset_tags: Mapping[str, str] = field(default_factory=dict)
    # An adapter folder trained on it holds no processor: the base folder's is used.
    processor_from_base: bool = False
    # Auto-detection order, lowest first: a layout that claims little (composed: any config.json) last.
    detect_order: int = 0
    # What a folder lacks to be this backbone, for the error of a forced `--backbone`.
    missing: Callable[[Path], str] | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name == AUTO:
            raise ClearRLError(f"a backbone needs a name other than {AUTO!r}")
        unknown = sorted(set(self.readbacks) - set(READBACKS)) + sorted(
            set(self.training_readbacks) - set(TRAINING_READBACKS)
        )
        if unknown:
            raise ClearRLError(
                f"backbone {self.name!r}: unknown readback(s) {unknown}; known: {list(READBACKS)}"
            )
        if self.presets and self.default_preset not in self.presets:
            raise ClearRLError(f"backbone {self.name!r}: default_preset must be one of {list(self.presets)}")
        if set(self.preset_tags) != set(self.presets):
            raise ClearRLError(f"backbone {self.name!r}: preset_tags must give the tags of every preset")

    def tags_of_preset(self, preset: str | None) -> str:
        """How this backbone writes the protocol tags under `preset` (None: its default): "tokens"
        for a backbone without presets."""
        if not self.presets:
            return "tokens"
        return self.preset_tags[preset or self.default_preset]


_SPECS: dict[str, BackboneSpec] = {}
_loaded = False


def register(spec: BackboneSpec, replace: bool = False) -> BackboneSpec:
    """Declare a backbone; a second one under a taken name is refused unless `replace`."""
    _ensure_loaded()
    if spec.name in _SPECS and not replace:
        raise ClearRLError(f"backbone {spec.name!r} is registered already (pass replace=True to replace it)")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forget a backbone (tests registering one of their own)."""
    _SPECS.pop(name, None)


def _ensure_loaded() -> None:
    """Register the built-ins, then the `clear_rl.backbones` entry points, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        spec = importlib.import_module(module).SPEC
        _SPECS.setdefault(spec.name, spec)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            value = point.load()
        except Exception as exc:  # a broken plug-in is named, not a traceback from argparse
            raise ClearRLError(
                f"backbone plug-in {point.value!r} ({ENTRY_POINT_GROUP}) failed to load: {exc}"
            ) from exc
        if isinstance(value, BackboneSpec) and _SPECS.get(value.name) is not value:
            register(value)  # a module registers itself on import; a spec is registered here


def backbone_names() -> tuple[str, ...]:
    """The registered backbones' names, in registration order."""
    _ensure_loaded()
    return tuple(_SPECS)


def specs() -> tuple[BackboneSpec, ...]:
    """Every registered backbone's declaration, in registration order."""
    _ensure_loaded()
    return tuple(_SPECS.values())


def backbone_choices() -> tuple[str, ...]:
    """`model.backbone` / `--backbone`: `auto` (recognise the folder) and every registered name."""
    return (AUTO, *backbone_names())


def preset_names() -> tuple[str, ...]:
    """Every registered backbone's inference presets (`model.preset` / `--preset`)."""
    _ensure_loaded()
    return tuple(dict.fromkeys(p for spec in _SPECS.values() for p in spec.presets))


def check_backbone(name: str) -> str:
    """The backbone name (or `auto`), checked; a ClearRLError names the valid ones."""
    if name != AUTO and name not in backbone_names():
        raise ClearRLError(f"unknown backbone {name!r}; valid backbones: {list(backbone_choices())}")
    return name


def get(name: str) -> BackboneSpec:
    """The declaration of a registered backbone."""
    check_backbone(name)
    if name == AUTO:
        raise ClearRLError("backbone 'auto' names no backbone: detect the folder's (registry.detect)")
    return _SPECS[name]


def detect(folder: str | Path) -> BackboneSpec | None:
    """The backbone whose layout `folder` holds (by `detect_order`), or None."""
    _ensure_loaded()
    folder = Path(folder)
    for spec in sorted(_SPECS.values(), key=lambda s: s.detect_order):
        if spec.detect(folder):
            return spec
    return None


def model_classes() -> tuple[type, ...]:
    """Every registered backbone's unified model classes (imports their code)."""
    _ensure_loaded()
    return tuple(cls for spec in _SPECS.values() for cls in spec.model_classes())


def spec_of(model: Any) -> BackboneSpec:
    """The declaration of a loaded unified model (not a wrapper: see `unified_core`)."""
    _ensure_loaded()
    # The most derived class wins: a backbone may build on another's model class.
    order = {cls: depth for depth, cls in enumerate(type(model).__mro__)}
    found = [
        (min(order[cls] for cls in spec.model_classes() if cls in order), spec)
        for spec in _SPECS.values()
        if any(cls in order for cls in spec.model_classes())
    ]
    if found:
        return min(found, key=lambda pair: pair[0])[1]
    raise ClearRLError(f"{type(model).__name__} is no registered backbone's model ({list(_SPECS)})")


def unified_core(model: Any) -> TrainableBackbone:
    """The unified model (of any registered backbone) inside peft / DDP / DeepSpeed wrappers."""
    from peft import PeftModel

    classes = model_classes()
    while not isinstance(model, classes):
        if isinstance(model, PeftModel):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        else:
            raise TypeError(f"expected a clear-rl unified model, got {type(model).__name__}")
    return model
