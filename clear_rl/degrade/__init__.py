"""MMD-Bench: the 16 image corruptions of the CLEAR benchmark, batched in torch and seeded.

```python
from clear_rl.degrade import corrupt, choose_corruptions
degraded = corrupt(images, "motion_blur", "high", seeds=[0, 1, 2])  # (B, 3, H, W) in [0, 1]
```
Faithful to the released generator (see /shared/MMD_BENCH_SPEC.md): same formulas, constants,
draw ranges, level-gated parts and quirks, in RGB.
"""

from clear_rl.degrade.engine import corrupt, corrupt_images, corrupt_pil, corrupt_rows
from clear_rl.degrade.registry import (
    CATEGORIES,
    CORRUPTIONS,
    LEVELS,
    Corruption,
    choose_corruptions,
    get_corruption,
    resolve_intensity,
)
from clear_rl.seeds import derive_seed

__all__ = [
    "CATEGORIES",
    "CORRUPTIONS",
    "LEVELS",
    "Corruption",
    "choose_corruptions",
    "corrupt",
    "corrupt_images",
    "corrupt_pil",
    "corrupt_rows",
    "derive_seed",
    "get_corruption",
    "resolve_intensity",
]
