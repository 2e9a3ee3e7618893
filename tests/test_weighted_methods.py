"""The five closed-form weighted low-rank methods against brute force, and their statistics and error curves.

Every objective here is computed from raw token samples (x, g) — never from the module's own roots — so the
tests do not share the module's algebra: ||(W − Ŵ)Xᵀ|| for whiten, ||G_s (W − Ŵ) Xᵀ|| for kfac (G_s the
gradient samples), which equal sqrt(tr(ΔW A ΔWᵀ)) and sqrt(tr(ΔWᵀ G ΔW A)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
from safetensors.torch import load, save

from fwsvd.factorize.closed_form import (
    decompose,
    error_curve,
    gram_tail_energies,
    orthogonal_tail_energies,
    own_objective_curve,
)
from fwsvd.factorize.weighted import (
    EIGENVALUE_FLOOR,
    WHITEN_RIDGE,
    LayerStatistics,
    method_transforms,
)
from fwsvd.fisher.statistics import StatisticsAccumulator
from fwsvd.view.analysis import METHODS

SHAPES = [(7, 5), (5, 9), (6, 6)]


@dataclass(frozen=True)
class Problem:
    """A weight, a Fisher importance, the kept token samples x (N, n) and g (N, m), and their statistics."""

    weight: torch.Tensor
    importance: torch.Tensor
    x: torch.Tensor
    g: torch.Tensor
    statistics: LayerStatistics


def _samples(tokens: int, features: int, generator: torch.Generator) -> torch.Tensor:
    """Features with scales over two decades, in a random rotation: the methods then differ clearly, while
    A keeps its eigenvalues within ~1e-5 of the largest, so at ≥ 40 tokens no floor binds (tested below)."""
    rotation, _ = torch.linalg.qr(torch.randn(features, features, generator=generator, dtype=torch.float64))
    scales = torch.logspace(-1, 1, features, dtype=torch.float64)
    return (torch.randn(tokens, features, generator=generator, dtype=torch.float64) * scales) @ rotation


def _problem(shape: tuple[int, int], seed: int, tokens: int = 40) -> Problem:
    generator = torch.Generator().manual_seed(seed)
    m, n = shape
    weight = torch.randn(shape, generator=generator, dtype=torch.float64)
    # Skewed importances, as Fisher is in practice; all well above the floor.
    importance = torch.rand(n, generator=generator, dtype=torch.float64).pow(4) + 1e-3
    x, g = _samples(tokens, n, generator), _samples(tokens, m, generator)
    statistics = LayerStatistics(input_moment=x.T @ x, output_moment=g.T @ g, input_abs_sum=x.abs().sum(0),
                                 tokens=tokens)
    return Problem(weight, importance, x, g, statistics)


def _decompose(problem: Problem, method: str, weight: torch.Tensor | None = None):
    return decompose(problem.weight if weight is None else weight, method=method,
                     importance=problem.importance, statistics=problem.statistics)


def _operators(problem: Problem, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with the method's own error ||P (W − Ŵ) Q||_F = ||L (W − Ŵ) R||_F, built from the raw samples."""
    m, n = problem.weight.shape
    identity_m, identity_n = torch.eye(m, dtype=torch.float64), torch.eye(n, dtype=torch.float64)
    if method == "fwsvd":
        return identity_m, torch.diag(problem.importance.sqrt())
    if method == "asvd":
        return identity_m, torch.diag(problem.x.abs().mean(0).sqrt())
    if method == "whiten":
        return identity_m, problem.x.T
    if method == "kfac":
        return problem.g, problem.x.T
    return identity_m, identity_n


def _objective(problem: Problem, method: str, approximation: torch.Tensor) -> torch.Tensor:
    left, right = _operators(problem, method)
    return torch.linalg.norm(left @ (problem.weight - approximation) @ right)


def _ridge(problem: Problem) -> float:
    """whiten's ridge ε: it minimises ||(W − Ŵ)X||² + ε||W − Ŵ||²."""
    moment = problem.statistics.input_moment
    return WHITEN_RIDGE * moment.trace().item() / moment.shape[0]


