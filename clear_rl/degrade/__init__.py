"""MMD-Bench: the 16 image corruptions of the CLEAR benchmark, seeded, in two backends.

```python
from clear_rl.degrade import corrupt, choose_corruptions
degraded = corrupt(images, "motion_blur", "high", seeds=[0, 1, 2])  # (B, 3, H, W) in [0, 1]
degraded = corrupt(images, "motion_blur", "high", seeds=[0, 1, 2], backend="torch")  # batched
```
Faithful to the released generator (see /shared/MMD_BENCH_SPEC.md): same formulas, constants,
draw ranges, level-gated parts and quirks, in RGB. The `opencv` backend makes the release's
OpenCV calls one image at a time (the CPU default); the `torch` backend batches on any device
(the CUDA default); both draw from draws.py, so one seed gives one corruption in either.
"""

from clear_rl.degrade.engine import (
    BACKENDS,
    corrupt,
    corrupt_images,
    corrupt_pil,
    corrupt_rows,
    resolve_backend,
)
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
    "BACKENDS",
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
    "resolve_backend",
    "resolve_intensity",
]
