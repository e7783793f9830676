"""`python tests/sharded_cpu.py ARGS` = `clear-rl ARGS` in a CPU process that accelerate shards.

accelerate turns FSDP and DeepSpeed on only for accelerator processes (CUDA, XPU, ...): a CPU process
launched with an FSDP or DeepSpeed config runs unsharded (clear-rl refuses to train that way, see
clear_rl/distributed.py). The tests launch this script with such a config
(`accelerate launch --config_file recipes/accelerate/fsdp.yaml tests/sharded_cpu.py train ...`), and
it makes accelerate treat the CPU process as an accelerator process: the process group is gloo, the
device is the CPU (`ACCELERATE_TORCH_DEVICE`), and accelerate then applies FSDP2, DeepSpeed (with
`DS_ACCELERATOR=cpu`) or DDP as the config says. Test-only: the library never does this.

More test switches, by environment variable:
- `CLEAR_RL_TEST_LOG=FILE`: the main process writes the run's `log_history` (full-precision logged
  losses) to FILE when training ends;
- `CLEAR_RL_TEST_RESTORING_RANKS=0,2`: GRPO rollouts restore on those ranks (`restore_policy:
  always`) and never on the others, so ranks restore differently at every step;
- `CLEAR_RL_TEST_SHARES=FOLDER`: each process writes `rank-<i>.json` when training ends: the
  share of the model's parameters and of the optimizer's state it holds (docs/many-gpus.md);
- `CLEAR_RL_TEST_SAME_WORK=off`: the same-work rule off although the model is sharded, to measure
  its cost; valid only where no rank ever restores (else the ranks' collectives disagree).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
from pathlib import Path


def shard_cpu_processes() -> None:
    """Make accelerate treat this launched CPU process as an accelerator process over gloo."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    def gloo_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        return "gloo", DistributedType.MULTI_GPU

    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
    PartialState._prepare_backend = gloo_backend
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        skip_deepspeed_shm_build()


def skip_deepspeed_shm_build() -> None:
    """DeepSpeed's CPU accelerator compiles a shared-memory all-reduce kernel (a C++ toolchain, tens
    of seconds) when it starts its process group; training's collectives go through gloo anyway."""
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # (not `torch` itself)


def write_log_history(path: str):
    """The main process writes `state.log_history` to `path`."""

    def write(trainer) -> None:
        if trainer.is_world_process_zero():
            Path(path).write_text(json.dumps(trainer.state.log_history))

    return write


def after_training(action) -> None:
    """Run `action(trainer)` on every process when `Trainer.train` returns."""
    from transformers import Trainer

    train = Trainer.train

    def train_then(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        action(self)
        return result

    Trainer.train = train_then


def held_share(trainer) -> dict[str, float]:
    """This process's share of the parameters (all, trainable) and of the optimizer's state."""
    from torch.distributed.tensor import DTensor

    def sizes(parameter) -> tuple[int, int]:  # (held here, whole)
        if hasattr(parameter, "ds_tensor"):  # ZeRO-3's partition
            return parameter.ds_tensor.numel(), parameter.ds_numel
        if isinstance(parameter, DTensor):  # FSDP2's shard
            return parameter.to_local().numel(), parameter.numel()
        return parameter.numel(), parameter.numel()

    def share(parameters) -> float:
        held, whole = zip(*(sizes(p) for p in parameters))
        return sum(held) / sum(whole)

    parameters = list(trainer.model.parameters())
    trainable = [p for p in parameters if p.requires_grad]
    whole_state = 2 * sum(sizes(p)[1] for p in trainable)  # AdamW: exp_avg and exp_avg_sq
    if trainer.is_deepspeed_enabled:  # fp32 master partitions and their AdamW state
        optimizer = trainer.deepspeed.optimizer
        # ZeRO-3 names its fp32 partitions fp32_partitioned_groups_flat, ZeRO-1/2 single_partition_of_fp32_groups.
        flats = (
            getattr(optimizer, "fp32_partitioned_groups_flat", None)
            or optimizer.single_partition_of_fp32_groups
        )
        state = [optimizer.optimizer.state[flat] for flat in flats]
    else:
        state = [trainer.optimizer.optimizer.state[p] for p in trainable]
    held_state = sum(
        (v.to_local() if isinstance(v, DTensor) else v).numel()
        for entry in state
        for k, v in entry.items()
        if k in ("exp_avg", "exp_avg_sq")
    )
    return {
        "parameters": share(parameters),
        "trainable parameters": share(trainable),
        "optimizer state": held_state / whole_state,
    }


def write_held_share(folder: str):
    def write(trainer) -> None:
        path = Path(folder) / f"rank-{trainer.args.process_index}.json"
        path.write_text(json.dumps(held_share(trainer)))

    return write


def same_work_off() -> None:
    """Train the sharded model without the same-work rule (to time it; see the module docstring)."""
    import clear_rl.trainers.sharding

    clear_rl.trainers.sharding.needs_same_work = lambda accelerator: False


def restore_on_ranks(ranks: set[int]) -> None:
    """GRPO rollouts always restore on `ranks` and never on the others."""
    from clear_rl.trainers.grpo import InterleavedGRPOTrainer

    init = InterleavedGRPOTrainer.__init__

    def init_per_rank(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.args.restore_policy = "always" if self.accelerator.process_index in ranks else "never"

    InterleavedGRPOTrainer.__init__ = init_per_rank


def sharded_launch() -> bool:
    """Whether `accelerate launch` was given an FSDP or DeepSpeed config (DDP launches run as they are)."""
    return any(
        os.environ.get(f"ACCELERATE_USE_{kind}", "").lower() == "true" for kind in ("FSDP", "DEEPSPEED")
    )


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: where a hung rank waits
    if sharded_launch():
        shard_cpu_processes()
    if os.environ.get("CLEAR_RL_TEST_LOG"):
        after_training(write_log_history(os.environ["CLEAR_RL_TEST_LOG"]))
    if os.environ.get("CLEAR_RL_TEST_SHARES"):
        after_training(write_held_share(os.environ["CLEAR_RL_TEST_SHARES"]))
    if os.environ.get("CLEAR_RL_TEST_SAME_WORK") == "off":
        same_work_off()
    if os.environ.get("CLEAR_RL_TEST_RESTORING_RANKS"):
        restore_on_ranks({int(r) for r in os.environ["CLEAR_RL_TEST_RESTORING_RANKS"].split(",")})
    from clear_rl.cli import main

    sys.exit(main())
