"""Which way each metric is better, for every table, chart and headline that shows one (torch-free).

Accuracy, F1 and correlations are better higher; perplexity is better lower. Whatever ranks, colours or
annotates results asks here rather than assuming "higher", and says "lower is better" where it is.
"""

from __future__ import annotations

#: Metrics where a smaller value is the better model.
LOWER_IS_BETTER: frozenset[str] = frozenset({"perplexity"})
#: Metrics of language models: their examples are blocks of a text, which the model is scored on rather than
#: fine-tuned for.
LANGUAGE_MODEL_METRICS: frozenset[str] = frozenset({"perplexity"})


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def is_language_model_metric(metric: str) -> bool:
    return metric in LANGUAGE_MODEL_METRICS


def direction_note(metric: str) -> str:
    """``" (lower is better)"`` for a metric that is better lower, else ``""`` (higher is the expected way)."""
    return " (lower is better)" if lower_is_better(metric) else ""


def metric_label(metric: str) -> str:
    """An axis or column title: the metric's name and which way is better, e.g. ``perplexity (lower is better)``."""
    return f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)"


def is_better(metric: str, value: float, than: float) -> bool:
    """Whether ``value`` is strictly better than ``than`` on ``metric``."""
    return value < than if lower_is_better(metric) else value > than
