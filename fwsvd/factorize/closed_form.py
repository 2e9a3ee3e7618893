"""The one decomposition every closed-form method truncates, and its reconstruction errors at every rank.

Weights are nn.Linear-shaped, ``(out m, in n)``: ``y = x Wᵀ + b``. The paper writes the same layer as
``y = x W`` with ``W`` of shape (in, out), so its "rows" are our input features (columns here), and its Fisher
importance ``I`` has one entry per input feature.

Each method (svd, fwsvd, asvd, whiten, kfac; :mod:`fwsvd.factorize.weighted` says what each weighs) minimises
``||P (W − Ŵ) Q||_F`` over every rank-r ``Ŵ`` by Eckart–Young on ``P·W·Q``::

    svd(P·W·Q) = U Σ Vᵀ        Ŵ_r = (P⁻¹ U_r Σ_r) (V_rᵀ Q⁻¹) = second @ first

FWSVD (Hsu et al., 2022) is P = I, Q = D = diag(sqrt(I)); plain SVD is P = Q = I.

One decomposition serves every rank: a new rank is a truncation, and the error of every rank — plain or
Fisher-weighted, for any method — follows in closed form from the kept factors (see :func:`error_curve`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fwsvd.factorize.weighted import ASVD_ALPHA, LayerStatistics, importance_scale, method_transforms
from fwsvd.view.analysis import ErrorCurves, Method, check_method
from fwsvd.view.rank_config import validate_rank


@dataclass(frozen=True)
class Decomposition:
    """``svd(P·W·Q) = U Σ Vᵀ`` kept as ``left = P⁻¹ U Σ`` (m, k), ``s`` = Σ (k,), ``right = Vᵀ Q⁻¹`` (k, n).

    k = min(m, n), s descending; row-major, contiguous, on the CPU, float64 for a float64 weight and float32
    otherwise (half-precision weights are decomposed in float32). Keeping the products rather than U and V
    makes a new rank a pair of slice copies, with no arithmetic. ``left_orthogonal`` is True when P = I (every
    method but kfac with an output moment): then left's columns are orthogonal with norms s, which makes
    error curves a sum over components.
    """

    left: torch.Tensor
    s: torch.Tensor
    right: torch.Tensor
    method: Method
    left_orthogonal: bool

    def __post_init__(self) -> None:
        # Every in-place write to a tensor or to any view of it bumps its version: what `unchanged` reads.
        object.__setattr__(self, "_versions", self._current_versions())

    def _current_versions(self) -> tuple[int, int, int]:
        return self.left._version, self.s._version, self.right._version

    @property
    def unchanged(self) -> bool:
        """False once anything wrote into this decomposition in place — e.g. a layer's factor that views it
        edited by hand without ``own_factors_()`` — so that it is not cut again."""
        return self._current_versions() == self._versions

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1])

    @property
    def full_rank(self) -> int:
        return self.s.numel()

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(first (rank, n), second (m, rank))`` with ``second @ first`` the method's rank-``rank`` optimum.

        Always new contiguous tensors, never views of this decomposition, so callers may train them in place.
        """
        validate_rank(rank, self.shape)
        return self.right[:rank].clone(), self.left[:, :rank].clone(memory_format=torch.contiguous_format)

    def factor_views(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`factors` as views of this decomposition: no copy, so a new rank costs no memory traffic.

        ``first`` is contiguous; ``second`` keeps left's row stride k. Never write to them: the decomposition
        is shared (the store, other layers); :class:`~fwsvd.surgery.lowrank.LowRankLinear` copies them before
        any write of its own (training, ``load_state_dict``).
        """
        validate_rank(rank, self.shape)
        return self.right[:rank], self.left[:, :rank]

    def reconstruct(self, rank: int) -> torch.Tensor:
        first, second = self.factors(rank)
        return second @ first

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """A flat {name: tensor} dict for a cache file; the method is the caller's to keep (it keys the file)."""
        return {"left": self.left, "s": self.s, "right": self.right,
                "left_orthogonal": torch.tensor(self.left_orthogonal)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], method: str) -> Decomposition:
        """The inverse of :meth:`to_tensors` for a decomposition made by ``method``; raises ValueError when
        tensors are missing or do not fit."""
        method = resolve_method(method, None)
        missing = {"left", "s", "right", "left_orthogonal"} - set(tensors)
        if missing:
            raise ValueError(f"a decomposition needs tensors left, s, right and left_orthogonal; "
                             f"missing {sorted(missing)}")
        left, s, right, orthogonal = (tensors[name] for name in ("left", "s", "right", "left_orthogonal"))
        k = s.numel()
        if (s.dim() != 1 or left.dim() != 2 or right.dim() != 2 or left.shape[1] != k or right.shape[0] != k
                or orthogonal.numel() != 1):
            raise ValueError(
                f"decomposition tensors do not fit together: left {tuple(left.shape)}, s {tuple(s.shape)}, "
                f"right {tuple(right.shape)}, left_orthogonal {tuple(orthogonal.shape)}"
            )
        # s outlives the factors (analyses keep it for curves and allocations), and a tensor loaded from a
        # cache file may map the whole file: a copy of s keeps 8 KB alive, not the file (5 GiB on a 1B model).
        return cls(left=left, s=s.clone(), right=right, method=method, left_orthogonal=bool(orthogonal.item()))


