"""Sharded training on two CPU processes over gloo: FSDP2 and DeepSpeed (ZeRO-3, ZeRO-2) train as DDP does.

accelerate shards only accelerator processes, so these launches run `tests/sharded_cpu.py` (see its
docstring), which makes accelerate treat the CPU processes as accelerator processes; the shipped
configs are used as they are (`--mixed_precision no`, so that sums match DDP's in float32). Every
stage runs with restorations that differ per rank: stage 1 and 2 data in which one rank's batch
restores and the other's does not, and GRPO rollouts that restore on rank 0 only. Losses (every
logged term) must equal DDP's within 1e-5 and the saved folder must load; a sharded GRPO run
resumes to the uninterrupted weights. Each launch is wrapped in a timeout: a collective that only
one rank enters hangs gloo rather than failing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from clear_rl.models import build_tiny_model
from clear_rl.models.io import load_unified, save_unified
from tests.prepared import SMALL, prepared_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "sharded_cpu.py"
FSDP, ZERO2, ZERO3 = (
    "recipes/accelerate/fsdp.yaml",
    "recipes/accelerate/zero2.yaml",
    "recipes/accelerate/zero3.yaml",
)
TWO_PROCESSES = [
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
NOT_COMPARED = (
    "step_time",
    "total_flos",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
)
LIMIT_S = 600


def _free_port() -> str:
    with socket.socket() as s:  # other jobs on the machine may hold accelerate's default port
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(tmp_path: Path, config: str | None, recipe: str, *overrides: str, restoring_ranks: str = "",
           harness: bool = True) -> tuple[subprocess.CompletedProcess, list[dict]]:  # fmt: skip
    """`accelerate launch` two CPU processes of `clear-rl train recipe overrides` with `config` (DDP
    on CPUs when None); returns the finished process and the run's logged history."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed")
    kind = ["--config_file", str(ROOT / config)] if config else ["--multi_gpu"]
    program = [str(HARNESS)] if harness else ["-m", "clear_rl"]
    history = tmp_path / f"history-{len(list(tmp_path.glob('history-*')))}.json"
    use_cpu = f"training.use_cpu={'false' if config else 'true'}"  # (an override in `overrides` wins)
    command = [accelerate, "launch", *kind, *TWO_PROCESSES, "--main_process_port", _free_port(), *program,
               "train", str(ROOT / recipe), use_cpu, *overrides]  # fmt: skip
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "DS_ACCELERATOR": "cpu", "CLEAR_RL_TEST_LOG": str(history), "CLEAR_RL_TEST_RESTORING_RANKS": restoring_ranks,
        "CLEAR_RL_TEST_SHARES": str(tmp_path),  # rank-<i>.json: what each rank holds
    }  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # one group: a hung rank is killed with the launcher
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"the launch hung for {LIMIT_S} s (a collective one rank never entered):\n{stderr[-4000:]}"
        )
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if not harness:
        return result, []
    assert result.returncode == 0, stderr[-6000:]
    return result, json.loads(history.read_text())


def assert_same_losses(got: list[dict], expected: list[dict]) -> None:
    """Every logged term of every step within 1e-5 (relative above 1)."""
    assert len(got) == len(expected)
    for step, (a, b) in enumerate(zip(got, expected)):
        terms = {k for k, v in b.items() if isinstance(v, int | float) and k not in NOT_COMPARED}
        assert terms <= set(a), (step, terms - set(a))
        for key in terms:
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(b[key])), (step, key, a[key], b[key])


def restoring(history: list[dict], key: str) -> list[float]:
    return [h[key] for h in history if key in h]


def assert_each_rank_holds_half(folder: Path) -> None:
    """Each of the 2 ranks holds half the parameters and half the optimizer's state."""
    for rank in (0, 1):
        held = json.loads((folder / f"rank-{rank}.json").read_text())
        for what in ("parameters", "trainable parameters", "optimizer state"):
            assert held[what] == pytest.approx(0.5, abs=0.01), (rank, what, held[what])


