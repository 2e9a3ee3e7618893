"""Rank rules on layer shapes: break-even, a rank ratio or parameter share per layer, validation, digests.

Everything here works on ``{layer name: (out_features, in_features)}`` and plain numbers, without torch, so
the dashboard can set and check ranks before (or without) loading a model. Which rule applies to which layer
is :meth:`fwsvd.config.CompressionConfig.resolve_ranks`'s to say.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Mapping

Shapes = Mapping[str, tuple[int, int]]


def break_even_rank(out_features: int, in_features: int) -> float:
    """The rank m·n/(m+n) at which rank·(m+n) factor weights equal the m·n dense weights."""
    return out_features * in_features / (out_features + in_features)


def is_past_break_even(rank: int, out_features: int, in_features: int) -> bool:
    """Whether a rank-``rank`` factorization holds at least the layer's m·n weights: such a layer is kept dense
    (it would save nothing and lose accuracy), unless a configuration asks otherwise."""
    return rank * (out_features + in_features) >= out_features * in_features


def past_break_even(ranks: Mapping[str, int], shapes: Shapes) -> list[str]:
    """The layers of ``ranks`` whose rank is at or past break-even for their ``shapes``, in order."""
    return [name for name, rank in ranks.items() if is_past_break_even(int(rank), *shapes[name])]


def rank_for_ratio(ratio: float, full_rank: int) -> int:
    """A share of the full rank, rounded, at least 1."""
    return max(1, min(full_rank, round(ratio * full_rank)))


def validate_rank(rank: int, weight_shape: tuple[int, int], layer: str = "layer") -> int:
    """Return ``rank`` as an int if it lies in 1..min(out, in); else raise ValueError naming the range."""
    full_rank = min(weight_shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full_rank:
        raise ValueError(
            f"rank {rank!r} for {layer} of shape {tuple(weight_shape)} is out of range: "
            f"choose an integer from 1 to {full_rank}"
        )
    return rank


def unknown_names_error(unknown: list[str], known: list[str], what: str) -> ValueError:
    """A ValueError naming layers that are not targets, with the closest target names as hints."""
    hints = []
    for name in unknown[:5]:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hints.append(f"{name!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return ValueError(
        f"{what} names layers that are not compression targets: {', '.join(hints)}{more}. "
        f"Targets are {len(known)} layers such as {known[0]!r}"
    )


def ranks_for_param_fraction(shapes: Shapes, fraction: float) -> dict[str, int]:
    """Per-layer ranks that keep about ``fraction`` (in (0, 1]) of each layer's weight parameters."""
    ranks = {}
    for name, (out_features, in_features) in shapes.items():
        rank = math.floor(fraction * break_even_rank(out_features, in_features))
        ranks[name] = max(1, min(rank, min(out_features, in_features)))
    return ranks


#: The two global rank rules, as CompressionConfig fields: a share of each layer's full rank, or of its weights.
GLOBAL_RULES: tuple[str, ...] = ("rank_ratio", "param_budget")


def rule_ranks(shapes: Shapes, rule: str, value: float) -> dict[str, int]:
    """Every layer's rank under one global rule: ``rank_ratio`` (``value`` of each layer's full rank) or
    ``param_budget`` (about ``value`` of its weight parameters). The uniform ranks everything else is
    compared with; ``value`` is checked by the caller (CompressionConfig, the dashboard's control)."""
    if rule == "param_budget":
        return ranks_for_param_fraction(shapes, value)
    if rule == "rank_ratio":
        return {name: rank_for_ratio(value, min(shape)) for name, shape in shapes.items()}
    raise ValueError(f"the global rule must be one of {', '.join(GLOBAL_RULES)}, got {rule!r}")


def ranks_digest(ranks: Mapping[str, int]) -> str:
    """A short stable digest of a rank configuration (to remember results per configuration)."""
    text = json.dumps(dict(sorted(ranks.items())), separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
