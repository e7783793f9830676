"""Which stored denoising steps of each rollout the Flow-GRPO loss re-runs.

Two ways, `flow_step_selection` in a GRPO recipe:

- `random` (clear-rl's default, the paper's "one randomly chosen denoising step per trajectory"):
  `flow_train_steps` distinct steps drawn per rollout from a seeded generator;
- `round_robin` (CLEAR's released trainer, `trajectory_selection_strategy round_robin`,
  haoxiangzhao12138/CLEAR train/grpo/bagel_interleave_grpo_trainer.py `_compute_loss` @411d6bd):
  a counter that advances once per restoring rollout picks step `counter % steps`, so every step is
  trained equally often. The release trains one (sample, step) pair per micro-batch; its script runs
  one rollout per micro-batch (per_device_train_batch_size 1), where the two agree. With several
  rows per micro-batch, clear-rl trains one step of each restoring row. `flow_train_steps: K` takes
  K consecutive steps from the counter's.
"""

from __future__ import annotations

import torch

from clear_rl.choices import FLOW_STEP_SELECTIONS, FlowStepSelection


def choose_flow_steps(
    restored: torch.Tensor,
    steps: int,
    k: int,
    selection: FlowStepSelection,
    generator: torch.Generator,
    counter: int,
) -> tuple[torch.Tensor, int]:
    """(B, k) sorted step indices per row (any valid ones for rows that did not restore) and the
    round-robin counter after this batch (unchanged under `random`)."""
    batch = restored.shape[0]
    if selection == "random":
        chosen = torch.stack([torch.randperm(steps, generator=generator)[:k] for _ in range(batch)])
        return chosen.sort(dim=1).values, counter
    if selection != "round_robin":
        raise ValueError(
            f"flow_step_selection must be one of {list(FLOW_STEP_SELECTIONS)}, got {selection!r}"
        )
    rows = []
    for did in restored.tolist():
        rows.append([(counter + j) % steps for j in range(k)] if did else list(range(k)))
        counter += int(bool(did))
    return torch.tensor(rows, dtype=torch.long).sort(dim=1).values, counter
