"""Sub-commands of the `clear-rl` CLI, one module each (see `clear_rl/cli.py`)."""

from __future__ import annotations

import argparse

# Kept literal, not imported from clear_rl.degrade.engine: building the parser must not load torch.
BACKENDS = ("auto", "opencv", "torch")


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """`--backend` for the commands that corrupt images (degrade, prepare)."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="corruption backend: auto (default: torch on a CUDA GPU, else OpenCV), opencv (the "
        "released generator's calls, one image at a time on the CPU) or torch (batched)",
    )
