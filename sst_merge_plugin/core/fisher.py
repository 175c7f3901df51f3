"""Fisher containers for one Linear weight ``W`` of shape ``(d_out, d_in)``.

Three structures (DESIGN 1.1), all token-averaged so harm and benign statistics are comparable:

* :class:`DiagFisher` — ``F = diag(E[g ⊙ g])`` stored with the shape of ``W``.
* :class:`KFACFisher` — ``F ≈ A ⊗ G`` with ``A = E[x xᵀ]`` (``d_in × d_in``, layer inputs) and
  ``G = E[δ δᵀ]`` (``d_out × d_out``, gradients w.r.t. the layer output). With column-major
  ``vec``, ``vec(P)ᵀ (A ⊗ G) vec(P) = tr(Pᵀ G P A)``.
* :class:`LoRAFisher` — the K-FAC factors restricted to an adapter's column space ``U``
  (``d_out × r_out``) and row space ``V`` (``d_in × r_in``), both with orthonormal columns:
  ``A_r = Vᵀ A V``, ``G_r = Uᵀ G U``. Optionally the full-space traces ``tr A`` and ``tr G`` (cheap
  to collect: ``E‖x‖²``, ``E‖δ‖²``) so that damping and λ normalisation match the ``kfac`` kind.

Containers validate on construction (shapes, finite values, symmetry, PSD up to round-off) and
raise :class:`~sst_merge_plugin.core.errors.FisherValidationError` naming the offending factor.
Symmetric factors are stored symmetrised, ``(F + Fᵀ)/2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import FisherValidationError

FisherKind = Literal["diag", "kfac", "lora"]

#: relative asymmetry tolerated in a factor: ``max|F − Fᵀ| ≤ SYMMETRY_TOL · max|F|``
SYMMETRY_TOL = 1e-4
#: relative negative curvature tolerated: ``λ_min(F) ≥ −PSD_TOL · tr F``
PSD_TOL = 1e-5
#: factors up to this size get the exact (Cholesky) PSD check; larger ones get the cheap
#: checks only (non-negative diagonal, |F_ij| ≤ sqrt(F_ii F_jj)) — the solver's own Cholesky of
#: the damped benign factor catches the rest.
PSD_CHECK_MAX_DIM = 4096


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry of ``tensor`` is finite.

    A finite sum proves it (any NaN/Inf entry makes the sum NaN/Inf) in one allocation-free
    pass; only a non-finite sum — a bad entry, or overflow of the summation — needs the
    elementwise check.
    """
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _check_finite(name: str, tensor: Tensor) -> None:
    if not torch.is_floating_point(tensor):
        raise FisherValidationError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
    if not all_finite(tensor):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise FisherValidationError(f"{name}: contains {n_bad} NaN/Inf value(s)")


