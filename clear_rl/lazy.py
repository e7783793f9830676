"""Packages whose public names are imported on first use (PEP 562), so importing them stays light.

`clear_rl.models`, `clear_rl.models.composed` and `clear_rl.models.bagel` list where each name lives;
the recipe checks and the CLI import a light submodule of them (settings, the registry, a backbone's
declaration) without pulling in torch, diffusers and transformers.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, where: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`, whose name N is
    `<package>.<where[N]>.N`, imported (and kept on the package) when first read."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
