"""The target layers of a model as a table: block, name, shape, parameters, break-even rank."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from torch import nn

from fwsvd.factorize.layers import dense_weight
from fwsvd.surgery.modules import count_parameters
from fwsvd.surgery.targets import find_blocks, find_targets, target_shapes
from fwsvd.view.analysis import block_of
from fwsvd.view.sizes import SizeAt, size_at

def architecture_frame(model: nn.Module) -> pd.DataFrame:
    """One row per target layer, in model order: its block, name inside the block, shape and parameters.

    ``break_even_rank`` is m·n/(m+n): at or above it a low-rank pair holds more weights than the layer.
    """
    blocks = find_blocks(model)
    rows = []
    for name, module in find_targets(model).items():
        out_features, in_features = dense_weight(module).shape
        block = block_of(name, blocks)
        bias = 0 if module.bias is None else module.bias.numel()
        rows.append({
            "layer": name,
            "block": block,
            "name_in_block": name[len(block) + 1:],
            "out_features": out_features,
            "in_features": in_features,
            "weight_params": out_features * in_features,
            "bias_params": bias,
            "full_rank": min(out_features, in_features),
            "break_even_rank": out_features * in_features / (out_features + in_features),
        })
    return pd.DataFrame(rows)


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Headline numbers of a model: class, parameters, how many of them the target layers' weights hold.

    ``target_parameters`` counts the target layers' weight matrices (m·n each), what factorization replaces
    and what the rank explorer calls the dense weights (:mod:`fwsvd.view.sizes`); their biases stay as they are
    and are given apart (``target_biases``)."""
    frame = architecture_frame(model)
    total = count_parameters(model)
    target = int(frame["weight_params"].sum())
    return {
        "model_class": type(model).__name__,
        "parameters": total,
        "target_layers": len(frame),
        "blocks": int(frame["block"].nunique()),
        "target_parameters": target,
        "target_biases": int(frame["bias_params"].sum()),
        "target_share": target / total if total else 0.0,
    }


def size_of(model: nn.Module, ranks: Mapping[str, int] | None = None) -> SizeAt:
    """The whole model's parameters and its target layers' weights, and what ``ranks`` (layer: rank; layers
    left out or at full rank stay dense) would keep: the figures every page and command shows. On a compressed
    model the target weights are those of its remaining dense targets only: measure the dense model."""
    return size_at(count_parameters(model), ranks or {}, target_shapes(find_targets(model)))
