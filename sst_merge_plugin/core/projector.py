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

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import FisherValidationError
from sst_merge_plugin.core.fisher import Fisher, all_finite, check_compatible
from sst_merge_plugin.core.gevp import GEVPCache, SolverName
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
    """
    top_k = selection.leading_pairs()
    g_pairs = cache.solve(harm_g, benign_g, top_k=top_k, solver=solver)
    a_pairs = cache.solve(harm_a, benign_a, top_k=top_k, solver=solver)
    q, p = g_pairs.vectors, a_pairs.vectors

    def times_right(matrix: Tensor) -> Tensor:  # right @ matrix
        return matrix if right is None else right @ matrix

    def quadratic(a: Tensor, g: Tensor) -> float:  # tr(ΔWᵀ G ΔW A) with ΔW = left @ right
        inner = left.T @ g @ left
        outer = a if right is None else right @ a @ right.T
        return float((inner * outer).sum())

    coords = (q.T @ benign_g @ left) @ times_right(benign_a @ p)
    lam = torch.outer(g_pairs.values, a_pairs.values)
    normalised = lam / trace_ratio
    gain_total = quadratic(harm_a, harm_g)
    weights = selection_weights(normalised, coords, selection, gain_total / trace_ratio)
    kept = weights * coords
    kept_mask = weights > 0
    diag = ProjectionDiagnostics(
        kind=kind,
        gain_total=gain_total,
        cost_total=quadratic(benign_a, benign_g),
        gain_kept=float((lam * kept**2).sum()),
        cost_kept=float((kept**2).sum()),
        kept=float(weights.sum()),
        n_coordinates=int(lam.numel()),
        trace_ratio=trace_ratio,
        **lambda_summary(normalised, kept_mask),
    )
    return q @ kept, p.T, diag


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