def _assert_no_better(problem: Problem, method: str, ours: float, approximation: torch.Tensor, what: str) -> None:
    """No rank-r candidate may beat the method's Ŵ_r on its own objective by more than 1e-6 (relative).

    For whiten that is the tolerance for its ridge too: Ŵ_ε minimises f² + ε||W − ·||², which moves the
    optimum by O(ε) and so, at a minimum, the objective by O(ε²): at most 2e-7 (relative) was measured on
    these problems, whose smallest input eigenvalues are only ~1e2 × ε.
    """
    theirs = _objective(problem, method, approximation).item()
    assert ours <= theirs * (1 + 1e-6), (
        f"{method}: {what} reaches {theirs:.10g} on the {method} objective, below the method's {ours:.10g}")


def _kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a ⊗ b (torch.kron rejects some transposed views with a size-1 dimension)."""
    return torch.einsum("ij,kl->ikjl", a, b).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


def _brute_force(problem: Problem, method: str, rank: int, restarts: int = 3) -> torch.Tensor:
    """The best rank-r ``B @ C`` that alternating least squares finds from random starts.

    Each half step solves ``min_B ||L (W − B C) R||`` (then the same for C) exactly as a generic least-squares
    problem on the Kronecker-structured design matrix, from the raw samples: nothing of the module's algebra.
    Low-rank approximation has no spurious local minima, and with invertible weights every method is one in
    disguise, so the iteration (monotone by construction) reaches the global minimum from a random start.
    """
    left, right = _operators(problem, method)
    # Column-major vec throughout, for which vec(A X B) = (Bᵀ ⊗ A) vec(X).
    target = (left @ problem.weight @ right).T.reshape(-1, 1)
    m, n = problem.weight.shape
    best, best_value = None, math.inf
    for restart in range(restarts):
        generator = torch.Generator().manual_seed(1000 + restart)
        first = torch.randn(rank, n, generator=generator, dtype=torch.float64)
        previous = math.inf
        for _ in range(3000):
            design = _kron((first @ right).T, left)  # vec(L B (C R)) = ((C R)ᵀ ⊗ L) vec(B)
            second = torch.linalg.lstsq(design, target).solution.reshape(rank, m).T.contiguous()
            design = _kron(right.T, left @ second)  # vec((L B) C R) = (Rᵀ ⊗ L B) vec(C)
            first = torch.linalg.lstsq(design, target).solution.reshape(n, rank).T.contiguous()
            value = _objective(problem, method, second @ first).item()
            if value >= previous * (1 - 1e-14):
                break
            previous = value
        if value < best_value:
            best, best_value = second @ first, value
    return best


# ------------------------------------------------------------------------------------------- optimality


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", METHODS)
def test_factors_beat_a_brute_force_optimiser_on_their_own_objective(shape, method):
    problem = _problem(shape, seed=1)
    rank = 2
    ours = _objective(problem, method, _decompose(problem, method).reconstruct(rank)).item()
    found = _brute_force(problem, method, rank)
    _assert_no_better(problem, method, ours, found, "L-BFGS on rank-r factors")
    # The optimiser must have done its job too, or the comparison above proves nothing.
    assert _objective(problem, method, found).item() <= ours * (1 + 1e-8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", METHODS)
def test_factors_beat_every_other_rank_r_candidate_at_every_rank(shape, method):
    """Other methods' Ŵ_r (plain SVD's included), random rank-r matrices and nearby rank-r perturbations."""
    problem = _problem(shape, seed=2)
    ours_decomposition = _decompose(problem, method)
    others = {other: _decompose(problem, other) for other in METHODS if other != method}
    generator = torch.Generator().manual_seed(3)
    m, n = shape
    for rank in range(1, min(shape)):
        first, second = ours_decomposition.factors(rank)
        ours = _objective(problem, method, second @ first).item()
        for other, decomposition in others.items():
            _assert_no_better(problem, method, ours, decomposition.reconstruct(rank), f"{other} at rank {rank}")
        for trial in range(60):
            size = 10.0 ** (-3 + trial % 4)  # perturbations from 1e-3 to 1, then independent random factors
            candidate = ((second + size * torch.randn(m, rank, generator=generator, dtype=torch.float64))
                         @ (first + size * torch.randn(rank, n, generator=generator, dtype=torch.float64)))
            _assert_no_better(problem, method, ours, candidate, f"a perturbation of size {size} at rank {rank}")
            random = (torch.randn(m, rank, generator=generator, dtype=torch.float64)
                      @ torch.randn(rank, n, generator=generator, dtype=torch.float64))
            _assert_no_better(problem, method, ours, random, f"a random rank-{rank} matrix")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", METHODS)
def test_own_objective_curve_is_the_objective_at_every_rank(shape, method):
    problem = _problem(shape, seed=4)
    decomposition = _decompose(problem, method)
    curve = own_objective_curve(decomposition)
    k = min(shape)
    assert curve.shape == (k + 1,) and curve.dtype == torch.float64 and curve[k] == 0
    for rank in range(k + 1):
        approximation = decomposition.reconstruct(rank) if rank else torch.zeros_like(problem.weight)
        expected = _objective(problem, method, approximation).item() ** 2
        if method == "whiten":  # its own objective is that of A + εI: ||(W − Ŵ)X||² + ε||W − Ŵ||²
            expected += _ridge(problem) * torch.linalg.norm(problem.weight - approximation).item() ** 2
        assert curve[rank].item() ** 2 == pytest.approx(expected, rel=1e-9, abs=1e-12 * curve[0].item() ** 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_no_floor_binds_on_the_optimality_problems(shape):
    """So that the methods above are exact minimisers of the sample objectives (whiten's ridge aside)."""
    for seed in (1, 2, 4):
        statistics = _problem(shape, seed).statistics
        for moment in (statistics.input_moment, statistics.output_moment):
            values = torch.linalg.eigvalsh(moment)
            assert values[0] > 10 * EIGENVALUE_FLOOR * values[-1]


def test_methods_differ_so_that_the_tests_above_can_tell_them_apart():
    problem = _problem((7, 5), seed=2)
    reconstructions = [_decompose(problem, method).reconstruct(2) for method in METHODS]
    for i, first in enumerate(reconstructions):
        for second in reconstructions[i + 1:]:
            assert (first - second).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------- exactness


def _relative_error(decomposition, weight: torch.Tensor) -> float:
    return (torch.linalg.norm(decomposition.reconstruct(min(weight.shape)) - weight) / torch.linalg.norm(weight)).item()


#: Full rank gives back W up to rounding amplified by the conditioning of P and Q. The eigenvalue floor bounds
#: κ(root) by 1/sqrt(EIGENVALUE_FLOOR) = 1e3 per side (kfac: κ(P)κ(Q) ≤ 1e6), and the whitening ridge bounds
#: κ(L) by sqrt(n / WHITEN_RIDGE) ≤ 3e3 for n ≤ 9; so float64 rounding (1.1e-16) times 1e6 times a small
#: constant (the SVD's backward error, ~k) stays below 1e-9.
FULL_RANK_RTOL = 1e-9


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("tokens", [40, 3])
def test_full_rank_reproduces_the_weight_even_with_singular_statistics(shape, method, tokens):
    """3 tokens < min(m, n): A and G are singular, so only the ridge and the floor make P and Q invertible."""
    problem = _problem(shape, seed=5, tokens=tokens)
    problem = replace(problem, importance=problem.importance * (torch.arange(shape[1]) % 3 != 0))  # some zeros
    assert _relative_error(_decompose(problem, method), problem.weight) < FULL_RANK_RTOL


def test_floors_bind_on_singular_statistics():
    """The singular case above really exercises the floors: without them the roots would not be invertible."""
    statistics = _problem((7, 5), seed=5, tokens=3).statistics
    for moment in (statistics.input_moment, statistics.output_moment):
        values = torch.linalg.eigvalsh(moment)
        assert values[0] < EIGENVALUE_FLOOR * values[-1]
    transforms = method_transforms("kfac", (7, 5), statistics=statistics)
    for root in (transforms.output_root, transforms.input_root):
        assert root.kind == "eigen" and root.scale.max() / root.scale.min() == pytest.approx(1e3, rel=1e-9)


def test_asvd_with_a_feature_that_is_never_active():
    problem = _problem((6, 6), seed=6)
    x = problem.x.clone()
    x[:, 2] = 0
    statistics = replace(problem.statistics, input_abs_sum=x.abs().sum(0))
    decomposition = decompose(problem.weight, method="asvd", statistics=statistics)
    assert torch.isfinite(decomposition.right).all()
    assert _relative_error(decomposition, problem.weight) < FULL_RANK_RTOL


def test_whiten_falls_back_to_an_eigen_root_when_cholesky_fails():
    """An A made indefinite beyond the ridge (as float32 rounding can do) still gives an exact decomposition."""
    problem = _problem((7, 5), seed=7)
    moment = problem.statistics.input_moment
    values, vectors = torch.linalg.eigh(moment)
    shift = values[0] + 1e-3 * moment.trace() / moment.shape[0]  # λ_min becomes −1e-3·tr/n, far below −ridge
    indefinite = moment - shift * torch.outer(vectors[:, 0], vectors[:, 0])
    statistics = replace(problem.statistics, input_moment=indefinite)
    assert method_transforms("whiten", (7, 5), statistics=problem.statistics).input_root.kind == "cholesky"
    assert method_transforms("whiten", (7, 5), statistics=statistics).input_root.kind == "eigen"
    assert _relative_error(decompose(problem.weight, method="whiten", statistics=statistics),
                           problem.weight) < FULL_RANK_RTOL


@pytest.mark.parametrize("method", METHODS)
def test_statistics_are_sums_whose_scale_does_not_matter(method):
    problem = _problem((5, 9), seed=8)
    statistics = problem.statistics
    scaled = LayerStatistics(input_moment=statistics.input_moment * 1e3, output_moment=statistics.output_moment * 1e-3,
                             input_abs_sum=statistics.input_abs_sum * 7, tokens=statistics.tokens * 7)
    expected = _decompose(problem, method).reconstruct(2)
    actual = decompose(problem.weight, method=method, importance=problem.importance * 50,
                                statistics=scaled).reconstruct(2)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision_weights_give_float32_factors_in_row_major_cpu_storage(method, dtype):
    """float32 statistics, as the accumulator gives them; float32 arithmetic around float64 roots.

    Full rank reproduces the weight within 100·ε32·κ(P)κ(Q): float32 rounding, amplified by undoing P and Q,
    times a constant for the SVD's backward error and the matmuls at k ≤ 9. Isotropic samples keep κ(P)κ(Q)
    near 1 (checked), so the bound is tight enough to catch a float32 eigendecomposition or an explicit
    inverse. (With the other tests' anisotropic samples, κ(P)κ(Q) ≈ 1e4, float32 full-rank errors measured
    ~1e-5 for kfac and ≤ 4e-6 for the other methods.)
    """
    generator = torch.Generator().manual_seed(9)
    m, n, tokens = 5, 9, 400
    x = torch.randn(tokens, n, generator=generator, dtype=torch.float64)
    g = torch.randn(tokens, m, generator=generator, dtype=torch.float64)
    statistics = LayerStatistics(input_moment=(x.T @ x).float(), output_moment=(g.T @ g).float(),
                                 input_abs_sum=x.abs().sum(0).float(), tokens=tokens)
    weight = torch.randn(m, n, generator=generator).to(dtype)
    importance = torch.rand(n, generator=generator) + 0.5
    decomposition = decompose(weight, method=method, importance=importance, statistics=statistics)
    for tensor in (decomposition.left, decomposition.s, decomposition.right):
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.is_contiguous()
    first, second = decomposition.factors(3)
    assert first.shape == (3, n) and second.shape == (m, 3) and first.is_contiguous() and second.is_contiguous()
    first.mul_(0)  # factors are copies: training them in place leaves the decomposition alone
    assert decomposition.right.abs().max() > 0
    conditioning = math.prod(torch.linalg.cond(moment.double()).sqrt().item()
                             for moment in (statistics.input_moment, statistics.output_moment))
    assert conditioning < 3
    bound = 100 * torch.finfo(torch.float32).eps * conditioning
    assert _relative_error(decomposition, weight.float()) < bound


# ------------------------------------------------------------------------------------------- error curves


def _explicit_errors(decomposition, weight: torch.Tensor, weighting: torch.Tensor | None) -> torch.Tensor:
    scale = torch.ones(weight.shape[1], dtype=torch.float64) if weighting is None else weighting
    errors = [torch.linalg.norm(weight * scale)]
    for rank in range(1, decomposition.full_rank + 1):
        errors.append(torch.linalg.norm((weight - decomposition.reconstruct(rank)) * scale))
    return torch.stack(errors)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fisher_weighting", [False, True])
def test_error_curve_matches_explicit_reconstruction_errors(shape, method, fisher_weighting):
    problem = _problem(shape, seed=10)
    decomposition = _decompose(problem, method)
    weighting = problem.importance.sqrt() if fisher_weighting else None
    curve = error_curve(decomposition, weighting)
    assert curve.shape == (min(shape) + 1,) and curve.dtype == torch.float64
    explicit = _explicit_errors(decomposition, problem.weight, weighting)
    torch.testing.assert_close(curve, explicit, rtol=1e-9, atol=1e-10 * explicit[0].item())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", [method for method in METHODS if method != "kfac"])
def test_gram_and_orthogonal_formulas_agree_when_left_is_orthogonal(shape, method):
    problem = _problem(shape, seed=11)
    decomposition = _decompose(problem, method)
    assert decomposition.left_orthogonal
    rows = decomposition.right * problem.importance.sqrt()
    gram = gram_tail_energies(decomposition.left, rows)
    orthogonal = orthogonal_tail_energies(decomposition.s, rows)
    torch.testing.assert_close(gram, orthogonal, rtol=1e-9, atol=1e-12 * gram[0].item())


def test_kfac_needs_the_gram_formula():
    """kfac's left columns are not orthogonal: the diagonal formula is wrong there, so the dispatch matters."""
    problem = _problem((7, 5), seed=12)
    decomposition = _decompose(problem, "kfac")
    assert not decomposition.left_orthogonal
    orthogonal = orthogonal_tail_energies(decomposition.s, decomposition.right).sqrt()
    explicit = _explicit_errors(decomposition, problem.weight, None)
    assert (orthogonal - explicit).abs().max() > 1e-2 * explicit[0]
    torch.testing.assert_close(error_curve(decomposition), explicit, rtol=1e-9, atol=1e-10 * explicit[0])


# ------------------------------------------------------------------------------------------- accumulator


def test_accumulator_equals_a_loop_over_unpadded_tokens():
    generator = torch.Generator().manual_seed(13)
    m, n = 6, 5
    accumulator = StatisticsAccumulator({"layer": (m, n), "other": (3, 4)})
    batches = []
    for batch_size, length in [(3, 4), (2, 6)]:
        x = torch.randn(batch_size, length, n, generator=generator)
        g = torch.randn(batch_size, length, m, generator=generator)
        keep = torch.rand(batch_size, length, generator=generator) > 0.3
        keep[0, 0] = False
        x[~keep] = 1e3  # padding with large values: any leak shows
        g[~keep] = -1e3
        accumulator.add_input("layer", x, keep)
        accumulator.add_output_grad("layer", g, keep)
        batches.append((x, g, keep))
    accumulator.add_input("layer", x[:1, :2].half())  # no mask: every token counts; half precision is accepted
    batches.append((x[:1, :2].half(), None, torch.ones(1, 2, dtype=torch.bool)))

    input_moment, output_moment = torch.zeros(n, n, dtype=torch.float64), torch.zeros(m, m, dtype=torch.float64)
    abs_sum, tokens = torch.zeros(n, dtype=torch.float64), 0
    for x, g, keep in batches:
        for b in range(keep.shape[0]):
            for t in range(keep.shape[1]):
                if keep[b, t]:
                    token = x[b, t].double()
                    input_moment += torch.outer(token, token)
                    abs_sum += token.abs()
                    tokens += 1
                    if g is not None:
                        output_moment += torch.outer(g[b, t].double(), g[b, t].double())
    statistics = accumulator.result()
    layer = statistics["layer"]
    assert layer.tokens == tokens
    for actual, expected in [(layer.input_moment, input_moment), (layer.output_moment, output_moment),
                             (layer.input_abs_sum, abs_sum)]:
        assert actual.dtype == torch.float32 and actual.device.type == "cpu"
        torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)
    # A layer never seen: zero sums, no tokens, and no output moment since no gradient arrived.
    other = statistics["other"]
    assert other.tokens == 0 and other.output_moment is None and not other.input_moment.any()


