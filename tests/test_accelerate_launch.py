"""`accelerate launch` with two CPU processes (DDP over gloo) runs a shipped recipe to the end."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from clear_rl.models.io import load_unified
from tests.prepared import prepared_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_ddp_runs_the_demo_sft_recipe(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed")
    data = tmp_path / "prepared"
    datasets.DatasetDict({"train": prepared_dataset(8)}).save_to_disk(str(data))
    out = tmp_path / "sft"
    command = [
        accelerate,
        "launch",
        # `--cpu` alone starts one process unless mpirun is installed; torchrun's launcher
        # (`--multi_gpu`) with `training.use_cpu=true` gives two CPU processes over gloo.
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "clear_rl",
        "train",
        str(ROOT / "recipes/demo/sft.yaml"),
        "training.max_steps=2",
        "training.per_device_train_batch_size=2",
        "training.logging_steps=1",
        "training.use_cpu=true",
        f"training.output_dir={out}",
        f"data.path={data}",
        "model.path=null",
        "model.tiny={image_size: 32, vit_patch_size: 8, llm_layers: 2, vae_channels: [16, 16, 16]}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    logs = result.stdout + result.stderr
    assert "'ce_loss'" in logs  # the per-term logs
    assert "'epoch': '1'" in logs  # 2 steps covered all 8 rows: two processes of 2 rows each
    model, _ = load_unified(out)  # saved once, by the main process, and loadable
    assert model.num_restored_tokens == 16