def validate_symmetric_psd(name: str, factor: Tensor, dim: int | None = None) -> Tensor:
    """Check that ``factor`` is a finite, symmetric, positive semi-definite square matrix.

    Returns the symmetrised factor ``(F + Fᵀ)/2``. PSD is checked up to round-off:
    ``F + PSD_TOL·tr(F)·I`` must admit a Cholesky factorisation (exact check, done for
    ``d ≤ PSD_CHECK_MAX_DIM``); larger factors get the necessary conditions ``F_ii ≥ 0``.
    """
    if factor.ndim != 2 or factor.shape[0] != factor.shape[1]:
        raise FisherValidationError(
            f"{name}: expected a square matrix, got shape {tuple(factor.shape)}"
        )
    if dim is not None and factor.shape[0] != dim:
        raise FisherValidationError(
            f"{name}: expected shape ({dim}, {dim}) to match the weight, got {tuple(factor.shape)}"
        )
    _check_finite(name, factor)
    scale = float(factor.abs().max()) if factor.numel() else 0.0
    asym = float((factor - factor.T).abs().max()) if factor.numel() else 0.0
    if asym > SYMMETRY_TOL * max(scale, 1e-30):
        raise FisherValidationError(
            f"{name}: not symmetric (max |F - Fᵀ| = {asym:.3g}, max |F| = {scale:.3g})"
        )
    sym = 0.5 * (factor + factor.T)
    diagonal = torch.diagonal(sym)
    trace = float(diagonal.sum())
    if float(diagonal.min()) < -PSD_TOL * max(abs(trace), 1e-30):
        raise FisherValidationError(
            f"{name}: has a negative diagonal entry ({float(diagonal.min()):.3g})"
        )
    if trace <= 0.0:
        raise FisherValidationError(
            f"{name}: is zero (trace {trace:.3g}); no statistics were collected"
        )
    if sym.shape[0] <= PSD_CHECK_MAX_DIM:
        shifted = sym.double() + PSD_TOL * trace * torch.eye(sym.shape[0], dtype=torch.float64)
        _, info = torch.linalg.cholesky_ex(shifted)
        if int(info) != 0:
            min_eig = float(torch.linalg.eigvalsh(sym.double()).min())
            raise FisherValidationError(
                f"{name}: not positive semi-definite (smallest eigenvalue {min_eig:.3g}, "
                f"trace {trace:.3g})"
            )
    return sym


