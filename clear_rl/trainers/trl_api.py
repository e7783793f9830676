"""The private TRL and transformers trainer API that stage 3 builds on, checked when it is imported.

`InterleavedGRPOTrainer` overrides private `GRPOTrainer` methods (and private `transformers.Trainer`
methods GRPOTrainer inherits), calls them through `super()` and reads attributes TRL sets. A release
that renames one or changes its parameters would break stage 3 with an AttributeError or TypeError
deep inside a run, hours in; `check_grpo_api` turns that into one error at import that names the
installed versions and the range clear-rl is tested with (read from clear-rl's own requirements, so
pyproject.toml stays the one place that states it).

TRL lists the multimodal inputs its scoring pass takes only as keyword parameters of
`_get_per_token_logps_and_entropies`; `multimodal_keys` reads them from there instead of a copy.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from packaging.requirements import Requirement
from trl import GRPOTrainer

from clear_rl.errors import DependencyError


@dataclass(frozen=True)
class Expected:
    """The parameters clear-rl relies on (after `self`).

    `parameters`: the leading ones, in order (clear-rl passes them positionally, or TRL calls the
    override with them). `keywords`: further names that must be accepted. `more`: other parameters
    may follow, each with a default (clear-rl forwards them through `**kwargs`); without it the
    parameter list must be exactly `parameters`.
    """

    parameters: tuple[str, ...]
    keywords: tuple[str, ...] = ()
    more: bool = False


# The arguments clear-rl passes to TRL's scoring pass; the rest of its parameters are multimodal inputs.
SCORING_PARAMETERS = (
    "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy",
    "compute_aux_loss",
)  # fmt: skip

# GRPOTrainer methods (its own, or transformers.Trainer's that it inherits) that stage 3 overrides.
GRPO_METHODS: dict[str, Expected] = {
    "__init__": Expected(
        (), ("model", "reward_funcs", "args", "train_dataset", "processing_class", "rollout_func"), more=True
    ),
    "_get_per_token_logps_and_entropies": Expected(SCORING_PARAMETERS, more=True),
    "_calculate_rewards": Expected(("inputs", "prompts", "completions", "completion_ids_list")),
    "_generate_and_score_completions": Expected(("inputs",)),
    "_compute_loss": Expected(("model", "inputs")),
    "_save_rng_state": Expected(("output_dir",)),
    "_load_rng_state": Expected(("checkpoint",)),
    "_save_checkpoint": Expected(("model", "trial")),
    "_save": Expected(("output_dir", "state_dict")),
    "_load_from_checkpoint": Expected(("resume_from_checkpoint", "model")),
}

# TRL helpers stage 3 calls, by module.
HELPERS: dict[str, dict[str, Expected]] = {
    "trl.models.utils": {
        "disable_gradient_checkpointing": Expected(("model", "gradient_checkpointing_kwargs"), more=True),
        "unwrap_model_for_generation": Expected(
            ("model", "accelerator"), ("gather_deepspeed3_params",), more=True
        ),
    },
    "trl.trainer.utils": {
        "entropy_from_logits": Expected(("logits",), more=True),
        "selective_log_softmax": Expected(("logits", "index"), ("temperature",), more=True),
        "use_adapter": Expected(("model",), ("adapter_name",), more=True),
    },
}

# Attributes GRPOTrainer.__init__ sets that stage 3 reads or writes (resume state, metrics, stops).
GRPO_ATTRIBUTES = (
    "_buffered_inputs", "_step", "_metrics", "num_iterations", "eos_token_ids", "temperature",
    "ref_model", "beta",
)  # fmt: skip


def _parameters(function: Callable) -> list[inspect.Parameter]:
    params = list(inspect.signature(function).parameters.values())
    return params[1:] if params and params[0].name == "self" else params


def _mismatch(function: Callable, expected: Expected) -> str | None:
    """Why `function`'s parameters break what clear-rl relies on, or None when they do not."""
    params = _parameters(function)
    names = [p.name for p in params]
    variadic = {p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    found = f"found ({', '.join(str(p) for p in params)})"
    if names[: len(expected.parameters)] != list(expected.parameters):
        return f"expected its parameters to start with ({', '.join(expected.parameters)}), {found}"
    missing = [k for k in expected.keywords if k not in names]
    if missing:
        return f"expected the parameter(s) {', '.join(missing)}, {found}"
    rest = [p for p in params if p.name not in expected.parameters and p.name not in expected.keywords]
    if not expected.more and [p for p in rest if p.name not in variadic]:
        return f"expected exactly ({', '.join(expected.parameters)}), {found}"
    required = [p.name for p in rest if p.name not in variadic and p.default is p.empty]
    if required:
        return f"new required parameter(s) {', '.join(required)}, {found}"
    return None


def _owner(trainer: type, name: str) -> str:
    """The package whose class in `trainer`'s MRO defines `name` (trl, or transformers for Trainer's)."""
    for cls in trainer.__mro__:
        if name in vars(cls):
            return cls.__module__.split(".")[0]
    return "trl"


def declared_range(package: str) -> str:
    """The version range of `package` clear-rl declares (its installed metadata), e.g. '>=1.16,<1.17'."""
    try:
        requirements = importlib.metadata.requires("clear-rl") or []
    except importlib.metadata.PackageNotFoundError:
        return "(see pyproject.toml)"
    for line in requirements:
        requirement = Requirement(line)
        if requirement.name == package and requirement.marker is None:
            specs = sorted(requirement.specifier, key=lambda s: (not s.operator.startswith(">"), s.version))
            return ",".join(str(s) for s in specs)
    return "(see pyproject.toml)"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _raise(problems: list[tuple[str, str]]) -> None:
    packages = sorted({package for package, _ in problems})
    ranges = [f"{p}{declared_range(p)}" for p in packages]
    lines = "\n".join(f"  - {problem}" for _, problem in problems)
    installed = ", ".join(f"{p} {_version(p)}" for p in packages)
    raise DependencyError(
        f"stage 3 (Interleaved GRPO) overrides private trainer methods of TRL and transformers, and the "
        f"installed {installed} differ from what clear-rl was tested with:\n{lines}\n"
        f"clear-rl is tested with {' and '.join(ranges)}: install "
        f"{' '.join(repr(r) for r in ranges)} (or `make install`, the exact tested set in requirements.lock)."
    )


def check_grpo_api(trainer: type = GRPOTrainer) -> None:
    """Raise a `DependencyError` naming every method or helper stage 3 relies on that `trainer`
    (TRL's GRPOTrainer) or TRL's modules no longer provide with the parameters clear-rl uses."""
    problems = []
    for name, expected in GRPO_METHODS.items():
        function = getattr(trainer, name, None)
        if function is None:
            problems.append(("trl", f"{trainer.__name__}.{name}: not defined"))
            continue
        why = _mismatch(function, expected)
        if why:
            problems.append((_owner(trainer, name), f"{trainer.__name__}.{name}: {why}"))
    for module_name, helpers in HELPERS.items():
        module = importlib.import_module(module_name)
        for name, expected in helpers.items():
            function = getattr(module, name, None)
            why = "not defined" if function is None else _mismatch(function, expected)
            if why:
                problems.append(("trl", f"{module_name}.{name}: {why}"))
    if problems:
        _raise(problems)


def check_grpo_attributes(trainer: object) -> None:
    """After GRPOTrainer.__init__: the attributes stage 3 reads exist (else the first checkpoint
    save, hours in, would be the first to notice)."""
    missing = [name for name in GRPO_ATTRIBUTES if not hasattr(trainer, name)]
    if missing:
        _raise([("trl", f"GRPOTrainer instances: no attribute(s) {', '.join(missing)}")])


def multimodal_keys(trainer: type = GRPOTrainer) -> tuple[str, ...]:
    """The multimodal inputs TRL's scoring pass takes (`pixel_values`, `image_grid_thw`, ...):
    the parameters of `_get_per_token_logps_and_entropies` beyond `SCORING_PARAMETERS`."""
    params = _parameters(trainer._get_per_token_logps_and_entropies)
    return tuple(
        p.name
        for p in params
        if p.name not in SCORING_PARAMETERS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
