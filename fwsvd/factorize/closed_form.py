"""SVD and Fisher-weighted SVD in closed form, and reconstruction errors at every rank.

Weights are nn.Linear-shaped, ``(out_features, in_features)``: ``y = x Wᵀ + b``. The paper writes the same
layer as ``y = x W`` with ``W`` of shape (in, out), so its "rows" are our input features (columns here),
and its Fisher importance ``I`` has one entry per input feature.

FWSVD (Hsu et al., 2022) with ``D = diag(sqrt(I))``::

    svd(W·D) = U S Vᵀ        W ≈ (U_r S_r) (V_rᵀ D⁻¹) = second @ first

which minimizes ``||(W − Ŵ)·D||_F`` over every rank-r ``Ŵ`` (Eckart–Young applied to ``W·D``).
Plain SVD is the case ``D = I``.

One decomposition serves every rank: a new rank is a truncation, and the error of every rank — plain or
Fisher-weighted, for either method — follows in closed form from the singular values and the column norms
of the rescaled right singular vectors (see :func:`error_curve`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fwsvd.view.analysis import ErrorCurves, Method
from fwsvd.view.rank_config import validate_rank

#: Importances below this fraction of the largest one are raised to it. Without a floor, a feature with
#: zero Fisher (e.g. never active on the task data) gets D⁻¹ = ∞ in ``first``; with it, such features are
#: simply the least protected. The factorization is unchanged by scaling I, so a relative floor is natural.
IMPORTANCE_FLOOR = 1e-6


def importance_scale(importance: torch.Tensor, in_features: int) -> torch.Tensor:
    """``sqrt(I)`` after validation and flooring: the diagonal of D, as float64.

    Raises ValueError for a wrong shape, NaN/inf or negative values. An all-zero importance carries no
    information, so it becomes uniform (FWSVD then equals SVD).
    """
    importance = torch.as_tensor(importance)
    if importance.dim() != 1 or importance.numel() != in_features:
        raise ValueError(
            f"importance must be a 1-D tensor with one value per input feature ({in_features}), "
            f"got shape {tuple(importance.shape)}"
        )
    importance = importance.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(importance).all():
        raise ValueError("importance contains NaN or infinite values")
    if (importance < 0).any():
        raise ValueError(f"importance must be non-negative, got a minimum of {importance.min().item():.3g}")
    largest = importance.max()
    if largest == 0:
        return torch.ones(in_features, dtype=torch.float64)
    return importance.clamp_min(largest * IMPORTANCE_FLOOR).sqrt()


@dataclass(frozen=True)
class Decomposition:
    """The thin SVD ``weight · diag(scale) = U · diag(s) · Vᵀ``, kept in the form the factors are cut from.

    ``left`` = U·S (out, k) and ``right`` = Vᵀ·D⁻¹ (k, in), with k = min(out, in), s descending and
    D = diag(scale) (``scale`` is None for plain SVD, and then ``right`` = Vᵀ). Keeping the products rather
    than U and V makes a new rank a pair of slice copies, with no arithmetic; and the rows of ``right`` are
    the rescaled singular vectors whose norms give the error curves. On the CPU in float32 (float64 for a
    float64 weight): half-precision weights are decomposed in float32.
    """

    left: torch.Tensor
    s: torch.Tensor
    right: torch.Tensor
    scale: torch.Tensor | None

    @property
    def method(self) -> Method:
        return "svd" if self.scale is None else "fwsvd"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1])

    @property
    def full_rank(self) -> int:
        return self.s.numel()

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(first, second)`` with first = V_rᵀ D⁻¹ (rank, in) and second = U_r S_r (out, rank).

        Always new contiguous tensors, never views of this decomposition, so callers may train them in place.
        """
        validate_rank(rank, self.shape)
        first = self.right[:rank].clone()
        second = self.left[:, :rank].clone(memory_format=torch.contiguous_format)
        return first, second

    def reconstruct(self, rank: int) -> torch.Tensor:
        first, second = self.factors(rank)
        return second @ first

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"left": self.left, "s": self.s, "right": self.right}
        if self.scale is not None:
            tensors["scale"] = self.scale
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Decomposition":
        """The inverse of :meth:`to_tensors`; raises ValueError when tensors are missing or do not fit."""
        missing = {"left", "s", "right"} - set(tensors)
        if missing:
            raise ValueError(f"a decomposition needs tensors left, s and right; missing {sorted(missing)}")
        left, s, right, scale = tensors["left"], tensors["s"], tensors["right"], tensors.get("scale")
        k = s.numel()
        if (s.dim() != 1 or left.dim() != 2 or right.dim() != 2 or left.shape[1] != k or right.shape[0] != k
                or (scale is not None and scale.shape != (right.shape[1],))):
            raise ValueError(
                f"decomposition tensors do not fit together: left {tuple(left.shape)}, s {tuple(s.shape)}, "
                f"right {tuple(right.shape)}, scale {None if scale is None else tuple(scale.shape)}"
            )
        return cls(left=left, s=s, right=right, scale=scale)