def relative_damping(
    factor: Tensor,
    epsilon: float,
    trace: float | None = None,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Relative (trace-scaled) Tikhonov damping: ``F + ε · (tr F / d) · I``.

    ``trace`` and ``dim`` default to those of ``factor``; pass the full-space values to damp a
    restricted factor ``UᵀFU`` exactly like ``Uᵀ(F + ε tr(F)/d · I)U``. With ``dtype`` the
    factor is cast first and the damping added to the cast copy (one new matrix, not two).
    """
    if epsilon < 0:
        raise FisherValidationError(f"damping must be >= 0, got {epsilon}")
    if epsilon == 0:
        return factor if dtype is None else factor.to(dtype)
    damped = factor.to(dtype=dtype, copy=True)
    d = damped.shape[0] if dim is None else dim
    tr = float(torch.diagonal(damped).sum()) if trace is None else float(trace)
    damped.diagonal().add_(epsilon * tr / d)
    return damped


def _derived(instance, **changes):
    """A copy of a validated container with ``changes`` applied, skipping re-validation.

    Used by ``to()`` and ``damped()``, whose results are valid whenever the source is
    (a dtype/device move, or adding a non-negative multiple of ``I``), so LLM-sized factors are
    not re-checked (an ``O(d³)`` Cholesky) at every step.
    """
    new = object.__new__(type(instance))
    for name in instance.__dataclass_fields__:
        object.__setattr__(new, name, changes.get(name, getattr(instance, name)))
    return new


class _FisherBase:
    """Shared behaviour of the containers: moving every tensor field at once."""

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """The same Fisher with every tensor moved to ``device`` / cast to ``dtype``."""
        moved = {
            name: value.to(device=device, dtype=dtype)
            for name, value in vars(self).items()
            if isinstance(value, Tensor)
        }
        return _derived(self, **moved)


@dataclass(frozen=True)
class DiagFisher(_FisherBase):
    """Diagonal Fisher ``F = diag(E[g ⊙ g])``, stored with the weight's shape ``(d_out, d_in)``."""

    diag: Tensor
    kind: ClassVar[FisherKind] = "diag"

    def __post_init__(self) -> None:
        if self.diag.ndim != 2:
            raise FisherValidationError(
                f"diag Fisher: expected the weight's 2-D shape, got {tuple(self.diag.shape)}"
            )
        _check_finite("diag Fisher", self.diag)
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
        _check_patch(patch, self.weight_shape)
        return float((self.diag.double() * patch.double() ** 2).sum())

    def damped(self, epsilon: float, dtype: torch.dtype | None = None) -> DiagFisher:
        """``F + ε · mean(F) · I``, cast to ``dtype`` first when given."""
        if epsilon < 0:
            raise FisherValidationError(f"damping must be >= 0, got {epsilon}")
        diag = self.diag.to(dtype=dtype, copy=True)
        return _derived(self, diag=diag.add_(epsilon * diag.mean()))


@dataclass(frozen=True)
class KFACFisher(_FisherBase):
    """Kronecker-factored Fisher ``F ≈ A ⊗ G``; ``A``: ``d_in × d_in``, ``G``: ``d_out × d_out``."""

    A: Tensor
    G: Tensor
    kind: ClassVar[FisherKind] = "kfac"

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
        _check_patch(patch, self.weight_shape)
        p = patch.double()
        return float(((self.G.double() @ p) * (p @ self.A.double())).sum())

    def damped(self, epsilon: float, dtype: torch.dtype | None = None) -> KFACFisher:
        """Each factor damped: ``(A + ε tr(A)/d_in I) ⊗ (G + ε tr(G)/d_out I)``, in ``dtype``."""
        return _derived(
            self,
            A=relative_damping(self.A, epsilon, dtype=dtype),
            G=relative_damping(self.G, epsilon, dtype=dtype),
        )


@dataclass(frozen=True)
class LoRAFisher(_FisherBase):
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
    kind: ClassVar[FisherKind] = "lora"
    _orthonormal_tol: ClassVar[float] = 1e-3

    def __post_init__(self) -> None:
        for name, basis in (("U (column space)", self.U), ("V (row space)", self.V)):
            if basis.ndim != 2 or basis.shape[1] > basis.shape[0]:
                raise FisherValidationError(
                    f"lora Fisher {name}: expected a tall (d, r) basis, got {tuple(basis.shape)}"
                )
            _check_finite(f"lora Fisher {name}", basis)
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
        _check_patch(patch, self.weight_shape)
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
        return _derived(self, U=self.U.to(dtype), V=self.V.to(dtype), A_r=a_r, G_r=g_r)


Fisher = DiagFisher | KFACFisher | LoRAFisher


def _check_patch(patch: Tensor, shape: tuple[int, int]) -> None:
    if tuple(patch.shape) != shape:
        raise FisherValidationError(
            f"patch shape {tuple(patch.shape)} does not match the Fisher's weight shape {shape}"
        )


def check_compatible(harm_fisher: Fisher, benign_fisher: Fisher, name: str = "weight") -> None:
    """Raise unless the two Fishers have the same kind, weight shape and (for lora) subspace."""
    if harm_fisher.kind != benign_fisher.kind:
        raise FisherValidationError(
            f"{name}: harm Fisher is '{harm_fisher.kind}' but benign Fisher is '{benign_fisher.kind}'"
        )
    if harm_fisher.weight_shape != benign_fisher.weight_shape:
        raise FisherValidationError(
            f"{name}: harm Fisher is for shape {harm_fisher.weight_shape}, benign Fisher for "
            f"{benign_fisher.weight_shape}"
        )
    if isinstance(harm_fisher, LoRAFisher) and isinstance(benign_fisher, LoRAFisher):
        if harm_fisher.rank != benign_fisher.rank:
            raise FisherValidationError(
                f"{name}: lora Fishers have different ranks {harm_fisher.rank} vs {benign_fisher.rank}"
            )
        for attr in ("U", "V"):
            a, b = getattr(harm_fisher, attr).double(), getattr(benign_fisher, attr).double()
            # same subspace <=> all principal angles are 0 <=> ‖aᵀb‖_F² = r (orthonormal bases)
            if a.shape[1] - float((a.T @ b).pow(2).sum()) > 1e-3 * a.shape[1]:
                raise FisherValidationError(
                    f"{name}: harm and benign lora Fishers were collected on different adapter "
                    f"subspaces ({attr} differs); collect both with the same --restrict-to adapter"
                )
