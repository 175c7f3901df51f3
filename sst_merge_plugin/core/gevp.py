"""Symmetric-definite generalized eigenproblems ``gain · x = λ · cost · x``.

For a PSD ``gain`` and a positive definite ``cost`` the solutions are real, ``λ ≥ 0``, and the
eigenvectors can be chosen ``cost``-orthonormal: ``Xᵀ · cost · X = I``, ``Xᵀ · gain · X = diag(λ)``.

Two solvers:

* **dense** — Cholesky whitening in float64: ``cost = L Lᵀ``, ``S = L⁻¹ gain L⁻ᵀ``,
  ``S = Y diag(λ) Yᵀ`` (``torch.linalg.eigh``), ``X = L⁻ᵀ Y``. Gives the whole spectrum.
* **krylov** — the ``k`` leading pairs only (restarted block Krylov on the Cholesky-whitened
  operator, see :func:`solve_top_k`), for factors too large for a dense ``eigh`` (``d`` of
  several thousand). Used for ``top_k`` selection.

:class:`GEVPCache` memoises solutions by the *content* of the two matrices, so factors shared
by several weights (q/k/v share their input factor ``A``; gate/up too) are solved once.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from sst_merge_plugin.choice import Choice
from sst_merge_plugin.core.errors import SolverError
from sst_merge_plugin.core.fisher import all_finite, content_key


class Solver(Choice):
    """Which eigensolver: ``dense`` (full spectrum), ``krylov`` (top-k) or ``auto``."""

    AUTO = "auto"
    DENSE = "dense"
    KRYLOV = "krylov"


#: a solver, by member or by name
SolverName = Solver | str

#: ``auto`` uses the dense solver up to this dimension, the Krylov solver above it (when only the top ``k``
#: pairs are needed).
DENSE_MAX_DIM = 4096


@dataclass(frozen=True)
class GeneralizedEigenpairs:
    """Leading solutions of ``gain · x = λ · cost · x``, eigenvalues in descending order.

    ``vectors`` (``d × m``) satisfy ``vectorsᵀ · cost · vectors = I``. ``complete`` is true when
    all ``m = d`` pairs are present (dense solver).
    """

    values: Tensor
    vectors: Tensor
    complete: bool

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor storage this solution keeps alive."""
        return sum(t.untyped_storage().nbytes() for t in (self.values, self.vectors))


def _check_pencil(gain: Tensor, cost: Tensor) -> None:
    for name, matrix in (("gain", gain), ("cost", cost)):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise SolverError(f"{name} matrix must be square, got shape {tuple(matrix.shape)}")
        if not all_finite(matrix):
            raise SolverError(f"{name} matrix contains NaN/Inf")
    if gain.shape != cost.shape:
        raise SolverError(
            f"gain and cost matrices differ in shape: {tuple(gain.shape)} vs {tuple(cost.shape)}"
        )


def _singular_cost_error(dim: int) -> SolverError:
    return SolverError(
        f"the benign (cost) Fisher factor of dimension {dim} is singular or not positive "
        "definite; use damping > 0 (e.g. damping: 1e-3) so that F_benign + ε·(tr F/d)·I is SPD"
    )


def solve_dense(gain: Tensor, cost: Tensor) -> GeneralizedEigenpairs:
    """All pairs of ``gain x = λ cost x`` in float64 by Cholesky whitening (see module doc)."""
    _check_pencil(gain, cost)
    gain64, cost64 = gain.double(), cost.double()
    lower, info = torch.linalg.cholesky_ex(cost64)
    if int(info) != 0:
        raise _singular_cost_error(cost.shape[0])
    # S = L⁻¹ gain L⁻ᵀ, symmetrised against round-off
    half = torch.linalg.solve_triangular(lower, gain64, upper=False)
    whitened = torch.linalg.solve_triangular(lower, half.T, upper=False)
    whitened = 0.5 * (whitened + whitened.T)
    values, eigvecs = torch.linalg.eigh(whitened)
    vectors = torch.linalg.solve_triangular(lower.T, eigvecs, upper=True)
    order = torch.argsort(values, descending=True, stable=True)
    return GeneralizedEigenpairs(values[order], vectors[:, order], complete=True)


def _whitened_operator(gain: Tensor, lower: Tensor):
    """``Y ↦ S Y`` with ``S = L⁻¹ gain L⁻ᵀ`` applied implicitly (two triangular solves).

    ``gain · Z`` is evaluated as ``(Zᵀ · gainᵀ)ᵀ`` (the same product): for a tall, narrow ``Z``
    BLAS runs this orientation about twice as fast on the CPU.
    """

    def apply(block: Tensor) -> Tensor:
        right = torch.linalg.solve_triangular(lower.T, block, upper=True)
        return torch.linalg.solve_triangular(lower, (right.T @ gain.T).T, upper=False)

    return apply