# -- the runs -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A saved small model, stage 1-2 data whose first batch restores on rank 0 only and second on
    rank 1 only (sequential sampling, 2 rows per rank), GRPO prompts and a reward that varies."""
    from tests.test_grpo import _prepared_folder

    root = tmp_path_factory.mktemp("inputs")
    model, processor = build_tiny_model(SMALL, seed=0)
    save_unified(model, processor, root / "model")
    rows = prepared_dataset(8)  # labels alternate restore / direct
    split = rows.select([0, 2, 1, 3, 5, 7, 4, 6])  # restore, restore | direct x 4 | restore, restore
    datasets.DatasetDict({"train": split}).save_to_disk(str(root / "data"))
    (root / "rewards.py").write_text(
        "def brevity(completions, **kwargs):\n    return [1.0 / (1 + len(str(c))) for c in completions]\n"
    )
    return {
        "root": root,
        "model": root / "model",
        "data": root / "data",
        "prompts": _prepared_folder(root / "prompts"),
    }


def stage_overrides(inputs, out: Path) -> list[str]:
    return [
        f"model.path={inputs['model']}", f"data.path={inputs['data']}", f"training.output_dir={out}",
        "training.max_steps=2", "training.per_device_train_batch_size=2", "training.logging_steps=1",
        "training.train_sampling_strategy=sequential", "training.learning_rate=1e-3",
    ]  # fmt: skip


BRIDGE_ON_EVERY_ROW = ["training.restore_rows_only=false", "training.restoration_steps=2"]


def grpo_overrides(inputs, out: Path, steps: int = 2) -> list[str]:
    # num_iterations=2 and a checkpoint per step: checkpoint-1 falls between a rollout and its reuse.
    return [
        f"model.path={inputs['model']}", f"data.path={inputs['prompts']}", f"training.output_dir={out}",
        f"training.max_steps={steps}", "training.per_device_train_batch_size=4", "training.logging_steps=1",
        "training.max_completion_length=6", "training.restoration_steps=2", "training.num_iterations=2",
        "training.save_strategy=steps", "training.save_steps=1", "training.learning_rate=1e-3",
        f"rewards=[{{path: {inputs['root'] / 'rewards.py'}:brevity}}]",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ddp(inputs, tmp_path_factory):
    """The DDP runs every sharded run must equal: {stage: (output folder, logged history)}."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {
        "sft": ("recipes/demo/sft.yaml", stage_overrides(inputs, root / "sft"), ""),
        "bridge": ("recipes/demo/bridge.yaml", [*stage_overrides(inputs, root / "bridge"), *BRIDGE_ON_EVERY_ROW], ""),
        "grpo": ("recipes/demo/grpo.yaml", grpo_overrides(inputs, root / "grpo"), "0"),
    }  # fmt: skip
    return {
        stage: (root / stage, launch(root, None, recipe, *overrides, restoring_ranks=ranks)[1])
        for stage, (recipe, overrides, ranks) in runs.items()
    }


def assert_loads_with_weights_of(folder: Path, reference: Path, atol: float) -> None:
    model, _ = load_unified(folder)
    assert model.num_restored_tokens > 0
    got, expected = load_file(folder / "model.safetensors"), load_file(reference / "model.safetensors")
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name].float(), value.float(), rtol=0, atol=atol, msg=name)


# -- FSDP2 ----------------------------------------------------------------------------------------
def test_fsdp2_sft_with_restoring_rows_on_one_rank_equals_ddp(tmp_path, inputs, ddp):
    _, history = launch(tmp_path, FSDP, "recipes/demo/sft.yaml", *stage_overrides(inputs, tmp_path / "sft"))
    assert_same_losses(history, ddp["sft"][1])
    assert restoring(history, "restore_fraction") == [0.5, 0.5] and restoring(history, "mse_loss")
    assert_each_rank_holds_half(tmp_path)
    assert_loads_with_weights_of(tmp_path / "sft", ddp["sft"][0], atol=1e-5)


def test_fsdp2_bridge_on_every_row_with_restorations_on_one_rank_equals_ddp(tmp_path, inputs, ddp):
    overrides = [*stage_overrides(inputs, tmp_path / "bridge"), *BRIDGE_ON_EVERY_ROW]
    _, history = launch(tmp_path, FSDP, "recipes/demo/bridge.yaml", *overrides)
    assert_same_losses(history, ddp["bridge"][1])
    assert_loads_with_weights_of(tmp_path / "bridge", ddp["bridge"][0], atol=1e-5)


def test_fsdp2_grpo_restoring_on_one_rank_equals_ddp_and_resumes_to_the_same_weights(tmp_path, inputs, ddp):
    straight, out = tmp_path / "straight", tmp_path / "out"
    _, history = launch(
        tmp_path, FSDP, "recipes/demo/grpo.yaml", *grpo_overrides(inputs, straight), restoring_ranks="0"
    )
    assert_same_losses(history, ddp["grpo"][1])
    assert set(restoring(history, "restore_rate")) == {0.5} and restoring(history, "flow/loss")
    assert_loads_with_weights_of(straight, ddp["grpo"][0], atol=1e-5)
    assert (straight / "checkpoint-1" / "pytorch_model_fsdp_0").is_dir()  # checkpoints are sharded
    # Stopped after step 1, then resumed: the uninterrupted run's weights.
    launch(
        tmp_path, FSDP, "recipes/demo/grpo.yaml", *grpo_overrides(inputs, out, steps=1), restoring_ranks="0"
    )
    result, _ = launch(
        tmp_path, FSDP, "recipes/demo/grpo.yaml", *grpo_overrides(inputs, out),
        "training.resume_from_checkpoint=last", restoring_ranks="0",
    )  # fmt: skip
    assert f"resuming from {out / 'checkpoint-1'}" in result.stdout + result.stderr
    assert_loads_with_weights_of(out, straight, atol=0.0)


