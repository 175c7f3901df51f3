"""The ``kfac`` kind: the Kronecker-factored Fisher ``F ≈ A ⊗ G`` (``docs/design.md`` §2.2).

* Container :class:`KFACFisher` — ``A = E[x xᵀ]`` (``d_in × d_in``, layer inputs) and
  ``G = E[δ δᵀ]`` (``d_out × d_out``, gradients w.r.t. the layer output). With column-major
  ``vec``, ``vec(P)ᵀ (A ⊗ G) vec(P) = tr(Pᵀ G P A)``. File entries ``NAME::A``, ``NAME::G``.
* Accumulator :class:`KFACStatistics` — ``A = (1/N) Σ_s x_s x_sᵀ`` (shared by layers reading
  the same input), ``G = (1/N) Σ_s δ_s δ_sᵀ``.
* Projection — :func:`~sst_merge_plugin.core.projector.project_kronecker` on ``(A, G)``; a
  low-rank patch is factorised first (:func:`~sst_merge_plugin.core.projector.low_rank_factors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from sst_merge_plugin.core.fisher import (
    FisherBase,
    check_patch,
    derived,
    relative_damping,
    validate_symmetric_psd,
)
from sst_merge_plugin.core.gevp import GEVPCache, SolverName
from sst_merge_plugin.core.kinds import FisherKind
from sst_merge_plugin.core.projector import (
    ProjectionDiagnostics,
    low_rank_factors,
    product,
    project_kronecker,
)
from sst_merge_plugin.core.selection import Selection
from sst_merge_plugin.core.statistics import LayerStatistics, SharedInput


@dataclass(frozen=True)
class KFACFisher(FisherBase):
    """Kronecker-factored Fisher ``F ≈ A ⊗ G``; ``A``: ``d_in × d_in``, ``G``: ``d_out × d_out``."""

    A: Tensor
    G: Tensor
    kind: ClassVar[str] = "kfac"
    required_entries: ClassVar[tuple[str, ...]] = ("A", "G")

    def __post_init__(self) -> None:
        object.__setattr__(self, "A", validate_symmetric_psd("K-FAC factor A (inputs)", self.A))
        object.__setattr__(
            self, "G", validate_symmetric_psd("K-FAC factor G (output grads)", self.G)
        )

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (int(self.G.shape[0]), int(self.A.shape[0]))

    def trace(self) -> float:
        """``tr(A ⊗ G) = tr A · tr G``."""
        return float(torch.diagonal(self.A).double().sum() * torch.diagonal(self.G).double().sum())

    def quadratic_form(self, patch: Tensor) -> float:
        """``vec(P)ᵀ (A ⊗ G) vec(P) = tr(Pᵀ G P A)``."""
        check_patch(patch, self.weight_shape)
        p = patch.double()
        return float(((self.G.double() @ p) * (p @ self.A.double())).sum())

    def damped(self, epsilon: float, dtype: torch.dtype | None = None) -> KFACFisher:
        """Each factor damped: ``(A + ε tr(A)/d_in I) ⊗ (G + ε tr(G)/d_out I)``, in ``dtype``."""
        return derived(
            self,
            A=relative_damping(self.A, epsilon, dtype=dtype),
            G=relative_damping(self.G, epsilon, dtype=dtype),
        )

    def entries(self) -> dict[str, Tensor]:
        return {"A": self.A, "G": self.G}

    @classmethod
    def from_entries(cls, tensors: Mapping[str, Tensor]) -> KFACFisher:
        return cls(tensors["A"], tensors["G"])

    @classmethod
    def weight_shape_of(cls, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
        return int(shapes["G"][0]), int(shapes["A"][0])

    @classmethod
    def entry_shape_problem(cls, shapes: Mapping[str, Sequence[int]]) -> str | None:
        a, g = tuple(shapes["A"]), tuple(shapes["G"])
        if a[0] == a[1] and g[0] == g[1]:
            return None
        return f"the entries do not fit together: A {a}, G {g} (expected square factors)"

    def identity_like(self) -> KFACFisher:
        """``I_{d_in} ⊗ I_{d_out}``."""
        eye = torch.eye
        return KFACFisher(
            eye(self.A.shape[0], dtype=self.A.dtype, device=self.A.device),
            eye(self.G.shape[0], dtype=self.G.dtype, device=self.G.device),
        )

    def project(
        self,
        patch: Tensor,
        benign: FisherBase,
        selection: Selection,
        trace_ratio: float,
        cache: GEVPCache,
        solver: SolverName,
    ) -> tuple[Tensor, ProjectionDiagnostics, None]:
        """``Q (M ⊙ C) Pᵀ`` (:func:`~sst_merge_plugin.core.projector.project_kronecker`)."""
        assert isinstance(benign, KFACFisher)
        left, right = low_rank_factors(patch)
        out_left, out_right, diagnostics = project_kronecker(
            left, right, self.A, self.G, benign.A, benign.G, selection, trace_ratio, cache, solver,
            kind="kfac",
        )  # fmt: skip
        return product(out_left, out_right, patch.dtype), diagnostics, None


class KFACStatistics(LayerStatistics):
    """``A = (1/N) Σ_s x_s x_sᵀ``, ``G = (1/N) Σ_s δ_s δ_sᵀ``."""

    kind = "kfac"
    sum_names = ("A", "G")

    def _forward(self, inputs: SharedInput) -> None:
        self.sums["A"].add(inputs.gram())

    def _backward(self, saved: object, grads: Tensor) -> None:
        self.sums["G"].add_gram(grads)

    def _fisher(self, averages: dict[str, Tensor]) -> KFACFisher:
        return KFACFisher(averages["A"], averages["G"])


KIND = FisherKind(
    "kfac", KFACFisher, KFACStatistics, summary="Kronecker factors A ⊗ G (d_in² + d_out²)"
)
