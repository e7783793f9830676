"""Reward plugins: the recipe's `rewards:` list -> TRL reward functions and their weights.

A recipe lists rewards by built-in name, by file path or by dotted path; other keys are keyword
parameters bound to the function:

    rewards:
      - {name: accuracy, weight: 0.75}
      - {name: decision, weight: 0.15, matrix: paper}
      - {path: my_rewards.py:brevity, weight: 0.05}     # file (relative to the recipe, else cwd)
      - {path: mypkg.rewards.brevity, weight: 0.05}     # dotted path of an importable module

Each function follows TRL's contract `fn(prompts, completions, **kwargs) -> list[float | None]`.
The wrapper TRL receives checks what the function returns, passes only the keywords it accepts
(when it has no **kwargs), and turns any failure into a RewardError that names the plugin and
the completion that broke it. Built-in `name` is the function `<name>_reward` of the module
`clear_rl.rewards.builtin.<name>` (the top-level `rewards/` folder, see pyproject.toml), imported
by name; a user's file is imported from its path, a dotted path by name.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import pkgutil
import sys
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from clear_rl.errors import ClearRLError, RewardError
from clear_rl.rewards.helpers import completion_text

CALL_ARGUMENTS = ("prompts", "completions")
BUILTIN_PACKAGE = "clear_rl.rewards.builtin"
# A built-in's function is named for its module plus this suffix, as TRL names its own
# (`accuracy_reward`): `format_reward`, not a `format` that shadows the builtin.
BUILTIN_SUFFIX = "_reward"
_loaded_files: dict[Path, ModuleType] = {}


def builtin_reward_names() -> list[str]:
    """Names usable as `name:` in a recipe: the modules of `clear_rl.rewards.builtin`."""
    package = importlib.import_module(BUILTIN_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


@dataclass(frozen=True)
class RewardSpec:
    """One entry of a recipe's `rewards:` list; `path` is absolute once parsed from a file path."""

    name: str | None = None
    path: str | None = None
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    position: int | None = None

    @property
    def label(self) -> str:
        """The name TRL logs the reward under: the built-in name, else the function's name."""
        if self.name is not None:
            return self.name
        return _split_target(self.path or "")[1]

    @property
    def where(self) -> str:
        return f"{_place(self.position)} ({self.name or self.path})"


def _place(position: int | None) -> str:
    """How messages name a recipe entry: `rewards[2]`, or `reward` for one given on its own."""
    return f"rewards[{position}]" if position is not None else "reward"


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _split_target(path: str) -> tuple[str, str]:
    """'dir/f.py:fn' -> ('dir/f.py', 'fn'); 'f.py' -> ('f.py', 'f'); 'pkg.mod.fn' -> ('pkg.mod', 'fn')."""
    target, colon, function = path.rpartition(":")
    if colon and function and not function.startswith(("/", "\\")):
        return target, function
    if _is_file_target(path):
        return path, Path(path).stem
    module, _, function = path.rpartition(".")
    return module, function


def _resolve_file(target: str, base_dir: Path | None, where: str) -> Path:
    candidates = (
        [Path(target)] if os.path.isabs(target) else [d / target for d in (base_dir, Path.cwd()) if d]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise RewardError(f"{where}: reward file {target!r} not found (looked at {[str(c) for c in candidates]})")


def parse_reward_spec(
    entry: Any, position: int | None = None, base_dir: str | os.PathLike | None = None
) -> RewardSpec:
    """One recipe entry (a mapping, or a bare built-in name) -> RewardSpec; RewardError says what is wrong."""
    where = _place(position)
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping):
        raise RewardError(
            f"{where}: expected a mapping such as {{name: accuracy, weight: 0.75}}, got {entry!r}"
        )
    params = {str(k): v for k, v in entry.items() if k not in ("name", "path", "weight")}
    name, path = entry.get("name"), entry.get("path")
    if (name is None) == (path is None):
        raise RewardError(
            f"{where}: give exactly one of `name:` (built-ins: {', '.join(builtin_reward_names())}) "
            f"or `path:` (file.py:function or package.module.function), got {dict(entry)}"
        )
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise RewardError(f"{where}: weight must be a finite number, got {weight!r}")
    if name is not None:
        known = builtin_reward_names()
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RewardError(
                f"{where}: unknown built-in reward {name!r}{hint}; built-ins: {', '.join(known)}. "
                "For your own function use `path: file.py:function`."
            )
        return RewardSpec(name=name, weight=float(weight), params=params, position=position)
    if not isinstance(path, str) or not path.strip():
        raise RewardError(f"{where}: path must be text such as my_rewards.py:brevity, got {path!r}")
    target, function = _split_target(path.strip())
    if not target or not function:
        raise RewardError(f"{where}: cannot read {path!r} as file.py:function or package.module.function")
    if _is_file_target(target):
        resolved = _resolve_file(target, Path(base_dir) if base_dir else None, f"{where} ({path})")
        path = f"{resolved}:{function}"
    return RewardSpec(path=path.strip(), weight=float(weight), params=params, position=position)