def test_fsdp2_trains_tiny_bagel_grpo_restoring_on_one_rank_and_saves_its_official_layout(tmp_path, inputs):
    from clear_rl.models.bagel.tiny import build_tiny_bagel
    from clear_rl.models.bagel.unified import BagelUnifiedModel

    build_tiny_bagel(tmp_path / "bagel", seed=0)
    datasets.DatasetDict({"train": prepared_dataset(4)}).save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "grpo"
    _, history = launch(
        tmp_path, FSDP, "recipes/bagel_7b_mot/grpo-lora.yaml", f"model.path={tmp_path / 'bagel'}",
        "model.tags=tokens", f"data.path={tmp_path / 'data'}", f"training.output_dir={out}", "model.lora=null", "model.dtype=float32",
        "training.beta=0", "training.max_steps=1", "training.gradient_accumulation_steps=1",
        "training.per_device_train_batch_size=2", "training.num_generations=2", "training.max_completion_length=4",
        "training.restoration_steps=2", "training.save_strategy=no", "training.logging_steps=1",
        "training.learning_rate=1e-3", "training.warmup_steps=0", "training.lr_scheduler_type=constant",
        f"rewards=[{{path: {inputs['root'] / 'rewards.py'}:brevity}}]",
        restoring_ranks="0",
    )  # fmt: skip
    assert restoring(history, "restore_rate") == [0.5] and restoring(history, "flow/loss")
    model, _ = load_unified(out)  # the official layout, gathered from both ranks
    assert isinstance(model, BagelUnifiedModel)
    start, _ = load_unified(tmp_path / "bagel")
    trained = dict(model.bagel.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in start.bagel.named_parameters())


# -- DeepSpeed -------------------------------------------------------------------------------------
def test_deepspeed_loads_a_saved_folder_and_trains_with_mixed_restorations_as_ddp(tmp_path, inputs, ddp):
    # The model folder loads under zero.Init (transformers' ZeRO-3 loading); the runs equal DDP's.
    pytest.importorskip("deepspeed")  # `make install` builds it
    _, history = launch(tmp_path, ZERO3, "recipes/demo/sft.yaml", *stage_overrides(inputs, tmp_path / "sft"))
    assert_same_losses(history, ddp["sft"][1])
    assert_each_rank_holds_half(tmp_path)
    assert_loads_with_weights_of(tmp_path / "sft", ddp["sft"][0], atol=1e-5)
    overrides = [*grpo_overrides(inputs, tmp_path / "grpo"), "training.save_strategy=no"]
    _, history = launch(tmp_path, ZERO3, "recipes/demo/grpo.yaml", *overrides, restoring_ranks="0")
    assert_same_losses(history, ddp["grpo"][1])
    assert set(restoring(history, "restore_rate")) == {0.5}
    assert_loads_with_weights_of(tmp_path / "grpo", ddp["grpo"][0], atol=1e-4)
    # ZeRO-2 reduces only the gradients a rank has: it needs the same work too (a size mismatch without).
    overrides = [*grpo_overrides(inputs, tmp_path / "zero2"), "training.save_strategy=no"]
    _, history = launch(tmp_path, ZERO2, "recipes/demo/grpo.yaml", *overrides, restoring_ranks="0")
    assert_same_losses(history, ddp["grpo"][1])


# -- configs accelerate would not honour ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("use_cpu", "message"),
    [
        ("false", "2 independent trainings writing one output folder"),
        ("true", "would train as DDP over gloo"),
    ],
)
def test_the_shipped_fsdp_config_on_cpu_processes_is_refused_before_anything_is_written(
    tmp_path, inputs, use_cpu, message
):
    out = tmp_path / "out"
    result, _ = launch(
        tmp_path, FSDP, "recipes/demo/sft.yaml", *stage_overrides(inputs, out), f"training.use_cpu={use_cpu}",
        harness=False,
    )  # fmt: skip
    assert result.returncode != 0 and message in result.stderr
    assert not out.exists()