def decompose(weight: torch.Tensor, importance: torch.Tensor | None = None) -> Decomposition:
    """The thin SVD of ``weight · D`` (D = diag(sqrt(importance)), or the identity for plain SVD).

    A wide matrix is decomposed through its transpose: LAPACK's SVD of a tall matrix is several times
    faster on CPU, and the factors are the same with U and V swapped.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D (out_features, in_features) tensor, got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN or infinite values")
    weight = weight.detach()
    compute_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    matrix = weight.to(compute_dtype)
    scale = None
    if importance is not None:
        scale = importance_scale(importance, weight.shape[1]).to(device=weight.device, dtype=compute_dtype)
        matrix = matrix * scale
    out_features, in_features = matrix.shape
    if out_features >= in_features:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    else:
        v, s, uh = torch.linalg.svd(matrix.T, full_matrices=False)
        u, vh = uh.T, v.T
    left = u * s
    right = vh if scale is None else vh / scale
    to_store = dict(device="cpu", dtype=compute_dtype)
    # .contiguous() after .to(): the transposed route leaves column-major factors, and .to() keeps a 2-D
    # tensor's layout; row-major storage is what makes a rank cut a fast copy of whole rows.
    return Decomposition(
        left=left.to(**to_store).contiguous(),
        s=s.to(**to_store).contiguous(),
        right=right.to(**to_store).contiguous(),
        scale=None if scale is None else scale.to(**to_store),
    )


def low_rank_factors(
    weight: torch.Tensor, rank: int, importance: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors of an (out, in) weight: ``(first (rank, in), second (out, rank))``.

    ``importance=None`` gives plain SVD (Eckart–Young); a non-negative (in,) importance gives FWSVD, the
    minimizer of ``||(weight − second @ first)·diag(sqrt(importance))||_F``. Importances below
    ``IMPORTANCE_FLOOR`` × their maximum are raised to it (an all-zero importance means plain SVD).
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D (out_features, in_features) tensor, got shape {tuple(weight.shape)}")
    validate_rank(rank, tuple(weight.shape))
    first, second = decompose(weight, importance).factors(rank)
    return first.to(weight.dtype), second.to(weight.dtype)


def error_curve(decomposition: Decomposition, weighting: torch.Tensor | None = None) -> torch.Tensor:
    """``||(W − W_r)·diag(weighting)||_F`` for every rank r = 0..k (index r), from one decomposition.

    With ``W·D = Σ s_i u_i v_iᵀ``, the error at rank r is ``Σ_{i>r} s_i u_i (v_iᵀ D⁻¹)·diag(w)``; the u_i are
    orthonormal, so its squared norm is ``Σ_{i>r} s_i² ||r_i ⊙ w||²`` with r_i the rows of
    ``decomposition.right`` = Vᵀ D⁻¹ — column norms of the rescaled singular vectors, no matrix formed.
    ``weighting=None`` gives the plain Frobenius error. Pass ``importance_scale(importance)`` as weighting
    for the Fisher-weighted error.
    """
    energies = decomposition.s.to(torch.float64).square()
    if weighting is None and decomposition.scale is None:
        per_component = energies  # orthonormal v_i: the classic Σ_{i>r} s_i²
    else:
        rows = decomposition.right.to(torch.float64)
        if weighting is not None:
            rows = rows * weighting.to(torch.float64)
        per_component = energies * rows.square().sum(dim=1)
    tail = torch.flip(torch.cumsum(torch.flip(per_component, [0]), 0), [0])
    tail = torch.cat([tail, tail.new_zeros(1)])
    return tail.clamp_min(0).sqrt()


def error_curves(decomposition: Decomposition, importance: torch.Tensor | None = None) -> ErrorCurves:
    """Plain and (when ``importance`` is given) Fisher-weighted error curves of one decomposition."""
    plain = error_curve(decomposition)
    weighted = None
    if importance is not None:
        weighting = importance_scale(importance, decomposition.shape[1])
        weighted = error_curve(decomposition, weighting)
    return ErrorCurves(
        plain=plain,
        weighted=weighted,
        weight_norm=float(plain[0]),
        weighted_norm=None if weighted is None else float(weighted[0]),
    )
