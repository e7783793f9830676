"""One output folder holds one run: which run a folder holds, and what a new run may do with it.

A training run is known by its recipe: the merged recipe (overrides applied, reward files by
absolute path) less the keys that only say where, how to continue and how long to train
(`training.output_dir`, `training.resume_from_checkpoint`, `training.max_steps`,
`training.num_train_epochs`), hashed: a run resumed with a longer schedule is the same run. A run folder records it in `clear_rl_run.json`
(with `finished` once the final model is saved) beside the `clear_rl_recipe.yaml` the run saves
when it starts, and every complete checkpoint's marker names it too. With that, before anything
is written or any heavy library is imported (`check_output_dir`, called by the preflight):

- a folder holding a finished run, another recipe's run, or checkpoints of this recipe's
  unfinished run is refused, naming what is there, unless the run resumes (this recipe's own
  checkpoints only) or `overwrite` is set, which clears the old checkpoints and model first;
- `resume_from_checkpoint: last` on this recipe's finished run raises `RunFinished` (the CLI says
  so and exits 0), unless the schedule was made longer, which continues it; a checkpoint written
  by another run is never resumed;
- an output folder equal to or inside one of the run's inputs (`model.path`, the VLM, the VAE,
  `data.path`) is refused: training would write over what it reads.

Nothing here imports torch, transformers or TRL.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clear_rl.errors import ClearRLError, RecipeError
from clear_rl.io.atomic import write_text
from clear_rl.recipe import RESOLVED_RECIPE_NAME, Recipe, parse_yaml

logger = logging.getLogger(__name__)

RUN_RECORD = "clear_rl_run.json"
# The file that makes `checkpoint-N/` complete: the main process writes it once every process has
# finished its part of Trainer's save (`trainers.common.UnifiedCheckpointMixin._save_checkpoint`).
CHECKPOINT_COMPLETE = "clear_rl_checkpoint_complete.json"
# transformers.trainer_utils.PREFIX_CHECKPOINT_DIR, spelled out: importing it loads torch.
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
# Keys that say where a run writes, how it continues and how long it trains, not what it trains.
WHERE_KEYS = ("output_dir", "resume_from_checkpoint")
LENGTH_KEYS = ("max_steps", "num_train_epochs")
LAST = ("last", "true")
# Files a finished run leaves at the top of its folder: the model's weights in any layout
# (composed, adapters, BAGEL's), sharded or not, and Trainer's arguments.
MODEL_FILE = re.compile(r".*\.safetensors(\.index\.json)?|pytorch_model.*\.bin|training_args\.bin")
INPUT_KEYS = (("model", "path"), ("model", "vlm_path"), ("model", "vae_path"), ("data", "path"))


class RunFinished(ClearRLError):
    """`resume_from_checkpoint: last` on a run that already finished: there is nothing to train."""


def is_last(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in LAST


# -- which run ---------------------------------------------------------------------------------
def identity(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: the merged recipe (as `Recipe.resolved_raw` gives it)
    without the keys of `WHERE_KEYS` and `LENGTH_KEYS`."""
    same = copy.deepcopy(dict(raw))
    training = same.get("training")
    if isinstance(training, dict):
        for key in (*WHERE_KEYS, *LENGTH_KEYS):
            training.pop(key, None)
    return same


def _length(raw: Mapping[str, Any]) -> dict[str, Any]:
    training = raw.get("training") or {}
    return {key: training.get(key) for key in LENGTH_KEYS}


