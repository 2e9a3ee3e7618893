"""The layers fwsvd factorizes and how their weights are laid out: nn.Linear and transformers' Conv1D (GPT-2).

The lowest torch-level module: decompositions, surgery and Fisher estimation all read weights through it.
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