def solve_top_k(
    gain: Tensor,
    cost: Tensor,
    k: int,
    *,
    tol: float = 1e-9,
    depth: int = 4,
    max_restarts: int = 100,
    seed: int = 0,
) -> GeneralizedEigenpairs:
    """The ``k`` largest pairs of ``gain x = λ cost x`` without a dense eigendecomposition.

    Restarted block Krylov (block Lanczos) with Rayleigh–Ritz, in float64, on the whitened
    operator ``S = L⁻¹ gain L⁻ᵀ`` (``cost = L Lᵀ``), applied implicitly: each step costs two
    triangular solves and one product with ``gain`` on a ``d × b`` block (``b = 2k`` clamped to
    ``[k+8, d]``). The Krylov space ``[Y, SY, …, S^depth Y]`` is orthonormalised, ``S`` is
    projected onto it, and the leading ``b`` Ritz vectors ``Y' = K c`` restart the next cycle,
    with their images ``S Y' = (S K) c`` taken from the cycle's images (no extra product),
    until every wanted residual satisfies ``‖S y − θ y‖ ≤ tol · θ₁``. Returns ``x = L⁻ᵀ y``
    (``cost``-orthonormal). The one dense step is the Cholesky factorisation, ``d³/3`` flops.
    """
    _check_pencil(gain, cost)
    dim = gain.shape[0]
    if k < 1:
        raise SolverError(f"top-k solver needs k >= 1, got {k}")
    block = min(dim, max(2 * k, k + 8))
    if block * (depth + 1) >= dim:  # the Krylov space would be the whole space: go dense
        return _truncate(solve_dense(gain, cost), k)
    gain64 = gain.double()
    lower, info = torch.linalg.cholesky_ex(cost.double())
    if int(info) != 0:
        raise _singular_cost_error(dim)
    apply = _whitened_operator(gain64, lower)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    start = torch.randn(dim, block, generator=generator, dtype=torch.float64).to(gain.device)
    current = torch.linalg.qr(start).Q
    current_image = apply(current)
    residual_ratio = float("inf")
    for _ in range(max_restarts):
        bases, images = [current], [current_image]
        for level in range(depth):
            nxt = images[level]
            for _ in range(2):  # block classical Gram–Schmidt, twice for stability
                for basis in bases:
                    nxt = nxt - basis @ (basis.T @ nxt)
            bases.append(torch.linalg.qr(nxt).Q)
            images.append(apply(bases[-1]))
        krylov, krylov_image = torch.cat(bases, dim=1), torch.cat(images, dim=1)
        projected = krylov.T @ krylov_image
        theta, coeffs = torch.linalg.eigh(0.5 * (projected + projected.T))
        order = torch.argsort(theta, descending=True, stable=True)[:block]
        theta, coeffs = theta[order], coeffs[:, order]
        ritz = krylov @ coeffs
        residual = krylov_image @ coeffs[:, :k] - ritz[:, :k] * theta[:k]
        scale = max(float(theta[0]), 1e-300)
        residual_ratio = float(torch.linalg.vector_norm(residual, dim=0).max()) / scale
        if residual_ratio <= tol:
            break
        current, current_image = ritz, krylov_image @ coeffs
    else:
        warnings.warn(
            f"top-k generalized eigensolver stopped after {max_restarts} restarts with relative "
            f"residual {residual_ratio:.2e} > tol {tol:.1e}; eigenpairs are approximate",
            RuntimeWarning,
            stacklevel=2,
        )
    vectors = torch.linalg.solve_triangular(lower.T, ritz[:, :k], upper=True)
    return GeneralizedEigenpairs(theta[:k], vectors, complete=False)


def solve(
    gain: Tensor, cost: Tensor, *, top_k: int | None = None, solver: SolverName = "auto"
) -> GeneralizedEigenpairs:
    """Dispatch: ``dense`` for the full spectrum, ``krylov`` for the ``top_k`` leading pairs.

    ``auto`` picks the Krylov solver only when ``top_k`` is given and the dimension exceeds
    :data:`DENSE_MAX_DIM`; otherwise the dense float64 solver.
    """
    if solver not in Solver.values():
        raise SolverError(f"unknown solver '{solver}' (expected auto, dense or krylov)")
    use_krylov = solver == "krylov" or (
        solver == "auto" and top_k is not None and gain.shape[0] > DENSE_MAX_DIM
    )
    if use_krylov:
        if top_k is None:
            raise SolverError("the krylov solver computes the top-k pairs only: pass top_k")
        return solve_top_k(gain, cost, min(top_k, gain.shape[0]))
    return _truncate(solve_dense(gain, cost), top_k)


class GEVPCache:
    """Thread-safe LRU memo of :func:`solve` keyed by the content of ``(gain, cost)``.

    Keys hash the matrices' bytes (:func:`content_key`), so equal factors stored under different
    weight names — q/k/v projections share their input — are solved once. A request for fewer
    pairs than a cached solution holds is served by truncating it. Each new entry is passed to
    :meth:`added`.
    """

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[object, ...], GeneralizedEigenpairs] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def solve(
        self, gain: Tensor, cost: Tensor, *, top_k: int | None = None, solver: SolverName = "auto"
    ) -> GeneralizedEigenpairs:
        key = (content_key(gain), content_key(cost), solver, str(gain.device))
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and (
                cached.complete or (top_k is not None and top_k <= cached.values.numel())
            ):
                self._entries.move_to_end(key)
                self.hits += 1
                return _truncate(cached, top_k)
        pairs = solve(gain, cost, top_k=top_k, solver=solver)
        with self._lock:
            self.misses += 1
            self._entries[key] = pairs
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        self.added(pairs)
        return pairs

    def added(self, entry: GeneralizedEigenpairs) -> None:
        """Called with every new entry (a hook for measurements; does nothing here)."""


def _truncate(pairs: GeneralizedEigenpairs, top_k: int | None) -> GeneralizedEigenpairs:
    if top_k is None or top_k >= pairs.values.numel():
        return pairs
    return GeneralizedEigenpairs(pairs.values[:top_k], pairs.vectors[:, :top_k], complete=False)
