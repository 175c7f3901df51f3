"""The ``diag`` kind: the diagonal Fisher ``F = diag(E[g ⊙ g])`` (``docs/design.md`` §2.1).

* Container :class:`DiagFisher` — stored with the weight's shape ``(d_out, d_in)``; file entry
  ``NAME::diag``.
* Accumulator :class:`DiagStatistics` — ``diag = (1/N) Σ_s (δ_s ⊙ δ_s)(x_s ⊙ x_s)ᵀ`` (one
  ``n·d_out·d_in`` product per batch, :mod:`sst_merge_plugin.core.statistics`).
* Projection — the generalized eigenproblem is elementwise: ``λ_p = F_h[p] / F_b[p]``,
  coordinates ``C_p = √F_b[p] · ΔW[p]``, result ``M ⊙ ΔW``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import FisherValidationError, SolverError
from sst_merge_plugin.core.fisher import FisherBase, check_finite, check_patch, derived
from sst_merge_plugin.core.gevp import GEVPCache, SolverName
from sst_merge_plugin.core.kinds import FisherKind
from sst_merge_plugin.core.projector import ProjectionDiagnostics, lambda_summary
from sst_merge_plugin.core.selection import Selection, selection_weights
from sst_merge_plugin.core.statistics import LayerStatistics, SharedInput


@dataclass(frozen=True)
class DiagFisher(FisherBase):
    """Diagonal Fisher ``F = diag(E[g ⊙ g])``, stored with the weight's shape ``(d_out, d_in)``."""

    diag: Tensor
    kind: ClassVar[str] = "diag"
    required_entries: ClassVar[tuple[str, ...]] = ("diag",)

    def __post_init__(self) -> None:
        if self.diag.ndim != 2:
            raise FisherValidationError(
                f"diag Fisher: expected the weight's 2-D shape, got {tuple(self.diag.shape)}"
            )
        check_finite("diag Fisher", self.diag)
        if float(self.diag.min()) < 0:
            raise FisherValidationError(
                f"diag Fisher: has negative entries (min {float(self.diag.min()):.3g})"
            )

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (int(self.diag.shape[0]), int(self.diag.shape[1]))

    def trace(self) -> float:
        """``tr F = Σ_p F[p]``."""
        return float(self.diag.double().sum())

    def quadratic_form(self, patch: Tensor) -> float:
        """``vec(P)ᵀ F vec(P) = Σ_p F[p] P[p]²``."""
        check_patch(patch, self.weight_shape)
        return float((self.diag.double() * patch.double() ** 2).sum())

    def damped(self, epsilon: float, dtype: torch.dtype | None = None) -> DiagFisher:
        """``F + ε · mean(F) · I``, cast to ``dtype`` first when given."""
        if epsilon < 0:
            raise FisherValidationError(f"damping must be >= 0, got {epsilon}")
        diag = self.diag.to(dtype=dtype, copy=True)
        return derived(self, diag=diag.add_(epsilon * diag.mean()))

    def entries(self) -> dict[str, Tensor]:
        return {"diag": self.diag}

    @classmethod
    def from_entries(cls, tensors: Mapping[str, Tensor]) -> DiagFisher:
        return cls(tensors["diag"])

    @classmethod
    def weight_shape_of(cls, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
        rows, cols = shapes["diag"]
        return int(rows), int(cols)

    def identity_like(self) -> DiagFisher:
        """All ones."""
        return DiagFisher(torch.ones_like(self.diag))

    def project(
        self,
        patch: Tensor,
        benign: FisherBase,
        selection: Selection,
        trace_ratio: float,
        cache: GEVPCache,
        solver: SolverName,
    ) -> tuple[Tensor, ProjectionDiagnostics, None]:
        """Elementwise GEVP: ``λ_p = F_h[p]/F_b[p]``, coordinates ``√F_b ⊙ ΔW``, result
        ``M ⊙ ΔW`` (computed in float64, returned in the patch's dtype)."""
        assert isinstance(benign, DiagFisher)
        if float(benign.diag.min()) <= 0:
            raise SolverError(
                "the benign diagonal Fisher has zero entries; use damping > 0 so that "
                "F_benign + ε·mean(F_benign) is positive"
            )
        dtype, patch = patch.dtype, patch.double()
        h, b = self.diag, benign.diag
        normalised = torch.div(h, b).div_(trace_ratio)
        coords = b.sqrt().mul_(patch)
        squares = patch.square()  # ΔW², then F_h ⊙ ΔW² in place (fewer d_out × d_in temporaries)
        cost_total = float((b * squares).sum())
        gain_total = float(squares.mul_(h).sum())
        weights = selection_weights(normalised, coords, selection, gain_total / trace_ratio)
        out = weights * patch
        squares = out.square()
        cost_kept = float((b * squares).sum())
        diagnostics = ProjectionDiagnostics(
            kind="diag",
            gain_total=gain_total,
            cost_total=cost_total,
            gain_kept=float(squares.mul_(h).sum()),
            cost_kept=cost_kept,
            kept=float(weights.sum()),
            n_coordinates=int(normalised.numel()),
            trace_ratio=trace_ratio,
            **lambda_summary(normalised, weights > 0),
        )
        return out.to(dtype), diagnostics, None


class DiagStatistics(LayerStatistics):
    """``diag = (1/N) Σ_s (δ_s ⊙ δ_s)(x_s ⊙ x_s)ᵀ``."""

    kind = "diag"
    sum_names = ("diag",)

    def _forward(self, inputs: SharedInput) -> Tensor:
        return inputs.squared()

    def _backward(self, saved: object, grads: Tensor) -> None:
        assert isinstance(saved, Tensor)
        self.sums["diag"].add_product(grads.square(), saved)

    def _fisher(self, averages: dict[str, Tensor]) -> DiagFisher:
        return DiagFisher(averages["diag"])


KIND = FisherKind("diag", DiagFisher, DiagStatistics, summary="diagonal E[g⊙g], the weight's shape")
