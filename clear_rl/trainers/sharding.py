"""What the trainers do when accelerate shards the model (FSDP2, DeepSpeed; ZeRO-2 too, see
`needs_same_work`).

A sharded model gathers each part's weights from every rank when the part runs, so every rank must
run the same parts in the same order (models/same_work.py). Three things keep it so:

- `turn_on_same_work` gives the backbone a `SameWork`, and `restores_anywhere` (once per batch, all
  ranks together) makes it active when some rank's batch restores: the backbone then runs the
  bridge and the restoration head in every forward (an idle row where the batch has none), and
  the stages run their optional passes (the degraded encode, the teacher pass, stage 2's
  restorations) on every rank; parts no rank ran for real lose their zero gradients before the
  optimizer step (`_DropIdleGradients`);
- `any_rank`: a pass that runs only when some row restores (the reward-time encode) is decided by
  all ranks together;
- `full_weights`: rollouts run on gathered weights (DeepSpeed through TRL's unwrapping, FSDP2 by
  unsharding every unit once), so that sampling, where ranks restore different rows and stop at
  different lengths, makes no collective call at all.

Unsharded runs (one process, DDP) take none of these paths and compute exactly what they did (the
one exception: stage 2 without `restore_rows_only` keeps an idle bridge, `SameWork.keep`, so that a
bridge-only loss has a gradient on a batch without restoring rows).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from accelerate.utils import DistributedType
from transformers import TrainerCallback
from trl.models.utils import unwrap_model_for_generation

from clear_rl.models.registry import unified_core
from clear_rl.models.same_work import SameWork

logger = logging.getLogger(__name__)


def is_sharded(accelerator) -> bool:
    """Whether `accelerator` shards parameters across ranks: FSDP, or DeepSpeed ZeRO stage 3."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def needs_same_work(accelerator) -> bool:
    """Whether every rank must run the same parts with gradients for all: sharded parameters (FSDP,
    ZeRO-3), and any DeepSpeed stage, whose reduction covers the parameters that got a gradient
    (ZeRO-2 stops on a size mismatch when ranks restore differently)."""
    return is_sharded(accelerator) or accelerator.distributed_type == DistributedType.DEEPSPEED


def turn_on_same_work(trainer, keep: tuple[str, ...] = ()) -> None:
    """Give the backbone a `SameWork` when the trainer's accelerator shards it (call after Trainer's
    init), and drop the zero gradients of parts no rank ran before each optimizer step. `keep`:
    parts the stage's loss needs on every batch (`SameWork.keep`), run idle without sharding too."""
    if needs_same_work(trainer.accelerator):
        work = SameWork(keep=keep)
    elif keep:
        work = SameWork(parts=keep, passes=False, keep=keep)
    else:
        return
    unified_core(trainer.model).same_work = work
    trainer.add_callback(_DropIdleGradients(trainer))
    logger.info("same-work rule on: %s run on every rank (models/same_work.py)", ", ".join(work.parts))


class _DropIdleGradients(TrainerCallback):
    """Before each optimizer step, parts that no rank ran for real since the last one lose the zero
    gradients of their idle runs, so the optimizer leaves them alone (no momentum step), as it
    does when a part goes unused without the rule. DeepSpeed keeps gradients in its own buffers:
    under ZeRO-3 such a part keeps its zero gradient, as any unused parameter does there."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        unified = unified_core(trainer.model)
        work, parts = unified.same_work, unified.same_work_parts()
        names = [name for name in work.parts if name in parts]
        ran = torch.tensor([float(name in work.ran) for name in names], device=trainer.accelerator.device)
        work.ran.clear()
        if trainer.is_deepspeed_enabled or not names:
            return
        if trainer.accelerator.num_processes > 1:
            ran = trainer.accelerator.reduce(ran, reduction="sum")
        for name, count in zip(names, ran.tolist()):
            if count == 0:
                for parameter in parts[name].parameters():
                    parameter.grad = None


def restores_anywhere(trainer, restoring: bool) -> bool:
    """Whether some rank's batch restores (this rank's `restoring` when unsharded); the backbone's
    same-work rule is active for the batch exactly then. Call on every rank, once per batch."""
    anywhere = any_rank(trainer.accelerator, restoring)
    work = unified_core(trainer.model).same_work
    if work is not None:
        work.active = anywhere
    return anywhere


def any_rank(accelerator, flag: bool) -> bool:
    """`flag` on this rank, or, under sharding, whether it holds on any rank (one small all-reduce)."""
    if not needs_same_work(accelerator):
        return flag
    local = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(local, reduction="sum").item() > 0)


@contextlib.contextmanager
def full_weights(model_wrapped, accelerator, gather_deepspeed3_params: bool = True) -> Iterator:
    """The unwrapped model with every weight whole on this rank, for sampling and the reward encode.

    TRL's `unwrap_model_for_generation` gathers ZeRO-3's parameters and removes its hooks; FSDP2's
    units are unsharded once here. Inside, the model makes no collective call, so ranks may run it
    differently (and `same_work` is off); entering and leaving are collective: call on every rank.
    """
    with unwrap_model_for_generation(
        model_wrapped, accelerator, gather_deepspeed3_params=gather_deepspeed3_params
    ) as model:
        unified = unified_core(model)
        same_work, unified.same_work = unified.same_work, None
        try:
            fsdp = accelerator.distributed_type == DistributedType.FSDP
            with _fsdp_unsharded(model_wrapped) if fsdp else contextlib.nullcontext():
                yield model
        finally:
            unified.same_work = same_work


@contextlib.contextmanager
def _fsdp_unsharded(model) -> Iterator[None]:
    """Every FSDP2 unit of `model` unsharded (one all-gather each, in module order) and left so.

    FSDP2's own hooks would reshard each unit after its forward and gather it again at the next
    call, a collective per token. While its units are in the state FSDP uses to recompute
    activations in backward (`PRE_BACKWARD`), its hooks neither gather, reshard nor record the
    forward order (which backward prefetching reads). No public FSDP2 call keeps a whole model
    gathered across many forwards, hence the private state; `reshard` at the end is public.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    from torch.distributed.fsdp._fully_shard._fsdp_common import TrainingState

    states = list({id(s): s for s in (unit._get_fsdp_state() for unit in units)}.values())
    for unit in units:
        unit.unshard()
    before = [state._training_state for state in states]
    for state in states:
        state._training_state = TrainingState.PRE_BACKWARD
    try:
        yield
    finally:
        for state, previous in zip(states, before):
            state._training_state = previous
        for unit in units:
            unit.reshard()
