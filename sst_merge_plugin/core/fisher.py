"""What every Fisher container of one Linear weight ``W`` (``d_out × d_in``) provides.

A container holds the statistics of one *kind* (``docs/design.md`` §2; the kinds themselves
live in :mod:`sst_merge_plugin.core.kinds`): the diagonal ``E[g ⊙ g]``, the Kronecker factors
``A ⊗ G``, or those factors restricted to an adapter subspace. :class:`FisherBase` is the
interface the rest of the plugin programs against, so no code outside a kind's own module
dispatches on the kind:

* the quadratic form ``vec(P)ᵀ F vec(P)`` and ``tr F`` (gain/cost accounting);
* :meth:`~FisherBase.damped` — relative Tikhonov damping ``F + ε·(tr F/d)·I``
  (:func:`relative_damping`), applied to each stored factor;
* :meth:`~FisherBase.entries` / :meth:`~FisherBase.from_entries` /
  :meth:`~FisherBase.weight_shape_of` / :meth:`~FisherBase.entry_shape_problem` — the tensors a
  Fisher file stores per weight (``NAME::<entry>``), and the weight shape and the entries'
  consistency read from the header alone;
* :meth:`~FisherBase.identity_like` — the Euclidean metric ``I`` in the same structure (the
  single-Fisher baseline);
* :meth:`~FisherBase.project` — the SST projection of a patch with this Fisher as ``F_harm``
  and another of the same kind as ``F_benign`` (called by
  :func:`~sst_merge_plugin.core.projector.project_patch`, which validates and damps first).

Containers validate on construction (shapes, finite values, symmetry, PSD up to round-off) and
raise :class:`~sst_merge_plugin.core.errors.FisherValidationError` naming the offending factor;
symmetric factors are stored symmetrised, ``(F + Fᵀ)/2``.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import FisherValidationError

if TYPE_CHECKING:
    from sst_merge_plugin.core.gevp import GEVPCache, SolverName
    from sst_merge_plugin.core.projector import ProjectionDiagnostics
    from sst_merge_plugin.core.selection import Selection

#: relative asymmetry tolerated in a factor: ``max|F − Fᵀ| ≤ SYMMETRY_TOL · max|F|``
SYMMETRY_TOL = 1e-4
#: relative negative curvature tolerated: ``λ_min(F) ≥ −PSD_TOL · tr F``
PSD_TOL = 1e-5
#: factors up to this size get the exact (Cholesky) PSD check; larger ones get the cheap
#: checks only (non-negative diagonal, |F_ij| ≤ sqrt(F_ii F_jj)) — the solver's own Cholesky of
#: the damped benign factor catches the rest.
PSD_CHECK_MAX_DIM = 4096
#: how many validated factors :func:`validate_symmetric_psd` remembers by content
VALIDATED_MEMO = 8

_validated: OrderedDict[tuple[object, ...], Tensor] = OrderedDict()
_validated_lock = threading.Lock()

F = TypeVar("F", bound="FisherBase")


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry of ``tensor`` is finite.

    A finite sum proves it (any NaN/Inf entry makes the sum NaN/Inf) in one allocation-free
    pass; only a non-finite sum — a bad entry, or overflow of the summation — needs the
    elementwise check.
    """
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def content_key(tensor: Tensor) -> tuple[object, ...]:
    """A hashable key for a tensor's content: shape, dtype and a SHA-256 digest of its bytes
    (SHA-256 rather than BLAKE2b: with the CPUs' SHA extensions it hashes about twice as fast)."""
    data = tensor.detach().contiguous().cpu()
    digest = hashlib.sha256(data.view(torch.uint8).numpy()).hexdigest()
    return (tuple(data.shape), str(data.dtype), digest)


