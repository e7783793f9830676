"""An output folder holds one run: a finished or another recipe's run is never trained over
without --overwrite, `last` on a finished run does nothing, another run's checkpoint is never
resumed, and an output folder inside an input is refused. Every refusal leaves the file system
as it found it (a listing before and after)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest
import yaml

from clear_rl.cli import main
from clear_rl.errors import RecipeError
from clear_rl.models import build_tiny_model
from clear_rl.models.io import save_unified
from clear_rl.preflight import check_inputs
from clear_rl.recipe import load_recipe
from clear_rl.runs import CHECKPOINT_COMPLETE, RUN_RECORD, RunFinished, begin_run, run_id
from clear_rl.trainers.common import resume_checkpoint
from tests.listing import listing
from tests.prepared import SMALL, prepared_dataset

TINY = {
    "image_size": 32, "vit_patch_size": 8, "vit_hidden_size": 32, "vit_layers": 1, "llm_layers": 1,
    "llm_hidden_size": 64, "llm_heads": 2, "llm_kv_heads": 1, "vae_channels": [16, 16, 16],
    "head_layers": 1, "head_heads": 2, "head_head_dim": 16, "num_inference_steps": 2,
}  # fmt: skip
TRAINING = {
    "max_steps": 2, "per_device_train_batch_size": 2, "save_strategy": "steps", "save_steps": 1,
    "report_to": "none", "disable_tqdm": True, "use_cpu": True, "seed": 0,
}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "prepared"
    datasets.DatasetDict({"train": prepared_dataset(4)}).save_to_disk(str(folder))
    return folder


def write_recipe(folder: Path, data: Path, out: Path, model=None, stage="sft", **extra) -> Path:
    body = {
        "stage": stage,
        "model": model or {"tiny": TINY},
        "data": {"path": str(data)},
        "training": {"output_dir": str(out), **TRAINING},
        **extra,
    }
    path = folder / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def refused(capsys, roots, *argv) -> str:
    """Run `clear-rl train ARGV`; assert it exits 2 and leaves `roots` as they were; its error."""
    before = listing(*roots)
    assert main(["train", *argv]) == 2
    assert listing(*roots) == before
    return capsys.readouterr().err


def test_a_finished_run_is_neither_trained_again_nor_mixed_with_another(tmp_path, data, capsys):
    out = tmp_path / "out"
    recipe = str(write_recipe(tmp_path, data, out))
    assert main(["train", recipe]) == 0
    record = json.loads((out / RUN_RECORD).read_text())
    assert record["finished"] and record["global_step"] == 2
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()

    error = refused(capsys, [tmp_path], recipe)  # the same recipe again
    assert f"{out} holds a finished run (model saved at step 2) of this recipe" in error
    assert "--overwrite" in error
    error = refused(capsys, [tmp_path], recipe, "training.seed=1")  # another run
    assert "of another recipe (differs in training.seed: 0 -> 1)" in error
    error = refused(capsys, [tmp_path], recipe, "training.seed=1", "training.resume_from_checkpoint=last")
    assert "its checkpoints are never resumed by another recipe" in error

    before = listing(tmp_path)
    assert main(["train", recipe, "training.resume_from_checkpoint=last"]) == 0  # finished: nothing to do
    assert "holds this recipe's finished run at step 2: nothing to train" in capsys.readouterr().out
    assert listing(tmp_path) == before and (out / "model.safetensors").read_bytes() == weights

    longer = ["training.resume_from_checkpoint=last", "training.max_steps=3"]
    assert main(["train", recipe, *longer]) == 0  # a longer schedule continues the finished run
    assert json.loads((out / RUN_RECORD).read_text())["global_step"] == 3
    assert json.loads((out / "checkpoint-3" / CHECKPOINT_COMPLETE).read_text())["run"] == record["run"]
    assert main(["train", recipe, *longer]) == 0  # and once there, it is finished again
    assert "finished run at step 3: nothing to train" in capsys.readouterr().out

    assert main(["train", recipe, "training.seed=1", "--overwrite"]) == 0  # starts over, cleanly
    again = json.loads((out / RUN_RECORD).read_text())
    assert again["run"] != record["run"] and again["finished"] and again["seed"] == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # 3 cleared
    for step in (1, 2):  # every checkpoint is the new run's: the old ones were cleared first
        marker = json.loads((out / f"checkpoint-{step}" / CHECKPOINT_COMPLETE).read_text())
        assert marker["run"] == again["run"]
    assert (out / "model.safetensors").read_bytes() != weights


def test_an_output_folder_equal_to_or_inside_an_input_is_refused(tmp_path, data, capsys):
    model, processor = build_tiny_model(SMALL, seed=0)
    save_unified(model, processor, tmp_path / "model")
    rewards = [{"name": "format", "weight": 1.0}]
    cases = {
        "model.path": (tmp_path / "model", "grpo"),  # the reported case: GRPO into its own input model
        "model.path inside": (tmp_path / "model" / "grpo", "grpo"),
        "data.path": (data, "sft"),
    }
    for name, (out, stage) in cases.items():
        recipe = write_recipe(
            tmp_path, data, out, model={"path": str(tmp_path / "model")}, stage=stage,
            **({"rewards": rewards} if stage == "grpo" else {}),
        )  # fmt: skip
        error = refused(capsys, [tmp_path, data], str(recipe))
        key = name.split()[0]
        assert f"training.output_dir: {out.resolve()}" in error and key in error, (name, error)
        assert "would write over its own input" in error, (name, error)


def _run_folder(tmp_path: Path, data: Path) -> tuple[Path, Path]:
    """A recipe, and its output folder as the run leaves it when it starts (its records)."""
    out = tmp_path / "out"
    path = write_recipe(tmp_path, data, out)
    out.mkdir()
    begin_run(load_recipe(path), out)
    return path, out


def test_last_never_resumes_a_checkpoint_another_run_wrote(tmp_path, data, caplog):
    recipe, out = _run_folder(tmp_path, data)
    this = run_id(load_recipe(recipe).resolved_raw())
    for step, run in ((2, this), (3, "0123456789abcdef"), (4, None)):
        folder = out / f"checkpoint-{step}"
        folder.mkdir()
        marker = {"global_step": step, **({"run": run} if run else {})}
        (folder / CHECKPOINT_COMPLETE).write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING, logger="clear_rl"):
        assert resume_checkpoint("last", str(out)) == str(out / "checkpoint-2")
    assert f"skipping {out / 'checkpoint-3'}, written by another run" in caplog.text
    assert f"skipping {out / 'checkpoint-4'}, written by another run" in caplog.text
    # Given by path, it is refused before the run starts.
    with pytest.raises(RecipeError, match="was written by another run"):
        load_recipe(
            recipe, [f"training.resume_from_checkpoint={out / 'checkpoint-3'}"], check_inputs=check_inputs
        )


def test_checkpoints_of_an_unfinished_run_are_resumed_or_overwritten_never_restarted_over(
    tmp_path, data, capsys
):
    recipe, out = _run_folder(tmp_path, data)
    this = run_id(load_recipe(recipe).resolved_raw())
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / CHECKPOINT_COMPLETE).write_text(json.dumps({"global_step": 1, "run": this}))
    error = refused(capsys, [tmp_path], str(recipe))
    assert (
        "holds an unfinished run (checkpoint-1) of this recipe: set training.resume_from_checkpoint=last"
        in error
    )
    error = refused(capsys, [tmp_path], str(recipe), "training.resume_from_checkpoint=last", "--overwrite")
    assert "give one of them" in error
    assert load_recipe(recipe, ["training.resume_from_checkpoint=last"], check_inputs=check_inputs)  # allowed
    with pytest.raises(RunFinished):  # once finished, `last` has nothing to do
        record = json.loads((out / RUN_RECORD).read_text())
        (out / RUN_RECORD).write_text(json.dumps({**record, "finished": True, "global_step": 1}))
        load_recipe(recipe, ["training.resume_from_checkpoint=last"], check_inputs=check_inputs)


def test_a_folder_holding_a_model_no_run_wrote_is_refused_even_with_overwrite(tmp_path, data, capsys):
    model, processor = build_tiny_model(SMALL, seed=0)
    save_unified(model, processor, tmp_path / "someone_elses")
    recipe = write_recipe(tmp_path, data, tmp_path / "someone_elses")
    for flags in ((), ("--overwrite",)):
        error = refused(capsys, [tmp_path], str(recipe), *flags)
        assert "holds model.safetensors but no clear-rl run" in error


def test_a_refusal_after_the_run_started_takes_back_what_it_wrote(tmp_path, capsys):
    # Stage 2 trains on restoring rows; a dataset without any is found out only once loaded.
    direct = prepared_dataset(4).filter(lambda row: row["label"] == "direct")
    datasets.DatasetDict({"train": direct}).save_to_disk(str(tmp_path / "direct"))
    recipe = write_recipe(tmp_path, tmp_path / "direct", tmp_path / "out", stage="bridge")
    error = refused(capsys, [tmp_path], str(recipe))
    assert "has no rows this stage can train on" in error
