"""The SST projector ``P(ΔW)``: keep a patch only along high ``F_harm/F_benign`` directions.

``docs/design.md`` §1 derives it. :func:`project_patch` is the one entry point: it checks the
pair, damps both Fishers (:func:`~.fisher.relative_damping`; every gain/cost number refers to
the damped Fishers, for which the accounting is exact), computes ``c = tr(F_h)/tr(F_b)`` (λ is
normalised by it before selection) and calls the kind's own projection
(:meth:`~.fisher.FisherBase.project`, in :mod:`sst_merge_plugin.core.kinds`).

This module also holds the kernels the kinds share:

* :func:`project_kronecker` — for ``F_h = A_h ⊗ G_h``, ``F_b = A_b ⊗ G_b``: solve
  ``G_h q = γ G_b q`` (``QᵀG_bQ = I``) and ``A_h p = α A_b p`` (``PᵀA_bP = I``); the
  eigenvectors of the full problem are ``p_j ⊗ q_i`` with ``λ_ij = γ_i α_j``. Coordinates
  ``C = Qᵀ G_b ΔW A_b P`` (so ``ΔW = Q C Pᵀ``), gain ``Σ λ_ij C_ij²``, cost ``Σ C_ij²``; the
  result is ``Q (M ⊙ C) Pᵀ`` for the selection weights ``M`` (:mod:`.selection`). ``top_k``
  needs only the leading ``k`` pairs of each factor (the ``k`` largest products ``γ_i α_j``
  have ``i, j ≤ k``), which the Krylov solver finds for LLM-sized factors.
* :func:`low_rank_factors` — a low-rank patch (a LoRA delta) is factorised once, ``ΔW = L R``
  (exact up to the rounding of the patch's dtype), so gain/cost totals cost
  ``O((d_out² + d_in²)·r)`` instead of ``O(d_out·d_in·(d_out + d_in))``;
* :func:`product`, :func:`row_blocks` — the dense output formed block by block in the patch
  dtype, so no ``d_out × d_in`` float64 matrix is materialised for a narrower patch.

All arithmetic is float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import FisherValidationError
from sst_merge_plugin.core.fisher import Fisher, all_finite, check_compatible
from sst_merge_plugin.core.gevp import (
    GeneralizedEigenpairs,
    GEVPCache,
    ReducedPencil,
    SolverName,
    uses_krylov,
)
from sst_merge_plugin.core.selection import Selection, selection_weights

#: default relative damping ε of ``F + ε·(tr F/d)·I``
DEFAULT_DAMPING = 1e-2
#: patches of numerical rank up to this are factorised (``ΔW = L R``) before projection
LOW_RANK_MAX = 64
#: a factorisation is accepted up to this many machine epsilons of the patch dtype (relative
#: Frobenius residual): a rank-r product ``B @ A`` stored in float32 carries rounding of up to
#: ~4 eps (r = 64), in bfloat16/float16 under 1 eps (whose eps is large: 2 eps = 0.8 % for
#: bfloat16); float64 patches use 1e-9 instead
LOW_RANK_EPS = {torch.float32: 8, torch.bfloat16: 2, torch.float16: 2}
#: entries per row block when the patch is streamed (8 MiB of float64)
BLOCK_ENTRIES = 2**20
#: the side of the first leading block of eigenpairs a blockwise selection is tried on (its
#: eigenvectors cost ``O(d²·128)``, a few percent of the reduction's ``O(d³)`` at d ≈ 1500);
#: a side that is too small grows ``LEADING_GROWTH``-fold, to the whole factor once past half
#: of it (:func:`_leading_blocks`)
LEADING_BLOCK = 128
LEADING_GROWTH = 4


@dataclass(frozen=True)
class ProjectionDiagnostics:
    """What the projection kept, in the damped Fishers' metrics.

    ``gain_kept_fraction = gain(P ΔW)/gain(ΔW)`` with ``gain(φ) = vec(φ)ᵀ F_h vec(φ)``, likewise
    ``cost_kept_fraction`` with ``F_b``. λ statistics are normalised by ``trace_ratio =
    tr(F_h)/tr(F_b)`` and taken over the coordinates that were solved for (all of them unless
    the top-k solver ran). ``kept`` is ``Σ M`` (the number of kept coordinates for hard masks).
    ``subspace_residual`` (lora kind) is ``‖ΔW − U Uᵀ ΔW V Vᵀ‖_F / ‖ΔW‖_F``, the part of the
    patch outside the adapter subspace, which the projection drops.
    """

    kind: str
    gain_total: float
    cost_total: float
    gain_kept: float
    cost_kept: float
    kept: float
    n_coordinates: int
    trace_ratio: float
    lambda_max: float
    lambda_median: float
    lambda_min: float
    lambda_min_kept: float
    subspace_residual: float = 0.0

    @property
    def gain_kept_fraction(self) -> float:
        return self.gain_kept / self.gain_total if self.gain_total > 0 else 0.0

    @property
    def cost_kept_fraction(self) -> float:
        return self.cost_kept / self.cost_total if self.cost_total > 0 else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        """All fields plus the two kept fractions, JSON-serialisable."""
        out: dict[str, float | int | str] = asdict(self)
        out["gain_kept_fraction"] = self.gain_kept_fraction
        out["cost_kept_fraction"] = self.cost_kept_fraction
        return out


@dataclass(frozen=True)
class ProjectionResult:
    """The projected patch (dtype and device of the input) and its diagnostics.

    ``factors = (left, right)`` with ``patch = left @ right`` for the ``lora`` kind (rank ≤ r),
    ``None`` otherwise.
    """

    patch: Tensor
    diagnostics: ProjectionDiagnostics
    factors: tuple[Tensor, Tensor] | None = None


def project_patch(
    patch: Tensor,
    harm_fisher: Fisher,
    benign_fisher: Fisher,
    selection: Selection,
    *,
    damping: float = DEFAULT_DAMPING,
    solver: SolverName = "auto",
    cache: GEVPCache | None = None,
    name: str = "weight",
) -> ProjectionResult:
    """Project ``patch`` onto the selected generalized eigen-directions of ``(F_harm, F_benign)``.

    Checks the pair (:func:`~.fisher.check_compatible`) and the patch, damps both Fishers in
    float64 and hands over to the kind's own :meth:`~.fisher.FisherBase.project`. ``name``
    only labels error messages. Raises :class:`~.errors.SSTError` subclasses for mismatched
    shapes/kinds, non-finite patches and a singular benign Fisher (``damping=0``).
    """
    check_compatible(harm_fisher, benign_fisher, name)
    if tuple(patch.shape) != harm_fisher.weight_shape:
        raise FisherValidationError(
            f"{name}: patch shape {tuple(patch.shape)} does not match the Fisher's weight shape "
            f"{harm_fisher.weight_shape}"
        )
    if not all_finite(patch):
        raise FisherValidationError(f"{name}: the patch contains NaN/Inf")
    if damping < 0:
        raise FisherValidationError(f"damping must be >= 0, got {damping}")
    device = patch.device
    harm = harm_fisher.to(device=device).damped(damping, dtype=torch.float64)
    benign = benign_fisher.to(device=device).damped(damping, dtype=torch.float64)
    trace_ratio = harm.trace() / benign.trace()
    cache = cache if cache is not None else GEVPCache()
    out, diag, factors = harm.project(patch, benign, selection, trace_ratio, cache, solver)
    if factors is not None:
        factors = (factors[0].to(patch.dtype), factors[1].to(patch.dtype))
    return ProjectionResult(out, diag, factors)


def row_blocks(n_rows: int, n_cols: int) -> list[slice]:
    """Consecutive row ranges of about :data:`BLOCK_ENTRIES` entries each."""
    step = max(1, BLOCK_ENTRIES // max(n_cols, 1))
    return [slice(start, start + step) for start in range(0, n_rows, step)]


def product(left: Tensor, right: Tensor, dtype: torch.dtype) -> Tensor:
    """``left @ right`` computed in ``left``'s dtype (float64) and stored in ``dtype``.

    Row block by row block, so that no ``d_out × d_in`` float64 temporary exists when ``dtype``
    is narrower: each stored entry is the float64 product rounded once.
    """
    if dtype == left.dtype:
        return left @ right
    out = torch.empty(left.shape[0], right.shape[1], dtype=dtype, device=left.device)
    for rows in row_blocks(*out.shape):
        out[rows] = left[rows] @ right
    return out


def low_rank_factors(patch: Tensor, max_rank: int = LOW_RANK_MAX) -> tuple[Tensor, Tensor | None]:
    """``(L, R)`` in float64 with ``patch = L @ R`` up to the patch's own precision, when
    ``rank ≤ max_rank``.

    A seeded randomised range finder on ``P = float64(patch)``: ``Y = P Ω`` (``Ω`` is
    ``d_in × (max_rank + 8)``), ``L = orth(Y)``, ``R = Lᵀ P``; accepted when
    ``‖P − L R‖_F ≤ tol · ‖P‖_F`` with ``tol = 1e-9`` for a float64 patch and
    ``LOW_RANK_EPS[dtype] · eps`` (the machine epsilon of its dtype) for a narrower one, whose rounding
    keeps a low-rank product from being exactly low-rank. Otherwise returns ``(P, None)`` where
    ``None`` stands for the identity.
    """
    if patch.dtype == torch.float64:
        tol = 1e-9
    else:
        tol = LOW_RANK_EPS.get(patch.dtype, 2) * torch.finfo(patch.dtype).eps
    patch = patch.double()
    d_out, d_in = patch.shape
    width = max_rank + 8
    if width >= min(d_out, d_in):
        return patch, None
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(d_in, width, generator=generator, dtype=patch.dtype).to(patch.device)
    basis = torch.linalg.qr(patch @ probe).Q
    right = basis.T @ patch
    norm = float(torch.linalg.matrix_norm(patch))
    residual = float(torch.linalg.matrix_norm(torch.addmm(patch, basis, right, alpha=-1)))
    if residual <= tol * max(norm, 1e-300):
        return basis, right
    return patch, None


def project_kronecker(
    left: Tensor,
    right: Tensor | None,
    harm_a: Tensor,
    harm_g: Tensor,
    benign_a: Tensor,
    benign_g: Tensor,
    selection: Selection,
    trace_ratio: float,
    cache: GEVPCache,
    solver: SolverName,
    kind: str,
) -> tuple[Tensor, Tensor, ProjectionDiagnostics]:
    """Kronecker projection of the patch ``left @ right`` (``right=None`` is the identity).

    Returns ``(Q (M⊙C), Pᵀ)`` whose product is the projected patch, and the diagnostics.

    With the dense solver and a ``blockwise`` selection mode (``top_k``, ``energy``, ``ratio``)
    only the leading pairs the selection keeps are computed: every eigenvalue of both factors
    gives the whole λ grid, coordinates are computed on a leading ``r × c`` block of it
    (``r = c = k`` for ``top_k``, else :data:`LEADING_BLOCK` at first), the mode's rule runs on
    the whole grid with the coordinates outside the block unknown, and the block grows along
    each side where the rule keeps an unknown coordinate (:func:`_leading_blocks`). The kept
    coordinates, and so the result, are those of the full computation.
    """
    top_k = selection.leading_pairs()

    def times_right(matrix: Tensor) -> Tensor:  # right @ matrix
        return matrix if right is None else right @ matrix

    def quadratic(a: Tensor, g: Tensor) -> float:  # tr(ΔWᵀ G ΔW A) with ΔW = left @ right
        inner = left.T @ g @ left
        outer = a if right is None else right @ a @ right.T
        return float((inner * outer).sum())

    def coordinates(q: Tensor, p: Tensor) -> Tensor:  # C = Qᵀ G_b ΔW A_b P
        return (q.T @ benign_g @ left) @ times_right(benign_a @ p)

    gain_total = quadratic(harm_a, harm_g)
    dims = (harm_g.shape[0], harm_a.shape[0])
    if selection.spec.blockwise and not any(uses_krylov(solver, top_k, d) for d in dims):
        g_solution = cache.spectrum(harm_g, benign_g)
        a_solution = cache.spectrum(harm_a, benign_a)
        lam = torch.outer(g_solution.spectrum, a_solution.spectrum)
        g_pairs, a_pairs, coords, weights = _leading_blocks(
            g_solution, a_solution, coordinates, lam / trace_ratio, selection,
            gain_total / trace_ratio, start=top_k or LEADING_BLOCK,
        )  # fmt: skip
        block = (slice(0, coords.shape[0]), slice(0, coords.shape[1]))
        weights_grid, weights = weights, weights[block]
        lam_grid, lam = lam, lam[block]
    else:
        g_pairs = cache.solve(harm_g, benign_g, top_k=top_k, solver=solver)
        a_pairs = cache.solve(harm_a, benign_a, top_k=top_k, solver=solver)
        coords = coordinates(g_pairs.vectors, a_pairs.vectors)
        lam = lam_grid = torch.outer(g_pairs.values, a_pairs.values)
        weights = weights_grid = selection_weights(
            lam / trace_ratio, coords, selection, gain_total / trace_ratio
        )
    kept = weights * coords
    diag = ProjectionDiagnostics(
        kind=kind,
        gain_total=gain_total,
        cost_total=quadratic(benign_a, benign_g),
        gain_kept=float((lam * kept**2).sum()),
        cost_kept=float((kept**2).sum()),
        kept=float(weights.sum()),
        n_coordinates=int(lam_grid.numel()),
        trace_ratio=trace_ratio,
        **lambda_summary(lam_grid / trace_ratio, weights_grid > 0),
    )
    return g_pairs.vectors @ kept, a_pairs.vectors.T, diag


def _leading_blocks(
    g_solution: GeneralizedEigenpairs | ReducedPencil,
    a_solution: GeneralizedEigenpairs | ReducedPencil,
    coordinates: Callable[[Tensor, Tensor], Tensor],
    normalised: Tensor,
    selection: Selection,
    total_gain: float,
    start: int,
) -> tuple[GeneralizedEigenpairs, GeneralizedEigenpairs, Tensor, Tensor]:
    """A leading block whose coordinates determine the selection.

    ``normalised`` is the whole normalised λ grid (``d_out × d_in``). Starting from
    ``start × start`` (clipped to the grid), the leading ``r`` pairs of the ``G`` pencil and
    ``c`` of the ``A`` pencil give the block's coordinates; the mode's rule (``blockwise``, see
    :class:`~.selection.SelectMode`) runs on the grid with NaN outside the block; if it keeps a
    NaN coordinate in a row ``≥ r``, ``r`` grows :data:`LEADING_GROWTH`-fold (to ``d_out`` once
    that passes ``d_out/2``), ``c`` likewise for columns. Returns the pairs, the block's
    coordinates (``r × c``) and the weights on the whole grid (zero outside the block).
    """
    n_rows, n_cols = normalised.shape
    rows, cols = min(n_rows, start), min(n_cols, start)
    while True:
        g_pairs, a_pairs = g_solution.leading(rows), a_solution.leading(cols)
        block = coordinates(g_pairs.vectors, a_pairs.vectors)
        known = block
        if (rows, cols) != (n_rows, n_cols):
            known = torch.full((n_rows, n_cols), float("nan"), dtype=block.dtype)
            known[:rows, :cols] = block
        weights = selection_weights(normalised, known, selection, total_gain)
        needed = (weights > 0) & torch.isnan(known)
        if not bool(needed.any()):
            return g_pairs, a_pairs, block, weights
        if bool(needed[rows:].any()):
            rows = _grown(rows, n_rows)
        if bool(needed[:, cols:].any()):
            cols = _grown(cols, n_cols)


def _grown(size: int, limit: int) -> int:
    """``LEADING_GROWTH · size``, or ``limit`` once that passes ``limit / 2``."""
    size *= LEADING_GROWTH
    return limit if 2 * size > limit else size


def lambda_summary(normalised: Tensor, kept_mask: Tensor) -> dict[str, float]:
    """Largest, median and smallest normalised λ, and the smallest kept one (NaN if none)."""
    flat = normalised.reshape(-1)
    kept = flat[kept_mask.reshape(-1)]
    return {
        "lambda_max": float(flat.max()),
        "lambda_median": float(flat.median()),
        "lambda_min": float(flat.min()),
        "lambda_min_kept": float(kept.min()) if kept.numel() else float("nan"),
    }
