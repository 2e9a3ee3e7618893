"""Module-tree primitives: the one function that swaps a submodule, and the one parameter counter.

``replace_module`` is the only place in fwsvd that assigns a new submodule (compression, densifying,
rebuilding a saved model all go through it), so how a swap is done is decided once.
"""

from __future__ import annotations

from torch import nn

def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified ``name`` inside ``model`` (the submodule there must exist)."""
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not hasattr(parent, attribute):
        raise ValueError(f"{type(model).__name__} has no submodule {name!r} to replace")
    setattr(parent, attribute, module)


def count_parameters(model: nn.Module) -> int:
    """Every parameter of ``model`` (shared ones once, as ``parameters()`` yields them)."""
    return sum(parameter.numel() for parameter in model.parameters())