def check_finite(name: str, tensor: Tensor) -> None:
    """Raise :class:`FisherValidationError` unless ``tensor`` is floating-point and finite."""
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
    The last :data:`VALIDATED_MEMO` results are remembered by content (:func:`content_key`):
    a Fisher file stores a shared factor once per weight (q/k/v's input factor ``A``), and an
    identical factor is checked once (every call still returns a tensor of its own).
    """
    if factor.ndim != 2 or factor.shape[0] != factor.shape[1]:
        raise FisherValidationError(
            f"{name}: expected a square matrix, got shape {tuple(factor.shape)}"
        )
    if dim is not None and factor.shape[0] != dim:
        raise FisherValidationError(
            f"{name}: expected shape ({dim}, {dim}) to match the weight, got {tuple(factor.shape)}"
        )
    check_finite(name, factor)
    key = (content_key(factor), str(factor.device))
    with _validated_lock:
        known = _validated.get(key)
        if known is not None:
            _validated.move_to_end(key)
            return known.clone()
    sym = _checked_symmetric_psd(name, factor)
    with _validated_lock:
        _validated[key] = sym.clone()
        while len(_validated) > VALIDATED_MEMO:
            _validated.popitem(last=False)
    return sym


def _checked_symmetric_psd(name: str, factor: Tensor) -> Tensor:
    """The symmetry and PSD checks of :func:`validate_symmetric_psd` on a finite square
    ``factor``; returns ``(F + Fᵀ)/2``."""
    inf = float("inf")  # the ∞-norm of a matrix's entries: max |F_ij|
    scale = float(torch.linalg.vector_norm(factor, inf)) if factor.numel() else 0.0
    asym = float(torch.linalg.vector_norm(factor - factor.T, inf)) if factor.numel() else 0.0
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


def derived(instance: F, **changes: object) -> F:
    """A copy of a validated container with ``changes`` applied, skipping re-validation.

    Used by ``to()`` and ``damped()``, whose results are valid whenever the source is
    (a dtype/device move, or adding a non-negative multiple of ``I``), so LLM-sized factors are
    not re-checked (an ``O(d³)`` Cholesky) at every step.
    """
    new = object.__new__(type(instance))
    for name in instance.__dataclass_fields__:  # type: ignore[attr-defined]
        object.__setattr__(new, name, changes.get(name, getattr(instance, name)))
    return new


def check_patch(patch: Tensor, shape: tuple[int, int]) -> None:
    """Raise unless ``patch`` has the Fisher's weight ``shape``."""
    if tuple(patch.shape) != shape:
        raise FisherValidationError(
            f"patch shape {tuple(patch.shape)} does not match the Fisher's weight shape {shape}"
        )


class FisherBase(ABC):
    """The Fisher of one weight in one kind's structure (frozen dataclasses; see module doc).

    Class attributes a kind sets: ``kind`` (its registry name), ``required_entries`` and
    ``optional_entries`` (the suffixes of its Fisher-file tensors; entries ending in
    ``_trace`` are 0-d, the others 2-D).
    """

    kind: ClassVar[str]
    required_entries: ClassVar[tuple[str, ...]]
    optional_entries: ClassVar[tuple[str, ...]] = ()

    def to(
        self: F, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> F:
        """The same Fisher with every tensor moved to ``device`` / cast to ``dtype``."""
        moved = {
            name: value.to(device=device, dtype=dtype)
            for name, value in vars(self).items()
            if isinstance(value, Tensor)
        }
        return derived(self, **moved)

    @property
    @abstractmethod
    def weight_shape(self) -> tuple[int, int]:
        """``(d_out, d_in)`` of the weight this Fisher is for."""

    @abstractmethod
    def trace(self) -> float:
        """``tr F``."""

    @abstractmethod
    def quadratic_form(self, patch: Tensor) -> float:
        """``vec(P)ᵀ F vec(P)`` for a patch ``P`` of :attr:`weight_shape`."""

    @abstractmethod
    def damped(self: F, epsilon: float, dtype: torch.dtype | None = None) -> F:
        """Relative damping of every stored factor, cast to ``dtype`` first when given."""

    @abstractmethod
    def entries(self) -> dict[str, Tensor]:
        """The tensors a Fisher file stores for this weight, by entry suffix."""

    @classmethod
    @abstractmethod
    def from_entries(cls: type[F], tensors: Mapping[str, Tensor]) -> F:
        """The validated container from a file's entries (required ones present)."""

    @classmethod
    @abstractmethod
    def weight_shape_of(cls, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
        """``(d_out, d_in)`` from the shapes of this kind's entries (no data read)."""

    def subspace_residual(self, patch: Tensor) -> float:
        """``‖ΔW − Π(ΔW)‖_F / ‖ΔW‖_F``: the part of ``patch`` outside the subspace this Fisher
        acts on, which a projection drops (0 for kinds defined on the whole weight space)."""
        return 0.0

    @classmethod
    def entry_shape_problem(cls, shapes: Mapping[str, Sequence[int]]) -> str | None:
        """``None`` when the shapes of one weight's entries (from a file header, no data read)
        fit together, else what is wrong; kinds with several related entries override it."""
        return None

    @abstractmethod
    def identity_like(self: F) -> F:
        """The Euclidean metric ``I`` in this structure (same kind, shape and subspace)."""

    def check_same_space(self, other: FisherBase, name: str) -> None:  # noqa: B027
        """Raise unless ``other`` (same kind and shape) acts on the same patches (kinds with a
        subspace check it; the others have nothing to check)."""

    @abstractmethod
    def project(
        self,
        patch: Tensor,
        benign: FisherBase,
        selection: Selection,
        trace_ratio: float,
        cache: GEVPCache,
        solver: SolverName,
    ) -> tuple[Tensor, ProjectionDiagnostics, tuple[Tensor, Tensor] | None]:
        """Project ``patch`` with ``self`` as the (damped, float64) ``F_harm`` and ``benign``.

        Returns the projected patch in the patch's dtype, the diagnostics and, for kinds whose
        output is low-rank, float64 factors ``(left, right)`` of it (else ``None``).
        """


#: any container (the kinds are registered in :mod:`sst_merge_plugin.core.kinds`)
Fisher = FisherBase


def check_compatible(harm_fisher: Fisher, benign_fisher: Fisher, name: str = "weight") -> None:
    """Raise unless the two Fishers have the same kind, weight shape and (for kinds with one)
    subspace."""
    if harm_fisher.kind != benign_fisher.kind:
        raise FisherValidationError(
            f"{name}: harm Fisher is '{harm_fisher.kind}' but benign Fisher is '{benign_fisher.kind}'"
        )
    if harm_fisher.weight_shape != benign_fisher.weight_shape:
        raise FisherValidationError(
            f"{name}: harm Fisher is for shape {harm_fisher.weight_shape}, benign Fisher for "
            f"{benign_fisher.weight_shape}"
        )
    harm_fisher.check_same_space(benign_fisher, name)