def resolve_method(method: str | None, importance: torch.Tensor | None) -> Method:
    """``method`` checked against the methods; None means "fwsvd" when an importance is given, else "svd"."""
    if method is None:
        return "svd" if importance is None else "fwsvd"
    return check_method(method)


def decompose(
    weight: torch.Tensor,
    importance: torch.Tensor | None = None,
    *,
    method: str | None = None,
    statistics: LayerStatistics | None = None,
    alpha: float = ASVD_ALPHA,
) -> Decomposition:
    """The decomposition of an (m, n) ``weight`` that ``method`` truncates.

    ``method`` defaults to "fwsvd" when an ``importance`` is given, else "svd"; its inputs are those of
    :func:`~fwsvd.factorize.weighted.method_transforms` (fwsvd: ``importance`` (n,); asvd, whiten, kfac:
    ``statistics``), and a missing one raises ValueError saying how to get it. Computed on the weight's
    device, in float64 for a float64 weight and float32 otherwise — except the roots of A and G, always
    float64: second moments span many orders of magnitude, and their small eigenvalues are exactly the
    directions the methods must not get wrong. A wide matrix is decomposed through its transpose (LAPACK's
    SVD of a tall matrix is several times faster on CPU, and the factors are the same with U and V swapped).
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D (out_features, in_features) tensor, got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN or infinite values")
    method = resolve_method(method, importance)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    transforms = method_transforms(method, tuple(weight.shape), importance=importance, statistics=statistics,
                                   alpha=alpha, device=weight.device).to(device=weight.device, dtype=dtype)
    matrix = transforms.apply(weight.detach().to(dtype))
    if matrix.shape[0] >= matrix.shape[1]:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    else:
        v, s, uh = torch.linalg.svd(matrix.T, full_matrices=False)
        u, vh = uh.T, v.T
    to_store = dict(device="cpu", dtype=dtype)
    # .contiguous() after .to(): the transposed route leaves column-major factors, and .to() keeps a 2-D
    # tensor's layout; row-major storage is what makes a rank cut a copy of whole rows.
    return Decomposition(
        left=transforms.restore_left(u * s).to(**to_store).contiguous(),
        s=s.to(**to_store).contiguous(),
        right=transforms.restore_right(vh).to(**to_store).contiguous(),
        method=method,
        left_orthogonal=transforms.output_root is None,
    )


def low_rank_factors(
    weight: torch.Tensor,
    rank: int,
    importance: torch.Tensor | None = None,
    *,
    method: str | None = None,
    statistics: LayerStatistics | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors of an (out, in) weight: ``(first (rank, in), second (out, rank))``, in its dtype.

    ``importance=None`` gives plain SVD (Eckart–Young); a non-negative (in,) importance gives FWSVD, the
    minimizer of ``||(weight − second @ first)·diag(sqrt(importance))||_F``; ``method`` and ``statistics``
    choose any other method (see :func:`decompose`).
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D (out_features, in_features) tensor, got shape {tuple(weight.shape)}")
    validate_rank(rank, tuple(weight.shape))
    first, second = decompose(weight, importance, method=method, statistics=statistics).factors(rank)
    return first.to(weight.dtype), second.to(weight.dtype)


def error_curve(decomposition: Decomposition, weighting: torch.Tensor | None = None) -> torch.Tensor:
    """``||(W − Ŵ_r)·diag(weighting)||_F`` for every rank r = 0..k (index r), float64, from one decomposition.

    ``W − Ŵ_r = Σ_{i≥r} l_i ρ_iᵀ`` (0-based) with l_i the columns of ``left`` and ρ_i the rows of
    ``right·diag(weighting)``. With orthogonal l_i (P = I) its squared norm is ``Σ_{i≥r} s_i² ||ρ_i||²``
    (:func:`orthogonal_tail_energies`), and for plain SVD unweighted the classic ``Σ_{i≥r} s_i²``; otherwise
    (kfac) it is ``Σ_{i,j≥r} (LᵀL)_ij (ρρᵀ)_ij`` (:func:`gram_tail_energies`). ``weighting=None`` gives the
    plain Frobenius error; pass :func:`~fwsvd.factorize.weighted.importance_scale` for the Fisher-weighted
    error. W here is ``left @ right``, which equals the weight up to rounding.
    """
    if weighting is None and decomposition.method == "svd":
        return own_objective_curve(decomposition)
    rows = decomposition.right.to(torch.float64)
    if weighting is not None:
        weighting = torch.as_tensor(weighting).to(device="cpu", dtype=torch.float64)
        if weighting.shape != (rows.shape[1],) or not torch.isfinite(weighting).all():
            raise ValueError(f"weighting must be a finite (in_features,) = ({rows.shape[1]},) tensor, "
                             f"got shape {tuple(weighting.shape)}")
        rows = rows * weighting
    if decomposition.left_orthogonal:
        energies = orthogonal_tail_energies(decomposition.s, rows)
    else:
        energies = gram_tail_energies(decomposition.left, rows)
    return energies.clamp_min(0).sqrt()


def error_curves(decomposition: Decomposition, importance: torch.Tensor | None = None) -> ErrorCurves:
    """Plain and (when ``importance`` is given) Fisher-weighted error curves of one decomposition — the same
    two units whatever the method, so that methods compare on one scale."""
    plain = error_curve(decomposition)
    weighted = None
    if importance is not None:
        weighted = error_curve(decomposition, importance_scale(importance, decomposition.shape[1]))
    return ErrorCurves(
        plain=plain,
        weighted=weighted,
        weight_norm=float(plain[0]),
        weighted_norm=None if weighted is None else float(weighted[0]),
    )


def own_objective_curve(decomposition: Decomposition) -> torch.Tensor:
    """``||P (W − Ŵ_r) Q||_F`` for r = 0..k: each method's own objective, ``sqrt(Σ_{i≥r} s_i²)``."""
    return _suffix_sums(decomposition.s.to(torch.float64).square()).sqrt()


