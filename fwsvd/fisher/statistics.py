"""Token statistics of the target layers — what asvd, whiten and kfac weigh the error with — summed by hooks.

For each layer, over the tokens it sees: ``A = Σ_t x xᵀ`` (its inputs), ``G = Σ_t g gᵀ`` (the gradients of
its outputs), ``Σ_t |x|`` and the token count (:class:`~fwsvd.factorize.weighted.LayerStatistics`). Inside the
Fisher pass (``estimate_fisher(..., statistics=True)``) ``g`` is the gradient of the **summed per-example
loss** ``Σ_i loss_i`` with respect to the layer's output — each token's gradient of its own example's loss,
the quantity the exact Fisher's hooks see — in both Fisher modes, and the tokens are those the Fisher counts:
every token but padding (attention mask 0); tokens whose label is ignored (-100) still count, as they do in
the Fisher, since their activations shape the labelled tokens' losses.

A and G are symmetric, so only their upper triangle is summed (:func:`add_gram_`), the rest mirrored once
when the result is read: on the CPU by BLAS's symmetric rank-k update (``?syrk``, through scipy), about half
the full product's time; elsewhere (CUDA) a panel of rows at a time, about 60 % of it. They are held in
float32 on the model's device for the whole pass: (n² + m²) floats per layer, about 140 MiB for the six
blocks of MiniLM-L6 and 1.1 GiB for BERT-base's twelve.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import blas
from threadpoolctl import ThreadpoolController

from fwsvd.factorize.weighted import LayerStatistics
from fwsvd.fisher.distributed import all_reduce_sum_, broadcast_

#: Rows of the upper triangle summed per matrix product where BLAS's symmetric update is not used (CUDA).
#: Smaller panels skip more of the lower triangle but run at lower efficiency: on one CPU thread, 4,096
#: tokens of 1,536 features take 0.61× the full product's CPU time at 128 rows (0.61 at 96, 0.62 at 256,
#: 0.64 at 64), 384 features 0.71× (0.65 at 64, 0.77 at 192).
PANEL_ROWS = 128

#: BLAS's symmetric rank-k update by dtype; on one CPU thread 0.51–0.58× the full product's time at 1,024
#: to 4,096 tokens of 384 or 1,536 features (panels: 0.60–0.77×).
_SYRK = {torch.float32: blas.ssyrk, torch.float64: blas.dsyrk}

#: The fields of a :class:`LayerStatistics` as stored in a flat tensor file (see :func:`statistics_to_tensors`).
_FIELDS = ("input_moment", "output_moment", "input_abs_sum", "tokens")
_PREFIX = "statistics"


def add_gram_(moment: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Add the upper triangle of ``rowsᵀ rows`` (rows (N, d)) to ``moment`` (d, d) in place; returns it.

    The lower triangle is left as it was (garbage to ignore); :func:`symmetric` mirrors the sum when it is
    read. A contiguous float32/float64 CPU ``moment`` takes BLAS's ``?syrk``, anything else panels.
    """
    if rows.shape[0] == 0:
        return moment
    syrk = _SYRK.get(moment.dtype)
    if syrk is not None and moment.device.type == "cpu" and moment.is_contiguous() and rows.dtype == moment.dtype:
        _syrk_(syrk, moment, rows.contiguous())
    else:
        _add_panels_(moment, rows)
    return moment


def _syrk_(syrk: Callable[..., object], moment: torch.Tensor, rows: torch.Tensor) -> None:
    # numpy views share the tensors' memory. The row-major (N, d) rows, transposed, are a column-major
    # (d, N) matrix X with X Xᵀ = rowsᵀ rows; the row-major moment, transposed, is column-major, and its
    # lower triangle is the moment's upper one. overwrite_c makes BLAS write into it directly.
    target = moment.numpy().T
    with _blas_threads(torch.get_num_threads()):
        written = syrk(1.0, rows.numpy().T, beta=1.0, c=target, trans=0, lower=1, overwrite_c=1)
    if not np.shares_memory(written, target):
        target[...] = written  # scipy made a copy after all: keep the result


def _add_panels_(moment: torch.Tensor, rows: torch.Tensor) -> None:
    """Panels of :data:`PANEL_ROWS` rows from the diagonal rightwards: the lower triangle below each
    diagonal panel is neither computed nor written."""
    features = moment.shape[0]
    for first in range(0, features, PANEL_ROWS):
        last = min(first + PANEL_ROWS, features)
        moment[first:last, first:].addmm_(rows[:, first:last].T, rows[:, first:])


