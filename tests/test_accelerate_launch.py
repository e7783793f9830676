"""`accelerate launch` with two CPU processes (DDP over gloo) runs shipped recipes to the end.

`--cpu` alone starts one process unless mpirun is installed; torchrun's launcher (`--multi_gpu`)
with `training.use_cpu=true` gives two CPU processes over gloo.

The sharded configs (FSDP2, DeepSpeed) are tested in tests/test_many_gpus.py, whose launches make
accelerate shard CPU processes (tests/sharded_cpu.py); without that harness clear-rl refuses them
on CPU processes.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from clear_rl.models import build_tiny_model
from clear_rl.models.io import load_unified, save_unified
from clear_rl.trainers.common import CHECKPOINT_COMPLETE
from clear_rl.trainers.grpo import GENERATION_STATE
from tests.prepared import prepared_dataset

ROOT = Path(__file__).resolve().parents[1]
TWO_CPU_PROCESSES = [
    "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


def _launch(tmp_path, recipe: str, *overrides: str) -> str:
    """`accelerate launch` two CPU processes of `clear-rl train recipe overrides`; returns the logs."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed")
    command = [accelerate, "launch", *TWO_CPU_PROCESSES, "-m", "clear_rl", "train", str(ROOT / recipe)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [*command, "training.use_cpu=true", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # The launcher's own ChildFailedError says only which rank died: the rank's last lines say why.
    assert result.returncode == 0, result.stderr[-6000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_two_process_ddp_runs_the_demo_sft_recipe(tmp_path):
    data = tmp_path / "prepared"
    datasets.DatasetDict({"train": prepared_dataset(8)}).save_to_disk(str(data))
    out = tmp_path / "sft"
    logs = _launch(
        tmp_path,
        "recipes/demo/sft.yaml",
        "training.max_steps=2",
        "training.per_device_train_batch_size=2",
        "training.logging_steps=1",
        f"training.output_dir={out}",
        f"data.path={data}",
        "model.path=null",
        "model.tiny={image_size: 32, vit_patch_size: 8, llm_layers: 2, vae_channels: [16, 16, 16]}",
    )
    assert "'ce_loss'" in logs  # the per-term logs
    assert "'epoch': '1'" in logs  # 2 steps covered all 8 rows: two processes of 2 rows each
    model, _ = load_unified(out)  # saved once, by the main process, and loadable
    assert model.num_restored_tokens == 16


@pytest.mark.slow
def test_two_process_ddp_grpo_resumes_each_process_to_the_uninterrupted_weights(tmp_path):
    # num_iterations=2: checkpoint-1 falls between a rollout and its reuse, so each process saves
    # its own buffered batch; a second launch resumes from it and takes the second step, ending
    # where one uninterrupted launch of two steps does.
    from tests.test_grpo import _prepared_folder

    model, processor = build_tiny_model(seed=0)
    save_unified(model, processor, tmp_path / "model")
    data = _prepared_folder(tmp_path / "data")
    # The demo's rewards are constant on an untrained model: this one varies, so the steps train.
    (tmp_path / "rewards.py").write_text(
        "def brevity(completions, **kwargs):\n    return [1.0 / (1 + len(str(c))) for c in completions]\n"
    )
    out, straight = tmp_path / "out", tmp_path / "straight"
    common = [
        f"model.path={tmp_path / 'model'}", f"data.path={data}",
        "training.per_device_train_batch_size=4", "training.max_completion_length=6",
        "training.restoration_steps=2", "training.num_iterations=2", "training.logging_steps=1",
        "training.save_strategy=steps", "training.save_steps=1", "training.restore_policy=always",
        f"rewards=[{{path: {tmp_path / 'rewards.py'}:brevity}}]", "training.learning_rate=1e-3",
    ]  # fmt: skip
    _launch(
        tmp_path, "recipes/demo/grpo.yaml", *common, f"training.output_dir={straight}", "training.max_steps=2"
    )
    _launch(tmp_path, "recipes/demo/grpo.yaml", *common, f"training.output_dir={out}", "training.max_steps=1")
    first = out / "checkpoint-1"
    for name in (CHECKPOINT_COMPLETE, "rng_state_0.pth", "rng_state_1.pth"):
        assert (first / name).exists(), name
    for rank in (0, 1):
        assert (first / GENERATION_STATE.format(rank=rank)).exists()
    resume = [f"training.output_dir={out}", "training.max_steps=2", "training.resume_from_checkpoint=last"]
    logs = _launch(tmp_path, "recipes/demo/grpo.yaml", *common, *resume)
    assert f"resuming from {first}" in logs
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (out / "checkpoint-2" / CHECKPOINT_COMPLETE).exists()
    expected, got = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    start = load_file(first / "model.safetensors")
    assert any(not torch.equal(expected[k], start[k]) for k in expected), "step 2 trained nothing"
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