def orthogonal_tail_energies(s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``Σ_{i≥r} s_i² ||rows_i||²`` for r = 0..k: the squared errors when left's columns are orthogonal, norms s."""
    return _suffix_sums(s.to(torch.float64).square() * rows.to(torch.float64).square().sum(dim=1))


def gram_tail_energies(left: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``||Σ_{i≥r} left_i rows_iᵀ||²_F = Σ_{i,j≥r} (LᵀL ⊙ ρρᵀ)_ij`` for r = 0..k, for any left, in O(k²) after
    two Gram products: the bottom-right block sums of all r are the diagonal of the 2-D cumulative sum of the
    flipped k×k matrix. Summing from the small end keeps the tail accurate.
    """
    left, rows = left.to(torch.float64), rows.to(torch.float64)
    products = (left.T @ left) * (rows @ rows.T)
    blocks = products.flip(0, 1).cumsum(0).cumsum(1)
    return torch.cat([blocks.diagonal().flip(0), blocks.new_zeros(1)])


def _suffix_sums(values: torch.Tensor) -> torch.Tensor:
    """``Σ_{i≥r} values_i`` for r = 0..k (k + 1 entries, the last 0)."""
    return torch.cat([values.flip(0).cumsum(0).flip(0), values.new_zeros(1)])
