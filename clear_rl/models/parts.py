"""Where a backbone's named parts live among its parameters: the helpers its declaration uses.

`model.trainable_parts` and LoRA's target selection speak in part names (settings.PARTS); each
backbone says which of its modules a name covers (`part_patterns`: regexes matched at the start
of a name) and where LoRA looks for the LLM's and the restoration branch's layers (`lora_scopes`),
as methods of its model (models/backbone.py `TrainableBackbone`): the composed model in
models/composed/parts.py, BAGEL in models/bagel/trainable.py. What is shared lives here.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    """The module path of `target` inside `model` (by identity), or None."""
    if target is None:
        return None
    return next((name for name, module in model.named_modules() if module is target), None)


def find_attr(root: nn.Module, names: Iterable[str]) -> nn.Module | None:
    """The first of the attributes `names` that is a module, on `root` or on `root.model`."""
    for holder in (root, getattr(root, "model", None)):
        for name in names:
            module = getattr(holder, name, None) if holder is not None else None
            if isinstance(module, nn.Module):
                return module
    return None
