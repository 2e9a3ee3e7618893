"""LowRankLinear: a Linear layer replaced by two thinner ones, ``in → rank → out``.

Speed: the pair costs rank·(in + out) multiply-adds per token against in·out, but the GEMM kernels run at
that speed only when the rank is a multiple of :data:`ALIGNMENT`. At rank 127 (MiniLM's 384 at ratio 0.33)
the first product, whose output rows are 127 floats long, ran about 1.7x slower than at rank 128 here, and
the second, reading those rows, about 1.6x (docs/BENCH_INFERENCE.md). So without autograd (evaluation,
inference) an unaligned pair multiplies zero-padded copies of its factors, rank rounded up to the next
multiple: the same function (the padding adds zeros), a little more arithmetic, aligned rows. The copies are
made once and kept until a factor changes; the parameters and their count stay those of the rank.

Rank changes: a layer cut by compress_ / set_ranks_ holds *views* of its kept decomposition (the first rows of
``right``, the first columns of ``left``), so a new rank is a slice — on a 1B model all 112 layers in
milliseconds instead of seconds of copying (docs/BENCH_SCALE.md); trying rank after rank, most settings are
never run. The layer takes its own copies (:meth:`own_factors_`) when it first runs — contiguous factors, as
a saved and reloaded model has them, so what is timed is what is deployed (a view of ``left``'s first
columns multiplied measurably slower at small batches) — and before ``load_state_dict`` writes into them:
the decomposition is shared (the store, other layers, other models) and is never written to.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from fwsvd.factorize.closed_form import Decomposition, decompose
from fwsvd.factorize.layers import dense_weight, source_kind_of
from fwsvd.factorize.weighted import LayerStatistics

SOURCE_KINDS = ("linear", "conv1d")
#: Inner sizes the CPU's (AVX2) and GPUs' GEMM kernels take at full speed: ranks are padded up to a multiple.
ALIGNMENT = 8
_OWNING = threading.Lock()


class LowRankLinear(nn.Module):
    """``second(first(x))`` with ``first``: in→rank without bias and ``second``: rank→out with the original bias.

    Parameters: rank·(in + out) + out (bias) against in·out + out for the dense layer, so it saves
    parameters only below the break-even rank in·out / (in + out).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 source_kind: str = "linear") -> None:
        super().__init__()
        _check_source_kind(source_kind)
        # The dense layer type this replaces, so that densifying restores what the model's code expects
        # (GPT-2 stores Conv1D weights transposed and would load an nn.Linear's weight wrongly).
        self.source_kind = source_kind
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)
        #: True while the factors are views of a kept decomposition (never written to; see own_factors_)
        self.views_decomposition = False

    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    @property
    def rank(self) -> int:
        return self.first.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The products are taken here rather than through first/second's __call__: two fewer module calls per
        # layer (they show at batch 1). Hooks belong on this module; its halves are never targets of their own.
        if self.views_decomposition:
            self.own_factors_()
        first, second = self.first.weight, self.second.weight
        if self.rank % ALIGNMENT and not (torch.is_grad_enabled() and (first.requires_grad or second.requires_grad)):
            first, second = self._aligned_factors()
        return F.linear(F.linear(x, first), second, self.second.bias)

    def own_factors_(self) -> None:
        """Give the layer its own copies of factors that view a kept decomposition (same parameters, new
        data), so that writing to them cannot change the decomposition. Call it before editing the factors
        in place by hand; a forward pass and ``load_state_dict`` call it themselves."""
        with _OWNING:  # two threads running one model: one copies, the other finds it done
            if not self.views_decomposition:
                return
            for linear in (self.first, self.second):
                # Ordinary tensors even when called under inference_mode: they are the parameters from now on.
                with torch.inference_mode(False), torch.no_grad():
                    owned = nn.Parameter(linear.weight.detach().clone(memory_format=torch.contiguous_format),
                                         requires_grad=linear.weight.requires_grad)
                try:
                    # The same Parameter object (an optimizer built already keeps training it) with new data
                    # *and its own version counter*: later writes no longer count as writes to the decomposition.
                    torch.utils.swap_tensors(linear.weight, owned)
                except RuntimeError:  # referenced where a swap is not allowed: new data, shared counter
                    linear.weight.data = owned.data
            self.views_decomposition = False

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # Runs before the halves load theirs (in place, into the current tensors).
        self.own_factors_()
        super()._load_from_state_dict(*args, **kwargs)

    def _aligned_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors zero-padded to a rank that is a multiple of ALIGNMENT: (rank', in) and (out, rank').

        Kept with what they were made from, and remade when a parameter is replaced (set_factors_), moved (a
        device or dtype change swaps its data) or changed in place (training, load_state_dict: its version)."""
        first, second = self.first.weight, self.second.weight
        made_from = [(first, first._version, first.data_ptr()), (second, second._version, second.data_ptr())]
        kept = self.__dict__.get("_aligned")
        if kept is None or any(old[0] is not new[0] or old[1:] != new[1:] for old, new in zip(kept[0], made_from)):
            padding = -self.rank % ALIGNMENT
            # Ordinary tensors even when called under inference_mode: they outlive this call.
            with torch.inference_mode(False), torch.no_grad():
                padded = (F.pad(first.detach(), (0, 0, 0, padding)), F.pad(second.detach(), (0, padding)))
            kept = (made_from, padded)
            self.__dict__["_aligned"] = kept  # a plain attribute: not a parameter, buffer or state_dict entry
        return kept[1]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.second.bias is not None}, source_kind={self.source_kind!r}")

    @classmethod
    def from_factors(cls, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None,
                     source_kind: str = "linear") -> "LowRankLinear":
        """Build from ``first`` (rank, in), ``second`` (out, rank) and an optional (out,) bias; device and
        dtype follow ``second`` when there is no bias, else the bias."""
        rank, in_features = first.shape
        out_features, second_rank = second.shape
        if second_rank != rank:
            raise ValueError(f"factor shapes do not chain: first {tuple(first.shape)}, second {tuple(second.shape)}")
        reference = bias if bias is not None else second
        options = dict(device=reference.device, dtype=reference.dtype)
        # Copies, never views: the caller's tensors (or a kept decomposition) must not change when this
        # layer is trained.
        return cls._from_owned(first.detach().to(**options, copy=True), second.detach().to(**options, copy=True),
                               None if bias is None else bias.detach().to(**options, copy=True), source_kind)

    @classmethod
    def _from_owned(cls, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None,
                    source_kind: str) -> "LowRankLinear":
        """Wrap tensors that nothing else references as the parameters.

        The constructor is bypassed: it would build two Linear layers and draw their random initial weights
        (even on the meta device that runs the init's Python code), only for them to be replaced — on a
        72-layer model that costs more than cutting the factors. The result is the same module the
        constructor builds, holding the given tensors.
        """
        _check_source_kind(source_kind)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.source_kind = source_kind
        layer.first = _linear_around(first, None)
        layer.second = _linear_around(second, bias)
        layer.views_decomposition = False
        return layer

    def set_factors_(self, first: torch.Tensor, second: torch.Tensor) -> None:
        """Replace the two factors (new rank allowed; the bias stays), in place, by new parameters on this
        layer's device and dtype. The tensors are taken, not copied: pass tensors nothing else holds."""
        self._set_factors(first, second, views=False)

    def set_factors_from_(self, decomposition: Decomposition, rank: int) -> None:
        """Cut the factors of ``rank`` from ``decomposition`` (new parameters; the bias stays): views of it
        where its device and dtype are this layer's — no copy — else copies converted to them."""
        options = dict(device=self.second.weight.device, dtype=self.second.weight.dtype)
        views = _can_view(decomposition, **options)
        self._set_factors(*(decomposition.factor_views(rank) if views else decomposition.factors(rank)), views=views)

    def _set_factors(self, first: torch.Tensor, second: torch.Tensor, *, views: bool) -> None:
        rank, in_features = first.shape
        if in_features != self.in_features or second.shape != (self.out_features, rank):
            raise ValueError(f"factors {tuple(first.shape)} and {tuple(second.shape)} do not fit a layer "
                             f"{self.in_features} → {self.out_features}")
        options = dict(device=self.second.weight.device, dtype=self.second.weight.dtype)
        self.first.weight = nn.Parameter(first.to(**options))
        self.second.weight = nn.Parameter(second.to(**options))
        self.first.out_features = self.second.in_features = rank
        self.views_decomposition = views

    @classmethod
    def from_decomposition(cls, decomposition: Decomposition, rank: int, bias: torch.Tensor | None,
                           source_kind: str = "linear", *, device: torch.device | str | None = None,
                           dtype: torch.dtype | None = None, views: bool = False) -> "LowRankLinear":
        """Truncate a kept decomposition: no SVD is computed.

        Device and dtype are ``device`` / ``dtype`` when given, else those of ``bias``, else the
        decomposition's (CPU, float32 or float64). With ``views`` the factors are views of the decomposition
        where it has that device and dtype (see the module's docstring), else fresh copies.
        """
        reference = bias if bias is not None else decomposition.left
        options = dict(device=device if device is not None else reference.device,
                       dtype=dtype if dtype is not None else reference.dtype)
        views = views and _can_view(decomposition, **options)
        first, second = decomposition.factor_views(rank) if views else decomposition.factors(rank)
        layer = cls._from_owned(first.to(**options), second.to(**options),
                                None if bias is None else bias.detach().to(**options, copy=True), source_kind)
        layer.views_decomposition = views
        return layer

    @classmethod
    def from_linear(cls, module: nn.Module, rank: int, importance: torch.Tensor | None = None, *,
                    method: str | None = None, statistics: LayerStatistics | None = None) -> "LowRankLinear":
        """Factorize an nn.Linear or transformers Conv1D: plain SVD, FWSVD given an (in,) importance, or any
        ``method`` with its inputs (see :func:`fwsvd.decompose`)."""
        weight = dense_weight(module)
        decomposition = decompose(weight, importance, method=method, statistics=statistics)
        return cls.from_decomposition(decomposition, rank, module.bias, source_kind_of(module),
                                      device=weight.device, dtype=weight.dtype)

    def to_dense(self) -> nn.Linear:
        """The equivalent dense nn.Linear (factors multiplied back)."""
        weight = self.second.weight @ self.first.weight
        dense = nn.Linear(self.in_features, self.out_features, bias=self.second.bias is not None,
                          device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.second.bias is not None:
                dense.bias.copy_(self.second.bias)
        return dense

    def to_original(self) -> nn.Module:
        """The dense layer of the type this replaced: nn.Linear or Conv1D."""
        return self.to_conv1d() if self.source_kind == "conv1d" else self.to_dense()

    def to_conv1d(self) -> Conv1D:
        """The equivalent transformers Conv1D (GPT-2's layer, weight stored as (in, out))."""
        dense = self.to_dense()
        conv = Conv1D(self.out_features, self.in_features).to(device=dense.weight.device, dtype=dense.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(dense.weight.t())
            if dense.bias is not None:
                conv.bias.copy_(dense.bias)
            else:
                conv.bias.zero_()
        return conv


def _can_view(decomposition: Decomposition, *, device: torch.device | str, dtype: torch.dtype) -> bool:
    """True when ``decomposition``'s factors can serve as a layer's parameters as they are."""
    left, right = decomposition.left, decomposition.right
    return left.dtype == right.dtype == dtype and left.device == right.device == torch.device(device)


def _check_source_kind(source_kind: str) -> None:
    if source_kind not in SOURCE_KINDS:
        raise ValueError(f"source_kind must be one of {SOURCE_KINDS}, got {source_kind!r}")


def _linear_around(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear whose parameters are ``weight`` (out, in) and ``bias``, built without a random init."""
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.out_features, linear.in_features = weight.shape
    linear.weight = nn.Parameter(weight)
    linear.register_parameter("bias", None if bias is None else nn.Parameter(bias))
    return linear
