"""Weighted low-rank approximations in closed form — SVD, FWSVD, ASVD, whitening, two-sided K-FAC — one SVD each.

Weights are nn.Linear-shaped, ``(out m, in n)``: ``y = x Wᵀ + b``. Every method minimises its own weighted
error ``||P (W − Ŵ) Q||_F`` over all rank-r ``Ŵ``, for invertible P (m×m) and Q (n×n). Since ``Ŵ ↦ P Ŵ Q`` is a
rank-preserving bijection, Eckart–Young on ``P·W·Q`` gives the minimiser, and the inverses map it back::

    svd(P·W·Q) = U Σ Vᵀ        Ŵ_r = (P⁻¹ U_r Σ_r) (V_rᵀ Q⁻¹) = second @ first

=======  ==========================  =========================  ============================================
method   P                           Q                          what ``||P (W − Ŵ) Q||_F`` measures
=======  ==========================  =========================  ============================================
svd      I                           I                          the plain Frobenius error
fwsvd    I                           diag(sqrt(I_j))            Fisher-weighted error (Hsu et al., 2022)
asvd     I                           diag(mean_t |x_j|^α)       activation-aware error (Yuan et al., 2023)
whiten   I                           S, S·Sᵀ = A = Σ_t x xᵀ     output error ``||(W − Ŵ) X||_F`` (DRONE 2021;
                                                                SVD-LLM 2024)
kfac     Rᵀ, R·Rᵀ = G = Σ_t g gᵀ     S, S·Sᵀ = A                K-FAC Fisher ``vec(ΔW)ᵀ (A ⊗ G) vec(ΔW)``
                                                                (GFWSVD 2025; KFAC-SVD 2026)
=======  ==========================  =========================  ============================================

x (n,) are a layer's inputs and g (m,) the gradients of its outputs, one per token. Only ``R·Rᵀ`` and ``S·Sᵀ``
enter the objective (``||Rᵀ ΔW S||² = tr(ΔWᵀ G ΔW A)``), so each root is taken in the form that is cheapest to
multiply by and to undo: a diagonal, a Cholesky factor, or ``E·diag(sqrt λ)`` from an eigendecomposition.

This module says what weighs each method's error — the token statistics and the roots P, Q made from them
(:func:`method_transforms`); :mod:`fwsvd.factorize.closed_form` decomposes ``P·W·Q`` and gives every rank's
error. The method names and their check are :mod:`fwsvd.view.analysis`'s, one list for the whole package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from fwsvd.view.analysis import check_method

#: Importances (fwsvd) and mean |x| (asvd) below this fraction of their largest value are raised to it, so a
#: feature never seen active gets a finite Q⁻¹ and is simply the least protected. The factors do not change
#: when a weighting is scaled, so a relative floor is natural.
IMPORTANCE_FLOOR = 1e-6
#: ASVD's exponent: Q = diag(mean_t |x_j|^α). Yuan et al. find α = 0.5 best.
ASVD_ALPHA = 0.5
#: whiten factors ``A + ridge·I`` with ``ridge = WHITEN_RIDGE · trace(A)/n``: it makes the Cholesky factor
#: exist when fewer tokens than input features were seen (A singular), at a cost to the objective of at
#: most ``ridge·||W − Ŵ||²_F``; the reconstruction at full rank stays exact because the same factor is undone.
WHITEN_RIDGE = 1e-6
#: Eigenvalues of a second moment below this fraction of its largest one are raised to it (kfac, and whiten
#: when Cholesky fails): the square root then has a condition number of at most 1/sqrt(floor) = 1e3, so
#: undoing it costs at most three decimal digits.
EIGENVALUE_FLOOR = 1e-6

_NEEDS = {
    "asvd": "the mean absolute input per feature (statistics.input_abs_sum and statistics.tokens)",
    "whiten": "the input second moment (statistics.input_moment)",
    "kfac": "input and output second moments (statistics.input_moment and statistics.output_moment)",
}
_HOW = {
    "asvd": "task_fisher(..., statistics=True), or StatisticsAccumulator.add_input in forward hooks over the "
            "task data",
    "whiten": "task_fisher(..., statistics=True), or StatisticsAccumulator.add_input in forward hooks over the "
              "task data",
    "kfac": "task_fisher(..., statistics=True), or StatisticsAccumulator.add_input in forward hooks and "
            "add_output_grad in the backward pass over the task data",
}


# --------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class LayerStatistics:
    """Token statistics of one (m, n) layer: what asvd, whiten and kfac weigh the error with.

    ``input_moment`` A = Σ_t x xᵀ (n, n), ``output_moment`` G = Σ_t g gᵀ (m, m) — None when no output gradient
    was collected (a forward-only pass is enough for asvd and whiten) — ``input_abs_sum`` Σ_t |x| (n,), and
    the number of tokens summed over. Sums, not means: no method's factors change when a statistic is scaled
    (the SVD moves a constant factor into Σ and undoing P, Q takes it out again), so sums over batches, shards
    or processes simply add; ``tokens`` turns ``input_abs_sum`` into ASVD's mean. Validated on construction:
    ValueError for shapes that do not fit, NaN/inf, negative sums or a negative token count.
    """

    input_moment: torch.Tensor
    output_moment: torch.Tensor | None
    input_abs_sum: torch.Tensor
    tokens: int

    def __post_init__(self) -> None:
        _check_matrix("input_moment", self.input_moment)
        n = self.input_moment.shape[0]
        if self.input_abs_sum.shape != (n,):
            raise ValueError(f"input_abs_sum must have one entry per input feature ({n}, from input_moment), "
                             f"got shape {tuple(self.input_abs_sum.shape)}")
        _check_finite_non_negative("input_abs_sum", self.input_abs_sum)
        if self.output_moment is not None:
            _check_matrix("output_moment", self.output_moment)
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 0:
            raise ValueError(f"tokens must be a non-negative int, got {self.tokens!r}")

    @property
    def in_features(self) -> int:
        return self.input_moment.shape[0]

    @property
    def out_features(self) -> int | None:
        return None if self.output_moment is None else self.output_moment.shape[0]

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """A flat {name: tensor} dict for a safetensors file (``tokens`` as a 0-d int64 tensor)."""
        tensors = {"input_moment": self.input_moment, "input_abs_sum": self.input_abs_sum,
                   "tokens": torch.tensor(self.tokens, dtype=torch.int64)}
        if self.output_moment is not None:
            tensors["output_moment"] = self.output_moment
        return tensors

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> LayerStatistics:
        """The inverse of :meth:`to_tensors`; ValueError for missing, unexpected or invalid tensors."""
        required = {"input_moment", "input_abs_sum", "tokens"}
        missing = required - set(tensors)
        unexpected = set(tensors) - required - {"output_moment"}
        if missing or unexpected:
            raise ValueError(f"layer statistics need tensors {sorted(required)} (and optionally output_moment); "
                             f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        tokens = tensors["tokens"]
        if tokens.numel() != 1 or tokens.dtype.is_floating_point or tokens.dtype.is_complex \
                or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be a single integer, got a {tokens.dtype} tensor of shape "
                             f"{tuple(tokens.shape)}")
        return cls(input_moment=tensors["input_moment"], output_moment=tensors.get("output_moment"),
                   input_abs_sum=tensors["input_abs_sum"], tokens=int(tokens.item()))


def _check_matrix(name: str, moment: torch.Tensor) -> None:
    if moment.dim() != 2 or moment.shape[0] != moment.shape[1] or not moment.dtype.is_floating_point:
        raise ValueError(f"{name} must be a square floating-point matrix, got a {moment.dtype} tensor "
                         f"of shape {tuple(moment.shape)}")
    if not torch.isfinite(moment).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    _check_finite_non_negative(f"the diagonal of {name}", moment.diagonal())


def _check_finite_non_negative(name: str, values: torch.Tensor) -> None:
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (values < 0).any():
        raise ValueError(f"{name} must be non-negative (a sum of squares or absolute values), "
                         f"got a minimum of {values.min().item():.3g}")


# --------------------------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class MomentRoot:
    """An invertible factor ``R`` with ``R·Rᵀ = M`` for a (floored) weighting M, kept in its cheapest form.

    ``kind`` "diagonal": R = diag(``scale``) (fwsvd, asvd). "cholesky": R = ``basis``, lower triangular, undone
    by a triangular solve (whiten). "eigen": R = ``basis``·diag(``scale``) with ``basis`` orthogonal eigenvectors
    and ``scale`` the square roots of floored eigenvalues, so that R⁻¹ = diag(1/scale)·basisᵀ costs a matmul and
    the symmetric root E·diag(scale)·Eᵀ never needs forming (kfac; whiten when Cholesky fails).
    """

    kind: Literal["diagonal", "cholesky", "eigen"]
    basis: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        expected = {"diagonal": (False, True), "cholesky": (True, False), "eigen": (True, True)}[self.kind]
        if ((self.basis is not None), (self.scale is not None)) != expected:
            raise ValueError(f"a {self.kind} root needs {'basis' if expected[0] else 'no basis'} and "
                             f"{'scale' if expected[1] else 'no scale'}")

    def to(self, **kwargs: object) -> MomentRoot:
        return MomentRoot(self.kind, *(None if t is None else t.to(**kwargs) for t in (self.basis, self.scale)))

    def multiply(self, matrix: torch.Tensor) -> torch.Tensor:
        """``matrix @ R``."""
        if self.kind == "diagonal":
            return matrix * self.scale
        if self.kind == "cholesky":
            return matrix @ self.basis
        return (matrix @ self.basis) * self.scale

    def divide(self, matrix: torch.Tensor) -> torch.Tensor:
        """``matrix @ R⁻¹``, by a division, a triangular solve or an orthogonal transpose — never an inverse."""
        if self.kind == "diagonal":
            return matrix / self.scale
        if self.kind == "cholesky":
            return torch.linalg.solve_triangular(self.basis, matrix, upper=False, left=False)
        return (matrix / self.scale) @ self.basis.T


@dataclass(frozen=True)
class WeightTransforms:
    """A method's ``P = Rᵀ`` (``output_root`` R, R·Rᵀ = G) and ``Q = S`` (``input_root``); None is the identity.

    Its decomposition is ``svd(P·W·Q) = U Σ Vᵀ`` with ``left = P⁻¹ U Σ`` and ``right = Vᵀ Q⁻¹``.
    """

    output_root: MomentRoot | None = None
    input_root: MomentRoot | None = None

    def to(self, **kwargs: object) -> WeightTransforms:
        return WeightTransforms(*(None if root is None else root.to(**kwargs)
                                  for root in (self.output_root, self.input_root)))

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        """``P·W·Q``; the output side as ``(Wᵀ R)ᵀ`` = Rᵀ W."""
        matrix = weight if self.input_root is None else self.input_root.multiply(weight)
        return matrix if self.output_root is None else self.output_root.multiply(matrix.T).T

    def restore_left(self, left: torch.Tensor) -> torch.Tensor:
        """``P⁻¹ · left`` = R⁻ᵀ·left = (leftᵀ R⁻¹)ᵀ."""
        return left if self.output_root is None else self.output_root.divide(left.T).T

    def restore_right(self, right: torch.Tensor) -> torch.Tensor:
        """``right · Q⁻¹``."""
        return right if self.input_root is None else self.input_root.divide(right)


def method_transforms(
    method: str,
    shape: tuple[int, int],
    *,
    importance: torch.Tensor | None = None,
    statistics: LayerStatistics | None = None,
    alpha: float = ASVD_ALPHA,
    device: torch.device | str = "cpu",
) -> WeightTransforms:
    """The P and Q of ``method`` for an (m, n) = ``shape`` weight, in float64 on ``device``.

    Inputs each method needs: svd none; fwsvd ``importance`` (n,) non-negative Fisher per input feature; asvd
    ``statistics.input_abs_sum`` and ``tokens``; whiten ``statistics.input_moment``; kfac
    ``statistics.input_moment`` and ``output_moment``. Missing or unfit inputs raise ValueError naming the
    method and what it needs. A weighting that is zero everywhere carries no information and becomes the
    identity (fwsvd on a zero importance is svd; kfac with G = 0 weighs the input side only).
    """
    check_method(method)
    in_features = shape[1]
    if method == "svd":
        return WeightTransforms()
    if method == "fwsvd":
        if importance is None:
            raise ValueError("method 'fwsvd' needs a Fisher importance per input feature: estimate it with "
                             "fwsvd's estimate_fisher over the task data")
        scale = _floored_scale(_checked_importance(importance, in_features).to(device), 0.5)
        return WeightTransforms(input_root=None if scale is None else MomentRoot("diagonal", scale=scale))
    statistics = _checked_statistics(method, statistics, shape)
    if method == "asvd":
        if not math.isfinite(alpha):
            raise ValueError(f"asvd's alpha must be a finite number, got {alpha!r}")
        mean_abs = statistics.input_abs_sum.to(device=device, dtype=torch.float64) / statistics.tokens
        scale = _floored_scale(mean_abs, alpha)
        return WeightTransforms(input_root=None if scale is None else MomentRoot("diagonal", scale=scale))
    input_moment = statistics.input_moment.to(device=device, dtype=torch.float64)
    if method == "whiten":
        return WeightTransforms(input_root=_whitening_root(input_moment))
    output_moment = statistics.output_moment.to(device=device, dtype=torch.float64)
    return WeightTransforms(output_root=_eigen_root(output_moment), input_root=_eigen_root(input_moment))


def _checked_importance(importance: torch.Tensor, in_features: int) -> torch.Tensor:
    importance = torch.as_tensor(importance).detach()
    if importance.dim() != 1 or importance.numel() != in_features:
        raise ValueError(f"importance must be a 1-D tensor with one value per input feature ({in_features}), "
                         f"got shape {tuple(importance.shape)}")
    importance = importance.to(torch.float64)
    _check_finite_non_negative("importance", importance)
    return importance


def importance_scale(importance: torch.Tensor, in_features: int) -> torch.Tensor:
    """``sqrt(I)`` after validation and flooring, float64 on the CPU: fwsvd's Q and the weighting of every
    method's Fisher-weighted error. An all-zero importance carries no information and gives ones."""
    scale = _floored_scale(_checked_importance(importance, in_features), 0.5)
    return torch.ones(in_features, dtype=torch.float64) if scale is None else scale


