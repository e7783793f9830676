"""`clear-rl train`, killed (os._exit: no cleanup, as a crash or a scheduler's SIGKILL) at a chosen moment.

  python -m tests.interrupted_run MOMENT STEP RECIPE [key.path=value ...]

MOMENT says where the process dies around checkpoint-STEP:
  config         in its save, config.json opened and nothing written (a 0-byte config.json)
  weights        in its save, the weights file half written
  trainer_state  in its save, everything written but half of trainer_state.json
  after          just after the checkpoint is saved whole
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

KILLED = 17  # the exit status of a run this script killed


def _in_checkpoint(path, step: int) -> bool:
    return Path(path).parent.name == f"checkpoint-{step}"


def _die_writing_half(path, data: bytes) -> None:
    Path(path).write_bytes(data[: len(data) // 2])
    os._exit(KILLED)


def install(moment: str, step: int) -> None:
    """Patch the library so the process dies at `moment` of checkpoint-`step`."""
    import transformers.modeling_utils
    from transformers import PretrainedConfig
    from transformers.trainer_callback import CallbackHandler, TrainerState

    if moment == "config":
        to_json_file = PretrainedConfig.to_json_file

        def killed_to_json_file(self, path, *args, **kwargs):
            if _in_checkpoint(path, step):
                open(path, "w").close()
                os._exit(KILLED)
            return to_json_file(self, path, *args, **kwargs)

        PretrainedConfig.to_json_file = killed_to_json_file
    elif moment == "weights":
        save_file = transformers.modeling_utils.safe_save_file

        def killed_save_file(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            if _in_checkpoint(filename, step):
                _die_writing_half(filename, Path(filename).read_bytes())

        transformers.modeling_utils.safe_save_file = killed_save_file
    elif moment == "trainer_state":
        save_to_json = TrainerState.save_to_json

        def killed_save_to_json(self, path):
            save_to_json(self, path)
            if _in_checkpoint(path, step):
                _die_writing_half(path, Path(path).read_bytes())

        TrainerState.save_to_json = killed_save_to_json
    elif moment == "after":
        on_save = CallbackHandler.on_save

        def killed_on_save(self, args, state, control):
            control = on_save(self, args, state, control)
            if state.global_step == step:
                os._exit(KILLED)
            return control

        CallbackHandler.on_save = killed_on_save
    else:
        raise SystemExit(f"unknown moment {moment!r}; see {__doc__}")


def main(argv: list[str]) -> int:
    from clear_rl.cli import main as clear_rl_main

    moment, step, *train = argv
    install(moment, int(step))
    return clear_rl_main(["train", *train])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