def run_id(raw: Mapping[str, Any]) -> str:
    """A short hash of `identity(raw)`: equal for two invocations of the same run."""
    text = json.dumps(identity(raw), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> str:
    """'training.seed: 1 -> 2, ...': the keys in which two recipes' identities differ."""
    before, after = _flat(identity(old)), _flat(identity(new))
    keys = sorted(
        k for k in before.keys() | after.keys() if before.get(k, "<unset>") != after.get(k, "<unset>")
    )
    shown = [f"{k}: {before.get(k, '<unset>')!r} -> {after.get(k, '<unset>')!r}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


# -- what a folder holds ------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    """A small JSON record, or {} when it is missing or torn (a killed write)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def checkpoint_run(checkpoint: Path) -> str | None:
    """The run a checkpoint belongs to, from its completion marker (None: incomplete, or written
    by a clear-rl that did not record runs)."""
    return read_json(checkpoint / CHECKPOINT_COMPLETE).get("run")


def checkpoints(folder: Path) -> list[Path]:
    """The `checkpoint-N` folders of a run folder, newest (highest N) first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_PATTERN.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.fullmatch(p.name)[1]), reverse=True)


@dataclass
class FolderState:
    """What an output folder holds, read from its records and names only."""

    folder: Path
    run: str | None = None  # the run recorded there (its record, else its saved recipe)
    recipe: dict[str, Any] | None = None  # that run's saved recipe
    finished: bool = False
    global_step: int | None = None
    checkpoints: list[Path] = field(default_factory=list)
    model_files: list[str] = field(default_factory=list)

    @property
    def has_outputs(self) -> bool:
        return bool(self.checkpoints or self.model_files or self.finished)

    def describe(self) -> str:
        if self.finished:
            step = f" at step {self.global_step}" if self.global_step is not None else ""
            return f"a finished run (model saved{step})"
        if self.checkpoints:
            return f"an unfinished run ({', '.join(p.name for p in self.checkpoints[:3])})"
        return "an unfinished run (no checkpoint yet)"


def read_folder(folder: str | os.PathLike) -> FolderState:
    """The state of `folder` (empty when it does not exist)."""
    folder = Path(folder)
    state = FolderState(folder)
    if not folder.is_dir():
        return state
    record = read_json(folder / RUN_RECORD)
    saved = folder / RESOLVED_RECIPE_NAME
    if saved.is_file():
        with contextlib.suppress(OSError, yaml.YAMLError):
            loaded = parse_yaml(saved.read_text(encoding="utf-8"))
            state.recipe = loaded if isinstance(loaded, dict) else None
    state.run = record.get("run") or (run_id(state.recipe) if state.recipe is not None else None)
    state.checkpoints = checkpoints(folder)
    state.model_files = sorted(
        p.name for p in folder.iterdir() if p.is_file() and MODEL_FILE.fullmatch(p.name)
    )
    # A folder from before run records: its final model files say it finished.
    state.finished = bool(record.get("finished")) if record else bool(state.model_files and state.recipe)
    state.global_step = record.get("global_step")
    return state


# -- the checks before a run --------------------------------------------------------------------
def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(recipe: Recipe, where: str) -> None:
    """Refuse an output folder the run must not write into (see the module docstring); raise
    `RunFinished` for `last` on this recipe's finished run. Reads the file system only."""
    training = recipe.raw.get("training") or {}
    out = Path(str(training.get("output_dir"))).expanduser().resolve()
    key = f"{where}: training.output_dir"
    resume = training.get("resume_from_checkpoint")
    for section, name in INPUT_KEYS:
        value = (recipe.raw.get(section) or {}).get(name)
        if not isinstance(value, str) or not value:
            continue
        source = Path(value).expanduser().resolve()
        if _inside(out, source):
            relation = "is" if out == source else "lies inside"
            raise RecipeError(
                f"{key}: {out} {relation} {section}.{name} ({source}): the run would write over its own "
                "input; choose another output folder"
            )
        if recipe.overwrite and _inside(source, out):
            raise RecipeError(
                f"{key}: --overwrite clears {out}, which holds {section}.{name} ({source}); choose "
                "another output folder"
            )
    if out.exists() and not out.is_dir():
        raise RecipeError(f"{key}: {out} is a file, not a folder")
    if resume is not None and recipe.overwrite:
        raise RecipeError(
            f"{key}: --overwrite starts the run over, training.resume_from_checkpoint={resume} continues "
            "it: give one of them"
        )
    state = read_folder(out)
    this = run_id(recipe.resolved_raw())
    if resume is not None and not is_last(resume):
        _check_explicit_checkpoint(Path(str(resume)), this, where)
    if state.run is None:
        if state.has_outputs:  # model files or checkpoints, but no clear-rl run recorded
            names = [p.name for p in state.checkpoints[:2]] + state.model_files[:3]
            raise RecipeError(
                f"{key}: {out} holds {', '.join(names)} but no clear-rl run ({RESOLVED_RECIPE_NAME}); "
                "choose another output folder"
            )
        return
    if recipe.overwrite or not state.has_outputs:
        return
    if state.run != this:
        changed = differences(state.recipe, recipe.resolved_raw()) if state.recipe is not None else ""
        changed = f" (differs in {changed})" if changed else ""
        never = "; its checkpoints are never resumed by another recipe" if resume is not None else ""
        raise RecipeError(
            f"{key}: {out} holds {state.describe()} of another recipe{changed}{never}. Pass --overwrite to "
            "replace it, or choose another output folder"
        )
    if state.finished:
        if is_last(resume) and not _longer(state, recipe.raw):
            step = f" at step {state.global_step}" if state.global_step is not None else ""
            raise RunFinished(f"{out} holds this recipe's finished run{step}: nothing to train")
        if resume is None:
            raise RecipeError(
                f"{key}: {out} holds {state.describe()} of this recipe. Pass --overwrite to train it "
                "again, set training.resume_from_checkpoint=last with a longer training.max_steps to "
                "continue it, or choose another output folder"
            )
    elif resume is None and state.checkpoints:
        raise RecipeError(
            f"{key}: {out} holds {state.describe()} of this recipe: set training.resume_from_checkpoint=last "
            "to continue it, or pass --overwrite to start over"
        )


def _longer(state: FolderState, raw: Mapping[str, Any]) -> bool:
    """Whether this invocation trains a finished run further: another schedule length than the
    one it finished with, and (for a number of steps) more steps than it took."""
    if state.recipe is None or _length(state.recipe) == _length(raw):
        return False
    steps = _length(raw)["max_steps"]
    return not (isinstance(steps, int) and steps > 0 and (state.global_step or 0) >= steps)


def _check_explicit_checkpoint(path: Path, this: str, where: str) -> None:
    if not path.is_dir():
        raise RecipeError(f"{where}: training.resume_from_checkpoint: checkpoint folder not found: {path}")
    other = checkpoint_run(path)
    if other is not None and other != this:
        raise RecipeError(
            f"{where}: training.resume_from_checkpoint: {path} was written by another run (run {other}, "
            f"this recipe's is {this}); a checkpoint is resumed only by the recipe that wrote it"
        )


# -- the run's own records ----------------------------------------------------------------------
def clear_run(folder: Path) -> list[str]:
    """What `--overwrite` removes before a run starts over: the old checkpoints, the old model's
    weights and the run's records (config and processor files are rewritten by the new run)."""
    removed = []
    for path in checkpoints(folder):
        shutil.rmtree(path)
        removed.append(path.name)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and (MODEL_FILE.fullmatch(path.name) or path.name == RUN_RECORD):
                path.unlink()
                removed.append(path.name)
    return removed


def begin_run(recipe: Recipe, output_dir: Path) -> None:
    """Main process, once every check has passed: clear the old run (`overwrite`), then save the
    merged recipe and the run record, so that even a run that stops early can be told apart."""
    if recipe.overwrite:
        removed = clear_run(output_dir)
        if removed:
            logger.info("--overwrite: removed %s from %s", ", ".join(removed), output_dir)
    recipe.save_resolved(output_dir)
    record = {
        "run": run_id(recipe.resolved_raw()),
        "stage": recipe.stage,
        "seed": getattr(recipe.training, "seed", None),
        "finished": False,
        "global_step": None,
    }
    write_text(output_dir / RUN_RECORD, json.dumps(record, indent=1) + "\n")


def mark_finished(output_dir: str | os.PathLike, global_step: int) -> None:
    """Main process, after the final model is saved: the folder now holds a finished run."""
    path = Path(output_dir) / RUN_RECORD
    record = read_json(path)
    if record:
        record.update(finished=True, global_step=int(global_step))
        write_text(path, json.dumps(record, indent=1) + "\n")


def checkpoint_marker(output_dir: str | os.PathLike, global_step: int) -> str:
    """The text of a checkpoint's completion marker: its step and the run that wrote it."""
    document: dict[str, Any] = {"global_step": global_step}
    run = read_json(Path(output_dir) / RUN_RECORD).get("run")
    if run:
        document["run"] = run
    return json.dumps(document) + "\n"


def current_run(output_dir: str | os.PathLike) -> str | None:
    """The run recorded in `output_dir` (None in a folder no clear-rl run started)."""
    return read_json(Path(output_dir) / RUN_RECORD).get("run")


@contextlib.contextmanager
def no_trace_on_refusal(output_dir: str | os.PathLike, main_process: bool) -> Iterator[None]:
    """Around a whole `train`: a ClearRLError raised before the run saved any checkpoint or model
    (a refusal the preflight could not make, e.g. weights that do not fit the model) takes back
    what the run wrote into `output_dir` (its records, the folder itself if it made it)."""
    folder = Path(output_dir)
    before = {p.name for p in folder.iterdir()} if folder.is_dir() else None
    try:
        yield
    except ClearRLError:
        if main_process and folder.is_dir() and not read_folder(folder).has_outputs:
            if before is None:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                for path in folder.iterdir():
                    if path.name in before:
                        continue
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
        raise
