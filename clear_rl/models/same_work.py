"""The same-work rule of sharded training: every rank runs the same parts, and every part trains.

Under FSDP2 and DeepSpeed ZeRO-3 a part's weights are gathered from every rank when it runs and its
gradients are reduced over every rank after backward, so the ranks must run the same parts in the
same order, and each trainable parameter of those parts must get a gradient on every rank (PyTorch's
FSDP2 assumes SPMD code; ZeRO-3 hangs when ranks fetch different submodules). A CLEAR batch breaks
that on its own: a rank whose rows do not restore would skip the bridge and the restoration head.

So, when a backbone's `same_work` is on (the trainers turn it on for sharded models only, see
trainers/sharding.py), each forward runs every part that another rank's forward may run, on a
one-row "idle" input where this batch has nothing for it, and adds the result to the logits with
weight zero: the values are unchanged and the parts' parameters get (zero) gradients, as DDP's
`find_unused_parameters` would have given them. Unsharded runs (one process, DDP) never do this.
"""

from __future__ import annotations

import torch


def with_idle_work(logits: torch.Tensor, idle: list[torch.Tensor]) -> torch.Tensor:
    """`logits` plus zero times each idle output: the same values, and a gradient path (of zeros)
    to every parameter that produced them."""
    if not idle:
        return logits
    zero = sum(0.0 * t.float().sum() for t in idle)
    return logits + zero.to(logits.dtype)