def _checked_statistics(method: str, statistics: LayerStatistics | None,
                        shape: tuple[int, int]) -> LayerStatistics:
    """``statistics`` if they hold what ``method`` needs for an (m, n) weight, else a ValueError saying what."""
    if statistics is None or (method == "kfac" and statistics.output_moment is None):
        lacking = "no statistics were given" if statistics is None else "statistics.output_moment is None"
        raise ValueError(f"method {method!r} needs {_NEEDS[method]}, but {lacking}: estimate statistics with "
                         f"{_HOW[method]}")
    out_features, in_features = shape
    if statistics.in_features != in_features or (method == "kfac" and statistics.out_features != out_features):
        raise ValueError(f"statistics of a layer with {statistics.in_features} inputs and "
                         f"{statistics.out_features} outputs do not fit a weight of shape {shape}")
    if statistics.tokens == 0:
        raise ValueError(f"method {method!r} needs {_NEEDS[method]}, but the statistics were gathered over 0 "
                         "tokens: did the layer's hooks run on the task data?")
    return statistics


def _floored_scale(weights: torch.Tensor, power: float) -> torch.Tensor | None:
    """``weights^power`` after raising weights below IMPORTANCE_FLOOR × their maximum; None if all are zero."""
    largest = weights.max()
    if largest == 0:
        return None
    return weights.clamp_min(largest * IMPORTANCE_FLOOR).pow(power)


