"""The ``lora`` kind: K-FAC factors restricted to an adapter's subspaces (``docs/design.md`` §2.3).

* Container :class:`LoRAFisher` — ``U`` (``d_out × r_out``) and ``V`` (``d_in × r_in``) with
  orthonormal columns spanning the adapter's column and row spaces, ``A_r = VᵀAV``,
  ``G_r = UᵀGU`` and the optional full-space traces ``tr A``, ``tr G`` (cheap to collect:
  ``E‖x‖²``, ``E‖δ‖²``) so that damping and λ normalisation match the ``kfac`` kind. File
  entries ``NAME::{U, V, A_r, G_r}`` and the 0-d ``NAME::{A_trace, G_trace}``.
* Accumulator :class:`LoRAStatistics` — from ``n × r`` projections only; never a ``d × d``
  matrix.
* Projection — the Kronecker projection on ``(A_r, G_r)`` of ``X = Uᵀ ΔW V``; the result
  ``U Q (M⊙C) Pᵀ Vᵀ`` has rank ≤ r and is returned as factors too. The part of the patch
  outside ``span U ⊗ span V`` is dropped and reported (``subspace_residual``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import FisherValidationError, SSTError
from sst_merge_plugin.core.fisher import (
    FisherBase,
    check_finite,
    check_patch,
    derived,
    relative_damping,
    validate_symmetric_psd,
)
from sst_merge_plugin.core.gevp import GEVPCache, SolverName
from sst_merge_plugin.core.kinds import FisherKind
from sst_merge_plugin.core.projector import (
    ProjectionDiagnostics,
    product,
    project_kronecker,
    row_blocks,
)
from sst_merge_plugin.core.selection import Selection
from sst_merge_plugin.core.statistics import ACCUMULATE_DTYPE, LayerStatistics, SharedInput

#: the 0-d file entries holding the full-space traces
TRACE_ENTRIES = ("A_trace", "G_trace")


@dataclass(frozen=True)
class LoRAFisher(FisherBase):
    """K-FAC factors restricted to an adapter subspace: ``A_r = VᵀAV``, ``G_r = UᵀGU``.

    ``U`` (``d_out × r_out``) and ``V`` (``d_in × r_in``) must have orthonormal columns. The
    Fisher acts on patches ``P = U X Vᵀ`` as ``(A_r ⊗ G_r)`` on ``vec X`` with ``X = UᵀPV``.
    ``A_trace``/``G_trace`` are the optional full-space traces ``tr A``, ``tr G``.
    """

    U: Tensor
    V: Tensor
    A_r: Tensor
    G_r: Tensor
    A_trace: float | None = None
    G_trace: float | None = None
    kind: ClassVar[str] = "lora"
    required_entries: ClassVar[tuple[str, ...]] = ("U", "V", "A_r", "G_r")
    optional_entries: ClassVar[tuple[str, ...]] = TRACE_ENTRIES
    _orthonormal_tol: ClassVar[float] = 1e-3

    def __post_init__(self) -> None:
        for name, basis in (("U (column space)", self.U), ("V (row space)", self.V)):
            if basis.ndim != 2 or basis.shape[1] > basis.shape[0]:
                raise FisherValidationError(
                    f"lora Fisher {name}: expected a tall (d, r) basis, got {tuple(basis.shape)}"
                )
            check_finite(f"lora Fisher {name}", basis)
            gram = basis.double().T @ basis.double()
            err = float((gram - torch.eye(gram.shape[0], dtype=torch.float64)).abs().max())
            if err > self._orthonormal_tol:
                raise FisherValidationError(
                    f"lora Fisher {name}: columns are not orthonormal (max |BᵀB - I| = {err:.3g})"
                )
        object.__setattr__(
            self, "A_r", validate_symmetric_psd("lora factor A_r", self.A_r, dim=self.V.shape[1])
        )
        object.__setattr__(
            self, "G_r", validate_symmetric_psd("lora factor G_r", self.G_r, dim=self.U.shape[1])
        )
        for name, value, restricted in (
            ("A_trace", self.A_trace, self.A_r),
            ("G_trace", self.G_trace, self.G_r),
        ):
            if value is None:
                continue
            if not (float(value) == float(value)) or float(value) in (float("inf"), float("-inf")):
                raise FisherValidationError(f"lora Fisher {name}: not finite ({value})")
            if float(value) < float(torch.diagonal(restricted).sum()) * (1 - 1e-4):
                raise FisherValidationError(
                    f"lora Fisher {name} = {float(value):.4g} is smaller than the trace of its "
                    f"restricted factor ({float(torch.diagonal(restricted).sum()):.4g})"
                )

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (int(self.U.shape[0]), int(self.V.shape[0]))

    @property
    def rank(self) -> tuple[int, int]:
        """``(r_out, r_in)``."""
        return (int(self.U.shape[1]), int(self.V.shape[1]))

    def full_traces(self) -> tuple[float, float]:
        """``(tr A, tr G)`` in the full space, falling back to the restricted traces."""
        a = (
            float(torch.diagonal(self.A_r).double().sum())
            if self.A_trace is None
            else float(self.A_trace)
        )
        g = (
            float(torch.diagonal(self.G_r).double().sum())
            if self.G_trace is None
            else float(self.G_trace)
        )
        return a, g

    def trace(self) -> float:
        """``tr A · tr G`` (full-space when the traces were collected)."""
        a, g = self.full_traces()
        return a * g

    def coordinates(self, patch: Tensor) -> Tensor:
        """``X = Uᵀ P V`` (``r_out × r_in``)."""
        check_patch(patch, self.weight_shape)
        return self.U.T.to(patch.dtype) @ patch @ self.V.to(patch.dtype)

    def quadratic_form(self, patch: Tensor) -> float:
        """``tr(Xᵀ G_r X A_r)`` with ``X = UᵀPV`` — exact for patches in ``span U ⊗ span V``."""
        x = self.coordinates(patch.double())
        return float(((self.G_r.double() @ x) * (x @ self.A_r.double())).sum())

    def damped(self, epsilon: float, dtype: torch.dtype | None = None) -> LoRAFisher:
        """``Uᵀ(G + ε tr(G)/d_out I)U`` and likewise for ``A`` (restricted traces if unknown);
        every tensor cast to ``dtype`` when given."""
        d_out, d_in = self.weight_shape
        a_r = relative_damping(
            self.A_r, epsilon, self.A_trace, None if self.A_trace is None else d_in, dtype
        )
        g_r = relative_damping(
            self.G_r, epsilon, self.G_trace, None if self.G_trace is None else d_out, dtype
        )
        return derived(self, U=self.U.to(dtype), V=self.V.to(dtype), A_r=a_r, G_r=g_r)

    def entries(self) -> dict[str, Tensor]:
        entries = {"U": self.U, "V": self.V, "A_r": self.A_r, "G_r": self.G_r}
        for name in TRACE_ENTRIES:
            value = getattr(self, name)
            if value is not None:
                entries[name] = torch.tensor(float(value), dtype=torch.float64)
        return entries

    @classmethod
    def from_entries(cls, tensors: Mapping[str, Tensor]) -> LoRAFisher:
        traces = {name: float(tensors[name]) for name in TRACE_ENTRIES if name in tensors}
        return cls(tensors["U"], tensors["V"], tensors["A_r"], tensors["G_r"], **traces)

    @classmethod
    def weight_shape_of(cls, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
        return int(shapes["U"][0]), int(shapes["V"][0])

    def subspace_residual(self, patch: Tensor) -> float:
        """``‖ΔW − U UᵀΔW V Vᵀ‖_F / ‖ΔW‖_F`` (:func:`subspace_coordinates`)."""
        check_patch(patch, self.weight_shape)
        device = patch.device
        return subspace_coordinates(patch, self.U.double().to(device), self.V.double().to(device))[
            1
        ]

    @classmethod
    def entry_shape_problem(cls, shapes: Mapping[str, Sequence[int]]) -> str | None:
        u, v, a_r, g_r = (tuple(shapes[entry]) for entry in cls.required_entries)
        r_out, r_in = u[1], v[1]
        if r_out <= u[0] and r_in <= v[0] and a_r == (r_in, r_in) and g_r == (r_out, r_out):
            return None
        return (
            f"the entries do not fit together: U {u}, V {v}, A_r {a_r}, G_r {g_r} (expected "
            "U d_out×r_out, V d_in×r_in with r ≤ d, A_r r_in×r_in, G_r r_out×r_out)"
        )

    def identity_like(self) -> LoRAFisher:
        """``UᵀIU = I_r``, ``VᵀIV = I_r`` with full-space traces ``d_in`` and ``d_out``."""
        d_out, d_in = self.weight_shape
        r_out, r_in = self.rank
        dtype, device = self.A_r.dtype, self.A_r.device
        return LoRAFisher(
            self.U,
            self.V,
            torch.eye(r_in, dtype=dtype, device=device),
            torch.eye(r_out, dtype=dtype, device=device),
            A_trace=float(d_in),
            G_trace=float(d_out),
        )

    def check_same_space(self, other: FisherBase, name: str) -> None:
        """Same ranks and the same ``span U``, ``span V`` (all principal angles 0)."""
        assert isinstance(other, LoRAFisher)
        if self.rank != other.rank:
            raise FisherValidationError(
                f"{name}: lora Fishers have different ranks {self.rank} vs {other.rank}"
            )
        for attr in ("U", "V"):
            a, b = getattr(self, attr).double(), getattr(other, attr).double()
            # same subspace <=> all principal angles are 0 <=> ‖aᵀb‖_F² = r (orthonormal bases)
            if a.shape[1] - float((a.T @ b).pow(2).sum()) > 1e-3 * a.shape[1]:
                raise FisherValidationError(
                    f"{name}: harm and benign lora Fishers were collected on different adapter "
                    f"subspaces ({attr} differs); collect both with the same --restrict-to adapter"
                )

    def project(
        self,
        patch: Tensor,
        benign: FisherBase,
        selection: Selection,
        trace_ratio: float,
        cache: GEVPCache,
        solver: SolverName,
    ) -> tuple[Tensor, ProjectionDiagnostics, tuple[Tensor, Tensor]]:
        """``U Q (M⊙C) Pᵀ Vᵀ`` with ``X = Uᵀ ΔW V``; factors ``(U Q (M⊙C), Pᵀ Vᵀ)``."""
        assert isinstance(benign, LoRAFisher)
        u, v = self.U, self.V
        coords, residual = subspace_coordinates(patch, u, v)
        out_left, out_right, diagnostics = project_kronecker(
            coords, None, self.A_r, self.G_r, benign.A_r, benign.G_r, selection, trace_ratio,
            cache, solver, kind="lora",
        )  # fmt: skip
        left, right = u @ out_left, out_right @ v.T
        diagnostics = replace(diagnostics, subspace_residual=residual)
        return product(left, right, patch.dtype), diagnostics, (left, right)


def subspace_coordinates(patch: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, float]:
    """``X = Uᵀ ΔW V`` and ``‖ΔW − U X Vᵀ‖_F / ‖ΔW‖_F`` (0 for a zero patch), in float64.

    Two passes over row blocks of ``ΔW`` (each cast to float64 on its own):
    ``Uᵀ ΔW = Σ_b U_bᵀ ΔW_b`` and ``‖ΔW‖²``, then ``Σ_b ‖ΔW_b − (U X)_b Vᵀ‖²``. Cost
    ``O(d_out·d_in·r)`` with ``O(r·(d_out + d_in))`` extra memory.
    """
    blocks = row_blocks(*patch.shape)
    left_side = torch.zeros(u.shape[1], patch.shape[1], dtype=torch.float64, device=patch.device)
    norms = []
    for rows in blocks:
        block = patch[rows].double()
        left_side.addmm_(u[rows].T, block)
        norms.append(torch.linalg.matrix_norm(block))
    coords = left_side @ v
    spanned = u @ coords
    residuals = [
        torch.linalg.matrix_norm(torch.addmm(patch[rows].double(), spanned[rows], v.T, alpha=-1))
        for rows in blocks
    ]
    norm = float(torch.linalg.vector_norm(torch.stack(norms)))
    residual = float(torch.linalg.vector_norm(torch.stack(residuals)))
    return coords, residual / norm if norm > 0 else 0.0


class LoRAStatistics(LayerStatistics):
    """``A_r = VᵀAV``, ``G_r = UᵀGU`` and the full traces, from ``n × r`` projections only."""

    kind = "lora"
    sum_names = ("A_r", "G_r", "A_trace", "G_trace")

    def __init__(self, name: str, d_out: int, d_in: int, U: Tensor, V: Tensor) -> None:
        super().__init__(name, d_out, d_in)
        if U.shape[0] != d_out or V.shape[0] != d_in:
            raise SSTError(
                f"{name}: adapter subspace U {tuple(U.shape)}, V {tuple(V.shape)} does not fit "
                f"the layer's weight ({d_out}, {d_in})"
            )
        self.U, self.V = U.to(ACCUMULATE_DTYPE), V.to(ACCUMULATE_DTYPE)
        self._bases: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def _basis(self, which: int, like: Tensor) -> Tensor:
        key = (like.dtype, like.device)
        if key not in self._bases:
            self._bases[key] = (self.U.to(like), self.V.to(like))
        return self._bases[key][which]

    def _forward(self, inputs: SharedInput) -> None:
        projected = inputs.rows @ self._basis(1, inputs.rows)
        self.sums["A_r"].add_gram(projected)
        self.sums["A_trace"].add(inputs.squared_norm())

    def _backward(self, saved: object, grads: Tensor) -> None:
        projected = grads @ self._basis(0, grads)
        self.sums["G_r"].add_gram(projected)
        self.sums["G_trace"].add(torch.linalg.vector_norm(grads).square())

    def _fisher(self, averages: dict[str, Tensor]) -> LoRAFisher:
        return LoRAFisher(
            self.U,
            self.V,
            averages["A_r"],
            averages["G_r"],
            A_trace=float(averages["A_trace"]),
            G_trace=float(averages["G_trace"]),
        )


KIND = FisherKind(
    "lora",
    LoRAFisher,
    LoRAStatistics,
    restricted=True,
    summary="K-FAC factors inside an adapter's subspace (r² + d·r)",
)
