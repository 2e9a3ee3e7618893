"""Rank configurations on layer shapes: validation, global settings, digests and their JSON files.

Everything here works on ``{layer name: (out_features, in_features)}`` and plain numbers, without torch, so
the dashboard can set and check ranks before (or without) loading a model.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Union

#: An int (the same rank everywhere), a float in (0, 1] (a share of each layer's full rank; the paper keeps
#: 0.33), or {qualified layer name: rank} (layers not named stay dense).
Ranks = Union[int, float, Mapping[str, int]]
Shapes = Mapping[str, tuple[int, int]]

#: The two ways to set every layer at once.
GLOBAL_MODES: tuple[str, ...] = ("rank_ratio", "param_budget")

#: Written into every exported rank configuration, checked when one is loaded back.
RANK_CONFIG_FORMAT = "fwsvd-rank-config"
RANK_CONFIG_VERSION = 1


def break_even_rank(out_features: int, in_features: int) -> float:
    """The rank m·n/(m+n) at which rank·(m+n) factor weights equal the m·n dense weights."""
    return out_features * in_features / (out_features + in_features)


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


def _unknown_names_error(unknown: list[str], known: list[str], what: str) -> ValueError:
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


def ranks_for_shapes(shapes: Shapes, ranks: Ranks) -> dict[str, int]:
    """{layer name: rank} for the layers to compress, checked against each layer's 1..min(out, in)."""
    if isinstance(ranks, Mapping):
        unknown = [name for name in ranks if name not in shapes]
        if unknown:
            raise _unknown_names_error(unknown, list(shapes), "ranks")
        return {name: validate_rank(rank, shapes[name], name) for name, rank in ranks.items()}
    if isinstance(ranks, bool):
        raise ValueError(f"ranks must be an int, a float in (0, 1] or a dict of layer names, got {ranks!r}")
    if isinstance(ranks, int):
        return {name: validate_rank(ranks, shape, name) for name, shape in shapes.items()}
    if isinstance(ranks, float):
        if not (0.0 < ranks <= 1.0) or math.isnan(ranks):
            raise ValueError(f"a rank ratio must lie in (0, 1], got {ranks}")
        return {name: rank_for_ratio(ranks, min(shape)) for name, shape in shapes.items()}
    raise ValueError(f"ranks must be an int, a float in (0, 1] or a dict of layer names, got {type(ranks).__name__}")


def ranks_for_param_fraction(shapes: Shapes, fraction: float) -> dict[str, int]:
    """Per-layer ranks that keep about ``fraction`` of each layer's weight parameters."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a parameter fraction must lie in (0, 1], got {fraction}")
    ranks = {}
    for name, (out_features, in_features) in shapes.items():
        rank = math.floor(fraction * break_even_rank(out_features, in_features))
        ranks[name] = max(1, min(rank, min(out_features, in_features)))
    return ranks


def global_ranks(shapes: Shapes, mode: str, value: float) -> dict[str, int]:
    """Ranks for every layer from one global control.

    ``mode="rank_ratio"``: ``value`` in (0, 1] of each layer's full rank (the paper keeps 0.33).
    ``mode="param_budget"``: keep about ``value`` in (0, 1] of each layer's weight parameters.
    """
    if mode == "rank_ratio":
        return ranks_for_shapes(shapes, float(value))
    if mode == "param_budget":
        return ranks_for_param_fraction(shapes, float(value))
    raise ValueError(f"global mode must be one of {', '.join(GLOBAL_MODES)}, got {mode!r}")


def check_ranks(shapes: Shapes, ranks: Mapping[str, Any]) -> dict[str, int]:
    """``ranks`` as ints, after checking they name exactly the layers of ``shapes`` and lie in 1..full rank."""
    unknown = sorted(set(ranks) - set(shapes))
    missing = sorted(set(shapes) - set(ranks))
    if unknown:
        raise ValueError(f"ranks name {len(unknown)} layer(s) this model does not have, e.g. {unknown[0]!r}; "
                         f"its target layers are like {next(iter(shapes))!r}")
    if missing:
        raise ValueError(f"ranks miss {len(missing)} target layer(s), e.g. {missing[0]!r}")
    checked = {}
    for name, shape in shapes.items():
        rank = ranks[name]
        if isinstance(rank, float) and rank.is_integer():
            rank = int(rank)
        checked[name] = validate_rank(rank, shape, name)
    return checked


def ranks_digest(ranks: Mapping[str, int]) -> str:
    """A short stable digest of a rank configuration (to remember results per configuration)."""
    text = json.dumps(dict(sorted(ranks.items())), separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def rank_config_to_json(ranks: Mapping[str, int], **context: Any) -> str:
    """A rank configuration as JSON: format tag, version, ``context`` (model, task, ...) and the ranks."""
    document = {"format": RANK_CONFIG_FORMAT, "version": RANK_CONFIG_VERSION, **context,
                "ranks": {name: int(rank) for name, rank in ranks.items()}}
    return json.dumps(document, indent=2)


def rank_config_from_json(text: str | bytes, shapes: Shapes) -> dict[str, int]:
    """The ranks of a JSON rank configuration, checked against the model's target layers ``shapes``.

    Raises ValueError naming what is wrong: not JSON, not a rank configuration, unknown or missing layers,
    ranks out of range.
    """
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"the rank configuration is not valid JSON: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("ranks"), dict):
        raise ValueError("not a rank configuration: expected a JSON object with a 'ranks' object "
                         "{layer name: rank}, as the Export page writes")
    if document.get("format", RANK_CONFIG_FORMAT) != RANK_CONFIG_FORMAT:
        raise ValueError(f"not a rank configuration: format is {document.get('format')!r}, "
                         f"expected {RANK_CONFIG_FORMAT!r}")
    return check_ranks(shapes, document["ranks"])
