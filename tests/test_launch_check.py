"""`clear-rl train` refuses launches accelerate would run another way than configured (distributed.py)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from clear_rl.distributed import Launch, check_launch, launch_problem
from clear_rl.errors import ClearRLError

ALONE = Launch(
    requested_fsdp=False, fsdp_version="2", requested_deepspeed=False, zero_stage="", launched=1,
    distributed_type="NO", num_processes=1, use_cpu=False,
)  # fmt: skip
DDP_ON_CPUS = replace(ALONE, launched=2, distributed_type="MULTI_CPU", num_processes=2, use_cpu=True)
FSDP_ON_GPUS = replace(ALONE, requested_fsdp=True, launched=8, distributed_type="MULTI_GPU", num_processes=8)
ZERO3_ON_GPUS = replace(
    ALONE, requested_deepspeed=True, zero_stage="3", launched=8, distributed_type="DEEPSPEED", num_processes=8
)


@pytest.mark.parametrize("launch", [ALONE, DDP_ON_CPUS, FSDP_ON_GPUS, ZERO3_ON_GPUS])
def test_launches_accelerate_runs_as_configured_pass(launch):
    assert launch_problem(launch) is None


def test_fsdp_on_cpu_processes_is_refused_naming_the_ddp_it_would_be():
    problem = launch_problem(replace(DDP_ON_CPUS, requested_fsdp=True))
    assert "asks for FSDP" in problem and "DDP over gloo" in problem and "multi_gpu.yaml" in problem


def test_processes_that_would_each_train_alone_are_refused():
    # fsdp.yaml with use_cpu: false on a machine without GPUs: no process group, two trainings.
    problem = launch_problem(replace(FSDP_ON_GPUS, launched=2, distributed_type="NO", num_processes=1))
    assert "2 independent trainings writing one output folder" in problem and "--cpu" in problem
    # A process group smaller than the launch.
    assert "process group holds 2" in launch_problem(replace(FSDP_ON_GPUS, num_processes=2))


def test_deepspeed_without_an_accelerator_and_fsdp1_are_refused():
    problem = launch_problem(replace(DDP_ON_CPUS, requested_deepspeed=True, zero_stage="3"))
    assert "asks for DeepSpeed" in problem and "MULTI_CPU" in problem
    assert "fsdp_version: 2" in launch_problem(replace(FSDP_ON_GPUS, fsdp_version="1"))


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's process state is a singleton: leave none behind for the other tests."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_check_launch_reads_the_launcher_environment_and_refuses_zero3_rollouts_on_shards(
    monkeypatch, fresh_accelerate_state
):
    args = SimpleNamespace(world_size=1, use_cpu=True, ds3_gather_for_generation=True)
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(args)  # a plain single process
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ClearRLError, match="accelerate shards only accelerator processes"):
        check_launch(args)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setattr("clear_rl.distributed.launch_problem", lambda launch: None)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ClearRLError, match="ds3_gather_for_generation"):
        check_launch(replace_args(args, ds3_gather_for_generation=False))


def replace_args(args, **changes):
    return SimpleNamespace(**{**vars(args), **changes})