def test_accumulator_results_are_snapshots():
    accumulator = StatisticsAccumulator({"layer": (2, 3)})
    accumulator.add_input("layer", torch.ones(1, 2, 3))
    before = accumulator.result()["layer"]
    accumulator.add_input("layer", torch.ones(1, 2, 3))
    assert before.tokens == 2 and before.input_moment[0, 0] == 2
    assert accumulator.result()["layer"].input_moment[0, 0] == 4


def test_forward_only_statistics_serve_asvd_and_whiten_but_not_kfac():
    problem = _problem((6, 6), seed=14)
    accumulator = StatisticsAccumulator({"layer": (6, 6)})
    accumulator.add_input("layer", problem.x[None].float())
    statistics = accumulator.result()["layer"]
    assert statistics.output_moment is None
    for method in ("asvd", "whiten"):
        assert _relative_error(decompose(problem.weight, method=method, statistics=statistics),
                               problem.weight) < 1e-9
    with pytest.raises(ValueError, match=r"method 'kfac' needs input and output second moments.*output_moment is None"
                                         r".*add_output_grad"):
        decompose(problem.weight, method="kfac", statistics=statistics)


@pytest.mark.parametrize("call, match", [
    (lambda a: a.add_input("missing", torch.ones(1, 2, 5)), r"unknown layer 'missing'"),
    (lambda a: a.add_input("layer", torch.ones(1, 2, 4)), r"5 features in its last dimension"),
    (lambda a: a.add_output_grad("layer", torch.ones(1, 2, 5)), r"6 features in its last dimension"),
    (lambda a: a.add_input("layer", torch.ones(1, 2, 5), torch.ones(2, 1, dtype=torch.bool)),
     r"keep must have the token shape \(1, 2\)"),
])
def test_accumulator_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(StatisticsAccumulator({"layer": (6, 5)}))