def _blas_threads(threads: int) -> object:
    """A context giving scipy's BLAS as many threads as torch uses, so that one thread means one thread."""
    return _blas_controller().limit(limits=threads, user_api="blas")


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # finds the loaded BLAS libraries: once


def symmetric(upper: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle is ``upper``'s (a new tensor)."""
    strict = upper.triu(1)
    # A contiguous copy of the transpose, then a contiguous add: 3× faster than adding the strided transpose.
    full = strict.T.contiguous().add_(strict)
    full.diagonal().copy_(upper.diagonal())
    return full


@dataclass(frozen=True)
class _InputSums:
    """One input tensor's contribution, kept for the next layer that may be fed the same tensor."""

    x: torch.Tensor
    version: int
    keep: torch.Tensor | None
    moment: torch.Tensor
    abs_sum: torch.Tensor
    tokens: int

    def repeats(self, x: torch.Tensor, keep: torch.Tensor | None, features: int) -> bool:
        return (x is self.x and x._version == self.version and keep is self.keep
                and self.moment.shape[0] == features)


class StatisticsAccumulator:
    """Running :class:`LayerStatistics` of several layers, fed by forward and backward hooks.

    Each call gathers the kept tokens into an (N, features) matrix and adds the upper triangle of its Gram
    matrix (:func:`add_gram_`), in float32 on ``device``: float32 rounding of A and G (~1e-7 of their largest
    eigenvalue) is below the eigenvalue floor, and where it leaves A indefinite by more than whiten's ridge,
    whiten falls back to the floored eigen root; float64 would halve the speed on CPUs and cost far more on
    most GPUs. A layer called several times per forward pass contributes each call's tokens.

    ``gradients=False``: a layer's output moment is created by its first gradient, so forward-only use gives
    ``output_moment=None``. ``gradients=True`` creates every output moment at once (zero until gradients
    arrive), so that all processes of a data-parallel run hold the same tensors for :meth:`all_reduce_`.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], device: torch.device | str = "cpu", *,
                 gradients: bool = False) -> None:
        """``shapes``: {layer name: (out_features, in_features)}."""
        self._shapes = {name: (int(out_features), int(in_features))
                        for name, (out_features, in_features) in shapes.items()}
        self._device = torch.device(device)
        self._input_moments = {name: self._zeros(n, n) for name, (_, n) in self._shapes.items()}
        self._input_abs_sums = {name: self._zeros(n) for name, (_, n) in self._shapes.items()}
        self._output_moments: dict[str, torch.Tensor] = (
            {name: self._zeros(m, m) for name, (m, _) in self._shapes.items()} if gradients else {})
        self._tokens = dict.fromkeys(self._shapes, 0)
        self._last_input: _InputSums | None = None

    def add_input(self, name: str, x: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Add a layer's inputs ``x`` (..., n), e.g. (B, T, n); ``keep`` (B, T) is False at padding tokens.

        Layers fed the very same tensor one after the other (BERT's query, key and value) share one product:
        the sums of the last input are kept, and added again when that tensor object comes next, unmodified
        (same version) and with the same ``keep`` object.
        """
        _, n = self._shape(name)
        last = self._last_input
        if last is None or not last.repeats(x, keep, n):
            tokens = self._kept_tokens(x, keep, n, f"input of layer {name!r}")
            last = self._last_input = _InputSums(x, x._version, keep, add_gram_(self._zeros(n, n), tokens),
                                                 tokens.abs().sum(dim=0), tokens.shape[0])
        self._input_moments[name].add_(last.moment)
        self._input_abs_sums[name].add_(last.abs_sum)
        self._tokens[name] += last.tokens

    def add_output_grad(self, name: str, g: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Add the gradients ``g`` (..., m) of a layer's outputs; ``keep`` as in :meth:`add_input`."""
        m, _ = self._shape(name)
        tokens = self._kept_tokens(g, keep, m, f"output gradient of layer {name!r}")
        moment = self._output_moments.get(name)
        if moment is None:
            moment = self._output_moments[name] = self._zeros(m, m)
        add_gram_(moment, tokens)

    def load_(self, statistics: Mapping[str, LayerStatistics]) -> None:
        """Replace the running sums of the named layers by ``statistics`` (e.g. read from a cache file)."""
        for name, layer in statistics.items():
            m, n = self._shape(name)
            if layer.in_features != n or layer.out_features not in (None, m):
                raise ValueError(f"statistics of layer {name!r} have {layer.in_features} inputs and "
                                 f"{layer.out_features} outputs; this accumulator's layer has {n} and {m}")
            self._input_moments[name] = layer.input_moment.to(self._device, torch.float32, copy=True)
            self._input_abs_sums[name] = layer.input_abs_sum.to(self._device, torch.float32, copy=True)
            if layer.output_moment is not None:
                self._output_moments[name] = layer.output_moment.to(self._device, torch.float32, copy=True)
            self._tokens[name] = layer.tokens

    def all_reduce_(self) -> None:
        """Sum every running statistic over the processes of a ``torch.distributed`` group (a no-op outside
        one); every process must have been created with ``gradients=True`` and the same shapes."""
        self._collective(all_reduce_sum_)

    def broadcast_(self) -> None:
        """Overwrite every running statistic with rank 0's (a no-op outside a process group); as for
        :meth:`all_reduce_`, every process must hold the same tensors."""
        self._collective(broadcast_)

    def _collective(self, operation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for name in self._shapes:
            for tensor in (self._input_moments[name], self._input_abs_sums[name],
                           self._output_moments.get(name)):
                if tensor is not None:
                    operation(tensor)
        # Token counts as integers: float32 counts would stop being exact past 2**24 tokens.
        counts = torch.tensor([self._tokens[name] for name in self._shapes], dtype=torch.int64,
                              device=self._device)
        operation(counts)
        self._tokens = dict(zip(self._shapes, counts.tolist()))

    def result(self) -> dict[str, LayerStatistics]:
        """{layer name: LayerStatistics} as float32 CPU copies (accumulation may continue afterwards)."""
        def cpu(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device="cpu", dtype=torch.float32, copy=True)

        return {
            name: LayerStatistics(
                input_moment=cpu(symmetric(self._input_moments[name])),
                output_moment=cpu(symmetric(self._output_moments[name])) if name in self._output_moments else None,
                input_abs_sum=cpu(self._input_abs_sums[name]),
                tokens=self._tokens[name],
            )
            for name in self._shapes
        }

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(*shape, device=self._device, dtype=torch.float32)

    def _shape(self, name: str) -> tuple[int, int]:
        if name not in self._shapes:
            raise ValueError(f"unknown layer {name!r}; this accumulator collects {sorted(self._shapes)}")
        return self._shapes[name]

    def _kept_tokens(self, values: torch.Tensor, keep: torch.Tensor | None, features: int,
                     what: str) -> torch.Tensor:
        """The rows of ``values`` at kept tokens, as a float32 (N, features) matrix on the accumulator's device."""
        if values.dim() < 1 or values.shape[-1] != features:
            raise ValueError(f"the {what} must have {features} features in its last dimension, "
                             f"got shape {tuple(values.shape)}")
        values = values.detach()
        if keep is None:
            rows = values.reshape(-1, features)
        else:
            if keep.shape != values.shape[:-1]:
                raise ValueError(f"keep must have the token shape {tuple(values.shape[:-1])} of the {what}, "
                                 f"got {tuple(keep.shape)}")
            rows = values[keep.to(device=values.device, dtype=torch.bool)]
        return rows.to(device=self._device, dtype=torch.float32)


def statistics_to_tensors(statistics: Mapping[str, LayerStatistics]) -> dict[str, torch.Tensor]:
    """{layer: LayerStatistics} as one flat {name: tensor} dict for a safetensors file, beside other tensors:
    each name is ``"statistics:<field>:<layer>"`` (a layer's qualified name holds no colon)."""
    return {f"{_PREFIX}:{field}:{layer}": tensor
            for layer, layer_statistics in statistics.items()
            for field, tensor in layer_statistics.to_tensors().items()}


def split_statistics(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                     dict[str, LayerStatistics]]:
    """(the tensors that are not statistics, {layer: LayerStatistics}) from a dict written with
    :func:`statistics_to_tensors`; ValueError for a statistic that is incomplete or invalid."""
    others: dict[str, torch.Tensor] = {}
    fields: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        prefix, _, rest = name.partition(":")
        if prefix != _PREFIX:
            others[name] = tensor
            continue
        field, _, layer = rest.partition(":")
        if field not in _FIELDS or not layer:
            raise ValueError(f"tensor {name!r} is not a layer statistic; expected '{_PREFIX}:<field>:<layer>' "
                             f"with a field among {list(_FIELDS)}")
        fields.setdefault(layer, {})[field] = tensor
    return others, {layer: LayerStatistics.from_tensors(parts) for layer, parts in fields.items()}
