"""`python tests/sharded_cpu.py ARGS` = `clear-rl ARGS` in a CPU process that accelerate shards.

accelerate turns FSDP and DeepSpeed on only for accelerator processes (CUDA, XPU, ...): a CPU process
launched with an FSDP or DeepSpeed config runs unsharded (clear-rl refuses to train that way, see
clear_rl/distributed.py). The tests launch this script with such a config
(`accelerate launch --config_file recipes/accelerate/fsdp.yaml tests/sharded_cpu.py train ...`), and
it makes accelerate treat the CPU process as an accelerator process: the process group is gloo, the
device is the CPU (`ACCELERATE_TORCH_DEVICE`), and accelerate then applies FSDP2, DeepSpeed (with
`DS_ACCELERATOR=cpu`) or DDP as the config says. Test-only: the library never does this.

Two more test switches, by environment variable:
- `CLEAR_RL_TEST_LOG=FILE`: the main process writes the run's `log_history` (full-precision logged
  losses) to FILE when training ends;
- `CLEAR_RL_TEST_RESTORING_RANKS=0,2`: GRPO rollouts restore on those ranks (`restore_policy:
  always`) and never on the others, so ranks restore differently at every step.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys


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


def write_log_history(path: str) -> None:
    """After `Trainer.train`, the main process writes `state.log_history` to `path`."""
    from transformers import Trainer

    train = Trainer.train

    def train_and_log(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        if self.is_world_process_zero():
            with open(path, "w") as f:
                json.dump(self.state.log_history, f)
        return result

    Trainer.train = train_and_log


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
        write_log_history(os.environ["CLEAR_RL_TEST_LOG"])
    if os.environ.get("CLEAR_RL_TEST_RESTORING_RANKS"):
        restore_on_ranks({int(r) for r in os.environ["CLEAR_RL_TEST_RESTORING_RANKS"].split(",")})
    from clear_rl.cli import main

    sys.exit(main())
