"""Model sizes counted one way everywhere: the whole model, its target layers' weights, what a rank setting keeps.

A target layer's *weights* are its m·n matrix entries: what a factorization replaces (by r·(m+n)). Its bias
stays as it is, so it is counted with the rest of the model, never as a compressed weight — the Model page,
the rank explorer, the CLI and the sweeps all count this way. The headline share is of the **whole model**
(embeddings, heads, norms and biases included), as a file on disk or memory in use would show it: at rank
ratio 0.33 the target weights of MiniLM-L6 fall to about 50%, but the whole model only to about 76%.

Torch-free: the whole model's parameter count travels in the rank explorer's snapshot, so the explorer shows
both shares before the model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fwsvd.view.rank_config import is_past_break_even


@dataclass(frozen=True)
class SizeAt:
    """Sizes of a model before and after compression at some ranks."""

    #: every parameter of the dense model, shared ones once
    model_params: int
    #: the target layers' weights (Σ m·n)
    target_weights: int
    #: the target layers' weights kept: r·(m+n) per factorized layer, m·n per layer kept dense
    kept_weights: int

    @property
    def removed(self) -> int:
        """Parameters removed (never negative: layers at or past break-even are counted dense)."""
        return self.target_weights - self.kept_weights

    @property
    def compressed_params(self) -> int:
        """Every parameter of the compressed model: the dense model's, less what the factorization removed."""
        return self.model_params - self.removed

    @property
    def model_share(self) -> float:
        """The compressed model's parameters as a share of the dense model's: the headline figure."""
        return self.compressed_params / self.model_params if self.model_params else 0.0

    @property
    def target_share(self) -> float:
        """The target weights kept as a share of the target weights."""
        return self.kept_weights / self.target_weights if self.target_weights else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"model_params": self.model_params, "compressed_params": self.compressed_params,
                "model_share": self.model_share, "target_weights": self.target_weights,
                "kept_weights": self.kept_weights, "target_share": self.target_share, "removed": self.removed}


def target_weights(shapes: Mapping[str, tuple[int, int]]) -> int:
    """Σ m·n over the layers' (out_features, in_features) ``shapes``."""
    return sum(int(out_features) * int(in_features) for out_features, in_features in shapes.values())


def kept_weights(ranks: Mapping[str, int], shapes: Mapping[str, tuple[int, int]]) -> int:
    """The weights the layers of ``shapes`` keep at ``ranks``: r·(m+n) for each layer ranked below break-even,
    m·n for a layer without a rank or at or past break-even (kept dense, as compress_, the explorer and
    evaluations do by default)."""
    total = 0
    for name, (out_features, in_features) in shapes.items():
        rank = ranks.get(name)
        dense = rank is None or is_past_break_even(int(rank), out_features, in_features)
        total += out_features * in_features if dense else int(rank) * (out_features + in_features)
    return total


def size_at(model_params: int, ranks: Mapping[str, int], shapes: Mapping[str, tuple[int, int]]) -> SizeAt:
    """The sizes of a model of ``model_params`` parameters whose target layers (``shapes``) take ``ranks``."""
    return SizeAt(int(model_params), target_weights(shapes), kept_weights(ranks, shapes))
