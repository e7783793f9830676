"""Refuse a launch that accelerate would not run the way its config says.

`accelerate launch` starts the processes and hands each one the config through its environment,
but each process decides for itself what it runs, and some configs are quietly run another way:

- FSDP and DeepSpeed shard only accelerator processes (CUDA, XPU, ...): CPU processes launched
  with `recipes/accelerate/fsdp.yaml` and `use_cpu: true` train as plain DDP over gloo;
- processes that find no accelerator and are not told `use_cpu` start no process group at all:
  N processes become N independent single-process trainings writing one output folder;
- FSDP1 (`fsdp_version: 1`) cannot gather the model once for a rollout (see trainers/sharding.py),
  so ranks that restore different rows would wait on each other's collectives.

`check_launch` runs first in `clear-rl train`, before anything is written, and names what would
run instead. It reads what accelerate itself decided (`PartialState`, built from the recipe's
training arguments), so a launch accelerate does honour is never refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from clear_rl.errors import ClearRLError

# accelerate turns FSDP on only for these process kinds (`AcceleratorState.__init__`).
ACCELERATOR_KINDS = (
    "MULTI_GPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_NPU", "MULTI_XPU", "MULTI_HPU", "MULTI_NEURON",
)  # fmt: skip
DDP_ON_CPUS = "recipes/accelerate/multi_gpu.yaml with --cpu (or training.use_cpu=true)"


@dataclass(frozen=True)
class Launch:
    """What the launcher asked for (`requested_*`, `launched`) and what this process runs."""

    requested_fsdp: bool
    fsdp_version: str
    requested_deepspeed: bool
    zero_stage: str
    launched: int  # processes the launcher started (WORLD_SIZE)
    distributed_type: str  # accelerate's DistributedType name for this process
    num_processes: int  # processes in this process's group
    use_cpu: bool

    @classmethod
    def of_this_process(cls, args, env: Mapping[str, str] = os.environ) -> Launch:
        """Read the launcher's environment and accelerate's state (built from `args`, the recipe's
        TrainingArguments, as Trainer builds it)."""
        from accelerate import PartialState

        args.world_size  # noqa: B018 (builds accelerate's PartialState from the training arguments)
        state = PartialState()

        def flag(name: str) -> bool:
            return env.get(name, "false").lower() == "true"

        return cls(
            requested_fsdp=flag("ACCELERATE_USE_FSDP"),
            fsdp_version=env.get("FSDP_VERSION", "1"),
            requested_deepspeed=flag("ACCELERATE_USE_DEEPSPEED"),
            zero_stage=env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", ""),
            launched=int(env.get("WORLD_SIZE", "1") or 1),
            distributed_type=str(state.distributed_type).rsplit(".", 1)[-1],
            num_processes=state.num_processes,
            use_cpu=bool(args.use_cpu) or flag("ACCELERATE_USE_CPU"),
        )


def launch_problem(launch: Launch) -> str | None:
    """Why accelerate would not run this launch as configured, or None."""
    if launch.launched > 1 and launch.num_processes != launch.launched:
        why = (
            "no accelerator was found and accelerate starts a CPU process group only with --cpu or "
            "training.use_cpu=true"
            if launch.num_processes == 1
            else f"their process group holds {launch.num_processes}"
        )
        return (
            f"accelerate launched {launch.launched} processes, but each would train on its own ({why}): "
            f"{launch.launched} independent trainings writing one output folder. For DDP on CPUs "
            f"launch {DDP_ON_CPUS}; FSDP and DeepSpeed need GPUs"
        )
    sharded = launch.distributed_type in ACCELERATOR_KINDS or launch.distributed_type == "DEEPSPEED"
    if launch.requested_fsdp and not sharded:
        instead = "DDP over gloo" if launch.distributed_type == "MULTI_CPU" else "one unsharded process"
        return (
            f"the accelerate config asks for FSDP, but accelerate shards only accelerator processes "
            f"(GPUs): these CPU processes would train as {instead} ({launch.distributed_type}), with "
            f"every parameter on every process. Launch on GPUs, or for DDP on CPUs launch {DDP_ON_CPUS}"
        )
    if launch.requested_fsdp and launch.fsdp_version != "2":
        return (
            f"the accelerate config asks for FSDP version {launch.fsdp_version}; clear-rl trains under "
            "FSDP2 (it gathers the model once per rollout, which FSDP1 cannot): set fsdp_version: 2, "
            "as recipes/accelerate/fsdp.yaml does"
        )
    if launch.requested_deepspeed and launch.distributed_type != "DEEPSPEED":
        return (
            f"the accelerate config asks for DeepSpeed, but accelerate runs DeepSpeed only in "
            f"accelerator processes (GPUs): these would train without it ({launch.distributed_type}). "
            f"Launch on GPUs, or for DDP on CPUs launch {DDP_ON_CPUS}"
        )
    return None


def check_launch(args) -> None:
    """Raise a `ClearRLError` naming what accelerate would do instead, for a launch it would not run
    as configured (see the module docstring). `args`: the recipe's training arguments."""
    launch = Launch.of_this_process(args)
    problem = launch_problem(launch)
    if problem:
        raise ClearRLError(problem)
    if launch.zero_stage == "3" and getattr(args, "ds3_gather_for_generation", True) is False:
        raise ClearRLError(
            "training.ds3_gather_for_generation: false samples rollouts on ZeRO-3's sharded weights, "
            "fetching each part as it runs, and ranks that restore different rows then wait on each "
            "other; clear-rl gathers the weights once per rollout: leave it true"
        )