# ------------------------------------------------------------------------------------------- statistics I/O


def test_statistics_round_trip_through_safetensors():
    statistics = _problem((6, 5), seed=15).statistics
    tensors = statistics.to_tensors()
    assert tensors["tokens"].dtype == torch.int64 and tensors["tokens"].dim() == 0
    restored = LayerStatistics.from_tensors(load(save({k: v.contiguous() for k, v in tensors.items()})))
    assert restored.tokens == statistics.tokens
    for name in ("input_moment", "output_moment", "input_abs_sum"):
        assert torch.equal(getattr(restored, name), getattr(statistics, name))
    forward_only = replace(statistics, output_moment=None)
    assert LayerStatistics.from_tensors(forward_only.to_tensors()).output_moment is None


def _good_tensors() -> dict[str, torch.Tensor]:
    return _problem((6, 5), seed=16).statistics.to_tensors()


def _with(**changes: torch.Tensor | None) -> dict[str, torch.Tensor]:
    tensors = _good_tensors()
    for name, value in changes.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    return tensors


def _nan_at(tensor: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[index] = math.nan
    return tensor


@pytest.mark.parametrize("tensors, match", [
    (_with(input_moment=None), r"missing \['input_moment'\]"),
    (_with(extra=torch.zeros(1)), r"unexpected \['extra'\]"),
    (_with(input_moment=torch.eye(5)[:4]), r"input_moment must be a square floating-point matrix.*\(4, 5\)"),
    (_with(input_moment=torch.eye(5, dtype=torch.int64)), r"input_moment must be a square floating-point"),
    (_with(output_moment=torch.ones(6)), r"output_moment must be a square"),
    (_with(input_abs_sum=torch.ones(4)), r"input_abs_sum must have one entry per input feature \(5"),
    (_with(input_moment=_nan_at(_good_tensors()["input_moment"], (0, 1))), r"input_moment contains NaN"),
    (_with(output_moment=_nan_at(_good_tensors()["output_moment"], (2, 2))), r"output_moment contains NaN"),
    (_with(input_abs_sum=_nan_at(_good_tensors()["input_abs_sum"], (3,))), r"input_abs_sum contains NaN"),
    (_with(input_moment=-torch.eye(5, dtype=torch.float64)), r"diagonal of input_moment must be non-negative"),
    (_with(input_abs_sum=-torch.ones(5)), r"input_abs_sum must be non-negative"),
    (_with(tokens=torch.tensor(-1)), r"tokens must be a non-negative int"),
    (_with(tokens=torch.tensor(4.0)), r"tokens must be a single integer"),
    (_with(tokens=torch.tensor([4, 5])), r"tokens must be a single integer"),
])
def test_statistics_reject_bad_tensors(tensors, match):
    with pytest.raises(ValueError, match=match):
        LayerStatistics.from_tensors(tensors)


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("method, kwargs, match", [
    ("qr", {}, r"method must be one of svd, fwsvd, asvd, whiten, kfac, got 'qr'"),
    ("fwsvd", {}, r"method 'fwsvd' needs a Fisher importance per input feature: estimate it"),
    ("asvd", {}, r"method 'asvd' needs the mean absolute input per feature .*no statistics were given.*add_input"),
    ("whiten", {}, r"method 'whiten' needs the input second moment .*no statistics were given"),
    ("kfac", {}, r"method 'kfac' needs input and output second moments .*no statistics were given.*add_output_grad"),
    ("fwsvd", {"importance": -torch.ones(5)}, r"importance must be non-negative"),
    ("fwsvd", {"importance": torch.full((5,), math.nan)}, r"importance contains NaN"),
    ("fwsvd", {"importance": torch.ones(7)}, r"one value per input feature \(5\), got shape \(7,\)"),
    ("asvd", {"alpha": math.nan}, r"alpha must be a finite number"),
])
def test_bad_or_missing_inputs_raise_clear_errors(method, kwargs, match):
    problem = _problem((7, 5), seed=17)
    if method == "asvd" and "alpha" in kwargs:
        kwargs = {**kwargs, "statistics": problem.statistics}
    with pytest.raises(ValueError, match=match):
        decompose(problem.weight, method=method, **kwargs)


@pytest.mark.parametrize("method", ["asvd", "whiten", "kfac"])
def test_statistics_of_another_layer_or_of_no_tokens_are_rejected(method):
    problem = _problem((7, 5), seed=18)
    other_inputs = _problem((7, 6), seed=18).statistics
    with pytest.raises(ValueError, match=r"statistics of a layer with 6 inputs and 7 outputs do not fit .*\(7, 5\)"):
        decompose(problem.weight, method=method, statistics=other_inputs)
    empty = replace(problem.statistics, tokens=0)
    with pytest.raises(ValueError, match=rf"method '{method}' needs .* gathered over 0 tokens"):
        decompose(problem.weight, method=method, statistics=empty)


def test_kfac_checks_the_output_side_too():
    problem = _problem((7, 5), seed=19)
    other_outputs = _problem((8, 5), seed=19).statistics
    with pytest.raises(ValueError, match=r"5 inputs and 8 outputs do not fit"):
        decompose(problem.weight, method="kfac", statistics=other_outputs)
    decompose(problem.weight, method="whiten", statistics=other_outputs)  # whiten ignores the output side


def test_bad_weights_ranks_and_weightings_raise():
    problem = _problem((7, 5), seed=20)
    with pytest.raises(ValueError, match=r"weight must be a 2-D"):
        decompose(problem.weight[0], method="svd")
    with pytest.raises(ValueError, match=r"weight contains NaN"):
        decompose(_nan_at(problem.weight, (1, 1)), method="svd")
    decomposition = _decompose(problem, "kfac")
    for rank in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"choose an integer from 1 to 5"):
            decomposition.factors(rank)
    with pytest.raises(ValueError, match=r"weighting must be a finite \(in_features,\) = \(5,\) tensor"):
        error_curve(decomposition, torch.ones(7))
    with pytest.raises(ValueError, match=r"weighting must be a finite"):
        error_curve(decomposition, torch.full((5,), math.inf))


def test_zero_weightings_carry_no_information_and_fall_back_to_the_identity():
    problem = _problem((7, 5), seed=21)
    zero = LayerStatistics(input_moment=torch.zeros(5, 5), output_moment=torch.zeros(7, 7),
                           input_abs_sum=torch.zeros(5), tokens=10)
    svd = _decompose(problem, "svd").reconstruct(2)
    for method in METHODS:
        decomposition = decompose(problem.weight, method=method, importance=torch.zeros(5), statistics=zero)
        torch.testing.assert_close(decomposition.reconstruct(2), svd, rtol=1e-9, atol=1e-12)
        assert decomposition.left_orthogonal
