"""Which generalized-eigen coordinates of the safety patch to keep (DESIGN 1.3).

A patch in the ``F_benign``-orthonormal eigenbasis has coordinates ``C`` with per-coordinate
efficiency ``λ`` (harm gain per unit of benign cost). λ is used *normalised* by
``tr(F_h)/tr(F_b)``, so ``λ = 1`` means "as efficient as an average direction" and the thresholds
below do not depend on the overall scale of the two Fishers. The selection returns a weight
``M ∈ [0, 1]`` per coordinate; the projected patch has coordinates ``M ⊙ C``.

* ``top_k``  — ``M = 1`` on the ``k`` largest-λ coordinates.
* ``energy`` — ``M = 1`` on the smallest set of largest-λ coordinates whose gain ``λ C²`` holds
  at least the fraction ``energy`` of the patch's total gain.
* ``ratio``  — ``M = 1`` where normalised ``λ ≥ τ``.
* ``soft``   — ``M = λ / (λ + ρ)``: the minimiser of ``‖φ − ΔW‖²_{F_h} + ρ c ‖φ‖²_{F_b}``
  with ``c = tr(F_h)/tr(F_b)`` (ρ in normalised units).
* ``all``    — ``M = 1`` (no selection; the identity projection, for ablations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import SelectionError

SelectMode = Literal["top_k", "energy", "ratio", "soft", "all"]
SELECT_MODES: tuple[str, ...] = get_args(SelectMode)


@dataclass(frozen=True)
class Selection:
    """A validated selection rule. Build with :meth:`create` to get parameter checking."""

    mode: SelectMode
    k: int | None = None
    energy: float | None = None
    ratio: float | None = None
    rho: float | None = None

    @classmethod
    def create(
        cls,
        mode: str,
        *,
        k: int | None = None,
        energy: float | None = None,
        ratio: float | None = None,
        rho: float | None = None,
    ) -> Selection:
        """Validate that ``mode`` is known and exactly its own parameter is set and in range."""
        if mode not in SELECT_MODES:
            raise SelectionError(f"unknown select mode '{mode}'; expected one of {SELECT_MODES}")
        given = {"k": k, "energy": energy, "ratio": ratio, "rho": rho}
        needed = {"top_k": "k", "energy": "energy", "ratio": "ratio", "soft": "rho", "all": None}[
            mode
        ]
        extra = sorted(
            name for name, value in given.items() if value is not None and name != needed
        )
        if extra:
            raise SelectionError(
                f"select '{mode}' does not take parameter(s) {extra}"
                + (f"; it takes '{needed}'" if needed else "")
            )
        if needed is not None and given[needed] is None:
            raise SelectionError(f"select '{mode}' needs the parameter '{needed}'")
        if mode == "top_k" and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise SelectionError(f"k must be a non-negative integer, got {k!r}")
        if mode == "energy" and not 0.0 < float(energy) <= 1.0:  # type: ignore[arg-type]
            raise SelectionError(f"energy must be in (0, 1], got {energy}")
        if mode == "ratio" and not float(ratio) >= 0.0:  # type: ignore[arg-type]
            raise SelectionError(f"ratio must be >= 0, got {ratio}")
        if mode == "soft" and not float(rho) > 0.0:  # type: ignore[arg-type]
            raise SelectionError(f"rho must be > 0, got {rho}")
        return cls(mode=mode, k=k, energy=energy, ratio=ratio, rho=rho)  # type: ignore[arg-type]

    @property
    def needs_full_spectrum(self) -> bool:
        """Only ``top_k`` can be served by the leading ``k`` eigenpairs of each factor."""
        return self.mode != "top_k"


def selection_weights(
    normalised_lambda: Tensor, coords: Tensor, selection: Selection, total_gain: float
) -> Tensor:
    """The weight ``M`` (same shape as ``coords``) for each coordinate.

    ``normalised_lambda`` — λ per coordinate divided by ``tr(F_h)/tr(F_b)``; ``coords`` — the
    patch's ``F_benign``-orthonormal coordinates ``C``; ``total_gain`` — the patch's full gain
    ``vec(ΔW)ᵀ F_h vec(ΔW)`` in the same (normalised) units as ``Σ λ C²``, used by ``energy``
    (it may exceed ``Σ λ C²`` when only the leading coordinates are available).
    Ties in λ are broken by coordinate index, so the result is deterministic.
    """
    if normalised_lambda.shape != coords.shape:
        raise SelectionError(
            f"λ grid {tuple(normalised_lambda.shape)} and coordinates {tuple(coords.shape)} differ"
        )
    lam = normalised_lambda.reshape(-1)
    if selection.mode == "all":
        return torch.ones_like(coords)
    if selection.mode == "soft":
        return (normalised_lambda / (normalised_lambda + selection.rho)).to(coords.dtype)
    if selection.mode == "ratio":
        return (normalised_lambda >= selection.ratio).to(coords.dtype)
    order = torch.argsort(lam, descending=True, stable=True)
    if selection.mode == "top_k":
        n_keep = min(int(selection.k), lam.numel())
    else:  # energy
        gains = (lam * coords.reshape(-1).to(lam.dtype) ** 2)[order]
        if total_gain <= 0.0:
            n_keep = 0
        else:
            reached = torch.cumsum(gains, 0) >= selection.energy * total_gain * (1 - 1e-12)
            hits = torch.nonzero(reached)
            n_keep = int(hits[0]) + 1 if hits.numel() else lam.numel()
    mask = torch.zeros(lam.numel(), dtype=coords.dtype, device=coords.device)
    mask[order[:n_keep]] = 1
    return mask.reshape(coords.shape)
