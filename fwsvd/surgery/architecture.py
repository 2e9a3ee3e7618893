"""The target layers of a model as a table: block, name, shape, parameters, break-even rank."""

from __future__ import annotations

from typing import Any

import pandas as pd
from torch import nn

from fwsvd.factorize.layers import dense_weight
from fwsvd.surgery.modules import count_parameters
from fwsvd.surgery.targets import find_blocks, find_targets
from fwsvd.view.analysis import block_of

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
    """Headline numbers of a model: class, parameters, how many of them the target layers hold."""
    frame = architecture_frame(model)
    total = count_parameters(model)
    target = int(frame["weight_params"].sum() + frame["bias_params"].sum())
    return {
        "model_class": type(model).__name__,
        "parameters": total,
        "target_layers": len(frame),
        "blocks": int(frame["block"].nunique()),
        "target_parameters": target,
        "target_share": target / total if total else 0.0,
    }
