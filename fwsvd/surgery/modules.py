"""Module-tree primitives every stage shares: the dense weight of a Linear or Conv1D, the one function that
swaps a submodule, and the one parameter counter.

``replace_module`` is the only place in fwsvd that assigns a new submodule (compression, densifying,
rebuilding a saved model all go through it), so how a swap is done is decided once.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

#: Modules whose weight we know how to factorize.
FACTORIZABLE = (nn.Linear, Conv1D)


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The weight as nn.Linear stores it, (out_features, in_features), for Linear and Conv1D alike.

    Conv1D (GPT-2) stores its weight transposed, (in, out); this is the one place that knows it.
    """
    if isinstance(module, nn.Linear):
        return module.weight
    if isinstance(module, Conv1D):
        return module.weight.t()
    raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(module).__name__}")


def source_kind_of(module: nn.Module) -> str:
    """"conv1d" for transformers' Conv1D, "linear" for nn.Linear."""
    return "conv1d" if isinstance(module, Conv1D) else "linear"


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