def parse_reward_specs(entries: Sequence[Any], base_dir: str | os.PathLike | None = None) -> list[RewardSpec]:
    """The recipe's `rewards:` list -> RewardSpecs (file paths resolved against `base_dir`, then cwd)."""
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence) or not entries:
        raise RewardError(f"rewards: expected a non-empty list of rewards, got {entries!r}")
    return [parse_reward_spec(entry, i, base_dir) for i, entry in enumerate(entries)]


def _load_file(file: Path, where: str) -> ModuleType:
    """Import a user's plugin file once, under a module name of its own (its stem and a hash of
    its path, so that two `rewards.py` of different folders do not collide)."""
    if file in _loaded_files:
        return _loaded_files[file]
    module_name = f"_clear_rl_reward_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise RewardError(f"{where}: {file} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickle look plugins up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise RewardError(f"{where}: importing {file} failed: {type(exc).__name__}: {exc}") from exc
    _loaded_files[file] = module
    return module


def _import_module(name: str, where: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RewardError(f"{where}: cannot import module {name!r}: {exc}") from exc
    except Exception as exc:
        raise RewardError(f"{where}: importing module {name!r} failed: {type(exc).__name__}: {exc}") from exc


def resolve_function(spec: RewardSpec) -> Callable[..., Any]:
    """Import the function a spec names; RewardError names the missing file, module or function."""
    if spec.name is not None:  # a built-in: module clear_rl.rewards.builtin.<name>, function <name>_reward
        target, function_name = f"{BUILTIN_PACKAGE}.{spec.name}", spec.name + BUILTIN_SUFFIX
    else:
        target, function_name = _split_target(spec.path or "")
    if _is_file_target(target):
        module = _load_file(Path(target), spec.where)
    else:
        module = _import_module(target, spec.where)
    function = getattr(module, function_name, None)
    if not callable(function):
        defined = sorted(
            n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
        )
        raise RewardError(f"{spec.where}: {target} has no function {function_name!r}; it defines {defined}")
    return function


# How one reward call goes, written once for plugins of both kinds (LoadedReward._plan): a
# generator that yields the keyword arguments of each plugin call it wants, is sent back
# (values, None) or (None, exception), and returns the checked values. The two __call__ methods
# only make those calls: LoadedReward's directly, AsyncLoadedReward's awaiting each.
_CallPlan = Generator[dict[str, Any], tuple[Any, Exception | None], list[float | None]]


class LoadedReward:
    """A plugin function made ready for TRL: named, parameters bound, output checked, errors located."""

    def __init__(self, spec: RewardSpec, function: Callable[..., Any]):
        self.spec = spec
        self.function = function
        self.__name__ = self.__qualname__ = spec.label
        signature = inspect.signature(function)
        parameters = signature.parameters.values()
        self._takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters)
        self._named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self._required = [
            p.name
            for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is p.empty
            and p.name not in CALL_ARGUMENTS
        ]
        if "completions" not in self._named and not self._takes_any_keyword:
            raise RewardError(
                f"{spec.where}: {function.__name__}{signature} must accept `completions` (TRL's contract)"
            )
        accepted = sorted(self._named - set(CALL_ARGUMENTS))
        unknown = sorted(set(spec.params) - set(accepted))
        if unknown:
            raise RewardError(
                f"{spec.where}: unknown parameter(s) {unknown} for {function.__name__}; it accepts {accepted}"
            )

    def __repr__(self) -> str:
        return f"LoadedReward({self.spec.where}, weight={self.spec.weight})"

    def __reduce__(self):
        # Plugins loaded from files are not importable by name: re-load from the spec instead.
        return (load_reward, (self.spec,))

    def _arguments(self, prompts: Any, completions: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
        given = {"prompts": prompts, "completions": completions, **batch}
        if not self._takes_any_keyword:
            given = {k: v for k, v in given.items() if k in self._named}
        given.update(self.spec.params)
        missing = [name for name in self._required if name not in given]
        if missing:
            raise RewardError(
                f"{self.spec.where}: {self.__name__} needs keyword(s) {missing}, which neither this batch nor the "
                f"recipe provides; the batch has {sorted(batch)}"
            )
        return given

    def _per_row(self, arguments: Mapping[str, Any], count: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Each completion's own arguments: every list as long as the batch, cut to that row."""
        for row in range(count):
            yield (
                row,
                {
                    k: v[row : row + 1] if isinstance(v, (list, tuple)) and len(v) == count else v
                    for k, v in arguments.items()
                },
            )

    def _failure(self, exc: Exception, row: int | None, completions: Sequence[Any]) -> RewardError:
        if isinstance(exc, ClearRLError):  # a plugin's own error (or the judge's) already says what is wrong
            return RewardError(f"{self.spec.where}: {exc}")
        cause = f"{type(exc).__name__}: {exc}"
        if row is None:
            return RewardError(
                f"{self.spec.where} raised on a batch of {len(completions)} completions: {cause}"
            )
        try:
            shown = completion_text(completions[row])[:80]
        except TypeError:
            shown = str(completions[row])[:80]
        return RewardError(
            f"{self.spec.where} raised on completion {row} of {len(completions)} ({shown!r}): {cause}"
        )

    def _plan(self, prompts: Any, completions: Sequence[Any], batch: Mapping[str, Any]) -> _CallPlan:
        """Call on the whole batch; when that raises (other than a ClearRLError, which already says
        what is wrong), call row by row so that the RewardError names the completion that breaks."""
        arguments = self._arguments(prompts, completions, batch)
        values, error = yield arguments
        if error is None:
            return check_reward_values(values, len(completions), self.spec.where)
        if not isinstance(error, ClearRLError):
            for row, row_arguments in self._per_row(arguments, len(completions)):
                _, row_error = yield row_arguments
                if row_error is not None:
                    raise self._failure(row_error, row, completions) from row_error
        raise self._failure(error, None, completions) from error

    def __call__(
        self, prompts: Any = None, completions: Sequence[Any] = (), **batch: Any
    ) -> list[float | None]:
        plan, outcome = self._plan(prompts, completions, batch), None
        try:
            while True:
                arguments = plan.send(outcome)
                try:
                    outcome = (self.function(**arguments), None)
                except Exception as exc:
                    outcome = (None, exc)
        except StopIteration as done:
            return done.value


class AsyncLoadedReward(LoadedReward):
    """The same for `async def` plugins (an LLM judge, say); TRL awaits these concurrently."""

    async def __call__(
        self, prompts: Any = None, completions: Sequence[Any] = (), **batch: Any
    ) -> list[float | None]:
        plan, outcome = self._plan(prompts, completions, batch), None
        try:
            while True:
                arguments = plan.send(outcome)
                try:
                    outcome = (await self.function(**arguments), None)
                except Exception as exc:
                    outcome = (None, exc)
        except StopIteration as done:
            return done.value


def check_reward_values(values: Any, count: int, where: str) -> list[float | None]:
    """A plugin's output as TRL needs it: `count` finite floats or None.

    NaN is an error, not None: it is what a reward computes when something went wrong (0 / 0,
    a failed parse turned float), and taking it for "not scored" would hide that. A reward that
    does not score a completion returns None for it."""
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()  # a torch tensor or numpy array
    if not isinstance(values, (list, tuple)):
        raise RewardError(
            f"{where} returned {type(values).__name__}; expected a list of {count} numbers (or None)"
        )
    if len(values) != count:
        raise RewardError(
            f"{where} returned {len(values)} values for {count} completions (expected {count}, got {len(values)})"
        )
    checked: list[float | None] = []
    for row, value in enumerate(values):
        if value is not None and hasattr(value, "item") and not isinstance(value, numbers.Real):
            value = value.item()  # a 0-d tensor or numpy scalar
        if value is None:
            checked.append(None)
        elif isinstance(value, numbers.Real) and math.isnan(value):
            raise RewardError(
                f"{where} returned NaN for completion {row} of {count}; return None for a completion "
                "it does not score"
            )
        elif isinstance(value, numbers.Real) and math.isfinite(value):
            checked.append(float(value))
        else:
            raise RewardError(
                f"{where} returned {value!r:.60} for completion {row}: not a finite number or None"
            )
    return checked


def _dry_run(reward: LoadedReward) -> None:
    """Call a plugin on an empty batch so that its own parameter checks (a RewardError, or the
    judge's missing configuration) fail when the recipe loads, not at the first training step.
    Any other exception is ignored: the plugin may simply not expect an empty batch."""
    empty = {name: [] for name in reward._required}
    try:
        reward.function(**reward._arguments([], [], empty))
    except ClearRLError as exc:
        raise reward._failure(exc, None, []) from exc
    except Exception:
        pass


def load_reward(spec: RewardSpec) -> LoadedReward:
    """The TRL-ready callable for one spec, its parameters checked by a dry run on an empty batch."""
    function = resolve_function(spec)
    if inspect.iscoroutinefunction(function):
        return AsyncLoadedReward(spec, function)
    reward = LoadedReward(spec, function)
    _dry_run(reward)
    return reward


def load_rewards(
    entries: Sequence[Any], base_dir: str | os.PathLike | None = None
) -> tuple[list[LoadedReward], list[float]]:
    """Recipe entries (or RewardSpecs) -> (reward functions for GRPOTrainer, GRPOConfig.reward_weights).

    Functions sharing a label are renamed `label_2`, `label_3`, ... so TRL logs them apart.
    """
    if entries and all(isinstance(e, RewardSpec) for e in entries):
        specs = list(entries)
    else:
        specs = parse_reward_specs(entries, base_dir)
    rewards = [load_reward(spec) for spec in specs]
    seen: dict[str, int] = {}
    for reward in rewards:
        seen[reward.__name__] = seen.get(reward.__name__, 0) + 1
        if seen[reward.__name__] > 1:
            reward.__name__ = reward.__qualname__ = f"{reward.__name__}_{seen[reward.__name__]}"
    return rewards, [spec.weight for spec in specs]
