"""A third-party warning about 4-bit weights, held back until 4-bit weights are used.

bitsandbytes, when imported on a CPU with AVX512-BF16 and without the `kernels` package, logs
"Failed to load CPU gemm_4bit_forward from kernels-community". It is imported eagerly by peft
(`peft.helpers`, which `transformers.trainer_utils` imports whenever peft is installed) and by
diffusers' quantizers, so every command that touches a trainer or a model printed it, though
only 4-bit weights use that kernel. The record is kept, not dropped: `release_4bit_notices`
(called where clear-rl makes or loads 4-bit weights) logs it then.
"""

from __future__ import annotations

import logging

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


class _HeldUntilUsed(logging.Filter):
    """Keeps the records whose message contains `marker` until `release`, passes all others."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker, self.held, self.released = marker, [], False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.released or self.marker not in record.getMessage():
            return True
        self.held.append(record)
        return False

    def release(self, logger: logging.Logger) -> None:
        self.released = True
        held, self.held = self.held, []
        for record in held:
            logger.handle(record)


_CPU_4BIT_KERNEL = _HeldUntilUsed("gemm_4bit_forward")


def hold_4bit_notices() -> None:
    """Hold bitsandbytes' CPU 4-bit kernel notice (done when clear_rl is imported)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if _CPU_4BIT_KERNEL not in logger.filters:
        logger.addFilter(_CPU_4BIT_KERNEL)


def release_4bit_notices() -> None:
    """4-bit weights are being used: log the held notice, and any later one, as usual."""
    _CPU_4BIT_KERNEL.release(logging.getLogger(BNB_CPU_LOGGER))
