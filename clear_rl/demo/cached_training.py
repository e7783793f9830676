"""The loop stage 0 trains a small part with, on inputs a frozen model computed once.

The demo's head (head.py) and bridge (bridge_align.py) each train alone while everything they read
stays frozen, so their inputs are cached and only the loss differs: AdamW, a linear warmup into a
cosine decay, random rows a step drawn from one seeded generator. No library trainer caches a
frozen conditioning model's outputs, hence this short loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

# (rows, generator) -> (loss, scalars the progress bar shows); the generator has drawn `rows` already.
StepLoss = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def train_on_cache(
    module: torch.nn.Module,
    num_rows: int,
    step_loss: StepLoss,
    steps: int,
    desc: str,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    warmup_steps: int = 20,
    seed: int = 0,
) -> list[float]:
    """Train `module` for `steps` steps of `batch_size` random cached rows; returns the loss curve."""
    module.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(module.parameters(), lr=learning_rate)
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, 1.0 / max(1, warmup_steps), total_iters=warmup_steps
    )
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup_steps))
    schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])
    generator = torch.Generator().manual_seed(seed)
    losses = []
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        rows = torch.randint(num_rows, (batch_size,), generator=generator)
        loss, shown = step_loss(rows, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0:
            shown = {name: f"{value.item():.3f}" for name, value in shown.items()}
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", **shown)
    module.eval().requires_grad_(False)
    return losses
