"""Write one benchmark's section of `benchmarks/RESULTS.md`, leaving the other sections alone.

Each benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, so
benchmarks can be re-run one at a time without losing the others' figures.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import torch

from clear_rl.io.atomic import write_text
from clear_rl.machine import describe_machine

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nWritten by `make bench` (each section by its own script).\n"


def machine_line() -> str:
    """One line describing where the figures were measured (CPU model and vector extensions,
    cores, GPU, versions: the same code gives other figures on other kernels)."""
    return (
        f"Measured {date.today().isoformat()} on {describe_machine()}; "
        f"{torch.get_num_threads()} torch threads."
    )


def update_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section of benchmark `name` with `markdown`."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{markdown.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    write_text(path, text)
