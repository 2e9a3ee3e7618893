"""LowRankLinear: a Linear layer replaced by two thinner ones, ``in → rank → out``."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from fwsvd.factorize import Decomposition, decompose
from fwsvd.targets import dense_weight

SOURCE_KINDS = ("linear", "conv1d")


class LowRankLinear(nn.Module):
    """``second(first(x))`` with ``first``: in→rank without bias and ``second``: rank→out with the original bias.

    Parameters: rank·(in + out) + out (bias) against in·out + out for the dense layer, so it saves
    parameters only below the break-even rank in·out / (in + out).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 source_kind: str = "linear") -> None:
        super().__init__()
        if source_kind not in SOURCE_KINDS:
            raise ValueError(f"source_kind must be one of {SOURCE_KINDS}, got {source_kind!r}")
        # The dense layer type this replaces, so that densifying restores what the model's code expects
        # (GPT-2 stores Conv1D weights transposed and would load an nn.Linear's weight wrongly).
        self.source_kind = source_kind
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

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
        return self.second(self.first(x))

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
        layer = cls(in_features, out_features, rank, bias=bias is not None,
                    device=reference.device, dtype=reference.dtype, source_kind=source_kind)
        with torch.no_grad():
            layer.first.weight.copy_(first)
            layer.second.weight.copy_(second)
            if bias is not None:
                layer.second.bias.copy_(bias)
        return layer

    @classmethod
    def from_decomposition(cls, decomposition: Decomposition, rank: int, bias: torch.Tensor | None,
                           source_kind: str = "linear") -> "LowRankLinear":
        """Truncate a kept decomposition: no SVD is computed."""
        first, second = decomposition.factors(rank)
        reference = bias if bias is not None else second
        return cls.from_factors(first.to(reference.device), second.to(reference.device), bias, source_kind)

    @classmethod
    def from_linear(cls, module: nn.Module, rank: int,
                    importance: torch.Tensor | None = None) -> "LowRankLinear":
        """Factorize an nn.Linear or transformers Conv1D (plain SVD, or FWSVD given an (in,) importance)."""
        weight = dense_weight(module)
        decomposition = decompose(weight, importance)
        layer = cls.from_decomposition(decomposition, rank, module.bias, source_kind_of(module))
        return layer.to(device=weight.device, dtype=weight.dtype)

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


def source_kind_of(module: nn.Module) -> str:
    """"conv1d" for transformers' Conv1D, "linear" for nn.Linear."""
    return "conv1d" if isinstance(module, Conv1D) else "linear"
