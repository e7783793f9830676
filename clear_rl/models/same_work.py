"""The same-work rule of sharded training: every rank runs the same parts, and every part trains.

Under FSDP2 and DeepSpeed ZeRO-3 a part's weights are gathered from every rank when it runs and its
gradients are reduced over every rank after backward, so the ranks must run the same parts in the
same order, and each trainable parameter of those parts must get a gradient on every rank (PyTorch's
FSDP2 assumes SPMD code; ZeRO-3 hangs when ranks fetch different submodules). A CLEAR batch breaks
that on its own: a rank whose rows do not restore would skip the bridge and the restoration head.

So, when a backbone's `same_work` is set (trainers/sharding.py sets it for sharded models) and
some rank's batch restores (`active`, decided by all ranks together), each forward runs every part
in `SameWork.parts` that this rank's batch leaves out on an "idle" row, and its output joins the
pass where a real one would (the bridge's into the embeddings, the head's into `flow_velocity`)
with weight zero: the values are unchanged, the same module outputs receive gradients on every
rank, and the parts' parameters get zero gradients, which is what DDP's reduction gives a part
another rank used. With `passes`, the stages also run their optional passes on every rank (the
degraded image's encode, the distill teacher's pass, stage 2's restorations). When no rank
restores, no rank runs any of it, and nothing idle runs either. A part that no rank ran for real
before an optimizer step loses the zero gradients again (trainers/sharding.py), so the optimizer
leaves it alone, as it does without sharding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SameWork:
    """A backbone's same-work settings, and the parts it ran for real since the last optimizer step."""

    parts: tuple[str, ...] = ("bridge", "head")  # run idle where a batch has nothing for them
    passes: bool = True  # the stages' optional passes run on every rank too
    # Parts run idle even when no rank restores: a stage whose loss needs them to have a gradient
    # at all (stage 2 training the bridge alone, on batches that may hold no restoring row).
    keep: tuple[str, ...] = ()
    active: bool = True  # some rank's batch restores (set by the trainers for each batch)
    ran: set[str] = field(default_factory=set)  # parts that ran on real rows with gradients on

    def needs_idle(self, part: str, runs: bool) -> bool:
        """Whether `part`, which this forward runs for real iff `runs`, must run on an idle row."""
        if runs and torch.is_grad_enabled():
            self.ran.add(part)
        return part in self.parts and not runs and (self.active or part in self.keep)


def runs_every_pass(model) -> bool:
    """Whether the stages run their optional passes even where no row of this rank needs them."""
    work = getattr(model, "same_work", None)
    return work is not None and work.passes and work.active


def with_idle_work(tensor: torch.Tensor, idle: list[torch.Tensor]) -> torch.Tensor:
    """`tensor` (what a real part's output would join) plus zero times each idle output: the same
    values, and a gradient path (of zeros) to every parameter that produced them."""
    if not idle:
        return tensor
    zero = sum(0.0 * t.float().sum() for t in idle)
    return tensor + zero.to(tensor.dtype)