def _whitening_root(moment: torch.Tensor) -> MomentRoot | None:
    """A root S of ``A`` (S·Sᵀ ≈ A): Cholesky of ``A + ridge·I``, else the floored eigen root; None for A = 0.

    Cholesky is several times cheaper than an eigendecomposition and undone by a triangular solve. It fails
    only when rounding has left A indefinite by more than the ridge (e.g. float32 sums dominated by a few
    outlier features), and then the eigen root with floored eigenvalues takes over.
    """
    in_features = moment.shape[0]
    mean_diagonal = moment.diagonal().sum() / in_features
    if mean_diagonal == 0:
        return None
    shifted = moment.clone()
    shifted.diagonal().add_(WHITEN_RIDGE * mean_diagonal)
    factor, info = torch.linalg.cholesky_ex(shifted)
    if info.item() == 0:
        return MomentRoot("cholesky", basis=factor)
    return _eigen_root(moment)


def _eigen_root(moment: torch.Tensor) -> MomentRoot | None:
    """``E·diag(sqrt(max(λ, EIGENVALUE_FLOOR·λ_max)))`` from ``moment = E diag(λ) Eᵀ``; None for a zero moment.

    Only the lower triangle is read (as by Cholesky), so rounding asymmetry of summed Gram matrices is moot.
    """
    values, vectors = torch.linalg.eigh(moment)
    largest = values[-1]
    if largest <= 0:
        return None
    return MomentRoot("eigen", basis=vectors, scale=values.clamp_min(largest * EIGENVALUE_FLOOR).sqrt())
