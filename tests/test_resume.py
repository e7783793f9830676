"""Checkpoints are complete or skipped, and a killed run resumed with `last` ends where the
uninterrupted run does, for every stage (the kill happens in a subprocess: tests/interrupted_run.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from safetensors.torch import load_file

from clear_rl.recipe import load_recipe, stage_module
from clear_rl.trainers.common import CHECKPOINT_COMPLETE, resume_checkpoint
from tests.interrupted_run import KILLED
from tests.prepared import prepared_dataset
from tests.test_grpo import _prepared_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "image_size": 32, "vit_patch_size": 8, "vit_hidden_size": 32, "vit_layers": 1, "llm_layers": 2,
    "llm_hidden_size": 64, "llm_heads": 2, "llm_kv_heads": 1, "vae_channels": [16, 16, 16],
    "head_layers": 1, "head_heads": 2, "head_head_dim": 16, "num_inference_steps": 2,
}  # fmt: skip
QUIET = {"report_to": "none", "disable_tqdm": True, "use_cpu": True, "gradient_checkpointing": False}


def _checkpoint(folder: Path, step: int, complete: bool) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "config.json").write_text("" if not complete else "{}")
    if complete:
        (path / CHECKPOINT_COMPLETE).write_text("{}")
    return path


def test_last_resumes_from_the_newest_complete_checkpoint_and_names_the_skipped_ones(tmp_path, caplog):
    _checkpoint(tmp_path, 2, complete=False)
    complete = _checkpoint(tmp_path, 9, complete=True)
    killed = _checkpoint(tmp_path, 10, complete=False)  # newer by number, not by text
    with caplog.at_level(logging.WARNING, logger="clear_rl"):
        assert resume_checkpoint("last", str(tmp_path)) == str(complete)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert str(killed) in caplog.text and CHECKPOINT_COMPLETE in caplog.text


@pytest.mark.parametrize("made", [False, True])
def test_last_without_a_complete_checkpoint_says_so_and_names_the_folder(tmp_path, caplog, made):
    out = tmp_path / "out"
    if made:
        _checkpoint(out, 3, complete=False)
    with caplog.at_level(logging.WARNING, logger="clear_rl"):
        assert resume_checkpoint("last", str(out)) is None
    assert f"no complete checkpoint in {out}" in caplog.text


def test_an_explicit_checkpoint_without_the_marker_is_resumed_with_a_warning(tmp_path, caplog):
    path = _checkpoint(tmp_path, 4, complete=False)
    with caplog.at_level(logging.WARNING, logger="clear_rl"):
        assert resume_checkpoint(str(path), str(tmp_path)) == str(path)
    assert "may not have finished" in caplog.text


def test_rotation_waits_until_the_new_checkpoint_is_marked_complete(tmp_path, monkeypatch):
    # save_total_limit=1: deleting the previous checkpoint before the new one is marked would
    # leave nothing to resume from if the run died in between.
    import transformers.trainer
    import transformers.trainer_utils

    from tests.test_stages import make_trainer

    rotate, marked_when_rotating = transformers.trainer_utils.rotate_checkpoints, []

    def recording_rotate(output_dir, save_total_limit=None, **kwargs):
        if save_total_limit:
            found = sorted(Path(output_dir).glob("checkpoint-*"))
            marked_when_rotating.append([p.name for p in found if (p / CHECKPOINT_COMPLETE).exists()])
        rotate(output_dir, save_total_limit, **kwargs)

    monkeypatch.setattr(transformers.trainer_utils, "rotate_checkpoints", recording_rotate)
    monkeypatch.setattr(transformers.trainer, "rotate_checkpoints", recording_rotate)
    settings = {"max_steps": 3, "save_strategy": "steps", "save_steps": 1, "save_total_limit": 1}
    trainer = make_trainer(tmp_path, prepared_dataset(4), **settings)
    trainer.train()
    assert marked_when_rotating == [
        ["checkpoint-1"],
        ["checkpoint-1", "checkpoint-2"],
        ["checkpoint-2", "checkpoint-3"],
    ]
    assert [p.name for p in (tmp_path / "out").glob("checkpoint-*")] == ["checkpoint-3"]
    assert trainer.args.save_total_limit == 1


# -- kill and resume, end to end ------------------------------------------------------------------
def _write_recipe(tmp_path: Path, stage: str, training: dict, **sections) -> Path:
    recipe = {
        "stage": stage,
        "model": {"tiny": TINY},
        "training": {"output_dir": str(tmp_path / "unused"), "seed": 0, **QUIET, **training},
        **sections,
    }
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train(recipe: Path, out: Path, *overrides: str):
    loaded = load_recipe(recipe, [f"training.output_dir={out}", *overrides])
    return stage_module(loaded.stage).train(loaded)


def _killed_run(recipe: Path, out: Path, moment: str, step: int) -> None:
    """The stage run in a subprocess that dies at `moment` of checkpoint-`step`."""
    # The parent's thread count: the same float reductions as the runs made in this process.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [sys.executable, "-m", "tests.interrupted_run", moment, str(step), str(recipe)]
    result = subprocess.run(
        [*command, f"training.output_dir={out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == KILLED, result.stderr[-4000:]


def _assert_kill_and_resume_equal_the_straight_run(tmp_path, caplog, recipe, moment, kill_at, resumes_from):
    straight = _train(recipe, tmp_path / "straight")
    out = tmp_path / "killed"
    _killed_run(recipe, out, moment, kill_at)
    broken = out / f"checkpoint-{kill_at}"
    assert broken.is_dir() and not (broken / CHECKPOINT_COMPLETE).exists()
    with caplog.at_level(logging.INFO, logger="clear_rl"):
        resumed = _train(recipe, out, "training.resume_from_checkpoint=last")
    assert f"skipping {broken}" in caplog.text
    assert f"resuming from {out / f'checkpoint-{resumes_from}'}" in caplog.text
    assert (broken / CHECKPOINT_COMPLETE).exists()  # saved again, whole, by the resumed run
    assert resumed.state.global_step == straight.state.global_step
    expected = load_file(tmp_path / "straight" / "model.safetensors")
    got = load_file(out / "model.safetensors")
    start = load_file(out / f"checkpoint-{resumes_from}" / "model.safetensors")
    assert any(not torch.equal(expected[k], start[k]) for k in expected), "the resumed steps trained nothing"
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_sft_killed_while_writing_config_json_resumes_to_the_uninterrupted_weights(tmp_path, caplog):
    # The reported failure: checkpoint-4/config.json is 0 bytes; `last` must take checkpoint-2.
    data = tmp_path / "prepared"
    datasets.DatasetDict({"train": prepared_dataset(6)}).save_to_disk(str(data))
    training = {
        "max_steps": 5,  # 3 steps an epoch: the resumed part crosses into the second epoch
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "vit_token_dropout": 0.4,
        "save_strategy": "steps",
        "save_steps": 2,
    }
    recipe = _write_recipe(tmp_path, "sft", training, data={"path": str(data)})
    _assert_kill_and_resume_equal_the_straight_run(tmp_path, caplog, recipe, "config", 4, 2)
    assert (tmp_path / "killed" / "checkpoint-4" / "config.json").stat().st_size > 0


@pytest.mark.slow
def test_bridge_killed_while_writing_trainer_state_resumes_to_the_uninterrupted_weights(tmp_path, caplog):
    # Everything but trainer_state.json written: resuming from it would restart at step 0.
    data = tmp_path / "prepared"
    datasets.DatasetDict({"train": prepared_dataset(6)}).save_to_disk(str(data))
    training = {
        "max_steps": 5,  # 3 restoring rows, 2 steps an epoch
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "save_strategy": "steps",
        "save_steps": 2,
    }
    recipe = _write_recipe(tmp_path, "bridge", training, data={"path": str(data)})
    _assert_kill_and_resume_equal_the_straight_run(tmp_path, caplog, recipe, "trainer_state", 4, 2)


@pytest.mark.slow
def test_grpo_killed_while_writing_weights_resumes_to_the_uninterrupted_weights(tmp_path, caplog):
    # num_iterations=2: each rollout serves two steps, so checkpoint-1 falls between a generation
    # and its second use (TRL's buffered batch must come back), and step 3 makes a fresh rollout
    # (its sampling and restoration noise must be the uninterrupted run's).
    (tmp_path / "rewards.py").write_text(
        "def brevity(completions, **kwargs):\n    return [1.0 / (1 + len(str(c))) for c in completions]\n"
    )
    training = {
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "num_iterations": 2,
        "max_completion_length": 6,
        "restoration_steps": 2,
        "restore_policy": "always",
        "learning_rate": 1e-3,
        "save_strategy": "steps",
        "save_steps": 1,
    }
    recipe = _write_recipe(
        tmp_path,
        "grpo",
        training,
        data={"path": str(_prepared_folder(tmp_path / "data"))},
        rewards=[{"path": f"{tmp_path / 'rewards.py'}:brevity"}],
    )
    _assert_kill_and_resume_equal_the_straight_run(tmp_path, caplog, recipe, "weights", 2, 1)
