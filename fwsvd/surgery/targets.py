"""Which layers are compressed: every Linear (or GPT-2 style Conv1D) inside the transformer blocks.

The blocks are found by structure, never by model name: a transformer stacks identical layers in an
``nn.ModuleList`` (``bert.encoder.layer``, ``distilbert.transformer.layer``, ``transformer.h`` ...).
Embeddings, poolers and task heads live outside such lists, so they are left alone — as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from fwsvd.surgery.lowrank import LowRankLinear
from fwsvd.factorize.layers import FACTORIZABLE, dense_weight

TargetFilter = Callable[[str, nn.Module], bool]


def target_shapes(targets: Mapping[str, nn.Module]) -> dict[str, tuple[int, int]]:
    """{name: (out_features, in_features)} of layers from :func:`find_targets` (what rank rules need)."""
    return {name: tuple(dense_weight(module).shape) for name, module in targets.items()}


def _contains_factorizable(module: nn.Module) -> bool:
    return any(isinstance(m, FACTORIZABLE) for m in module.modules())


def _block_names(named_modules: list[tuple[str, nn.Module]]) -> list[str]:
    blocks: list[str] = []
    for name, module in named_modules:
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(outer + ".") for outer in blocks):
            continue  # a list nested inside a block already found
        child_types = {type(child) for child in module}
        if len(child_types) == 1 and _contains_factorizable(module[0]):
            blocks.append(name)
    return blocks


def find_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the transformer block stacks: outermost ModuleLists of same-type children
    that hold Linear/Conv1D layers. An encoder-decoder model has two such stacks."""
    return _block_names(list(model.named_modules()))


def find_targets(model: nn.Module, filter_fn: TargetFilter | None = None) -> dict[str, nn.Module]:
    """{qualified name: layer} for every Linear / Conv1D inside the transformer blocks, in model order.

    ``filter_fn(name, module)`` narrows the default set (e.g. only the FFN layers).
    Raises ValueError when the model has no recognisable transformer blocks.
    """
    named_modules = list(model.named_modules())  # one walk of the tree serves every question below
    blocks = _block_names(named_modules)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no transformer blocks (an nn.ModuleList of identical layers "
            "holding Linear or Conv1D modules); fwsvd compresses the Linear layers inside such blocks"
        )
    prefixes = tuple(block + "." for block in blocks)
    # The two halves of an already factorized layer are not targets of their own.
    factorized = tuple(name + "." for name, module in named_modules if isinstance(module, LowRankLinear))
    targets = {
        name: module
        for name, module in named_modules
        if name.startswith(prefixes) and isinstance(module, FACTORIZABLE)
        and not (factorized and name.startswith(factorized))
    }
    if filter_fn is not None:
        targets = {name: module for name, module in targets.items() if filter_fn(name, module)}
    return targets
