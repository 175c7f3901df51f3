"""Which generalized-eigen coordinates of a patch to keep: the selection modes (``docs/design.md``
§1.3).

A patch in the ``F_benign``-orthonormal eigenbasis has coordinates ``C`` with per-coordinate
efficiency ``λ`` (harm gain per unit of benign cost). λ is used *normalised* by
``tr(F_h)/tr(F_b)``, so ``λ = 1`` means "as efficient as an average direction" and the thresholds
below do not depend on the overall scale of the two Fishers. A mode returns a weight
``M ∈ [0, 1]`` per coordinate; the projected patch has coordinates ``M ⊙ C``.

* ``top_k``  — ``M = 1`` on the ``k`` largest-λ coordinates.
* ``energy`` — ``M = 1`` on the smallest set of largest-λ coordinates whose gain ``λ C²`` holds
  at least the fraction ``energy`` of the patch's total gain.
* ``ratio``  — ``M = 1`` where normalised ``λ ≥ τ``.
* ``soft``   — ``M = λ / (λ + ρ)``: the minimiser of ``‖φ − ΔW‖²_{F_h} + ρ c ‖φ‖²_{F_b}``
  with ``c = tr(F_h)/tr(F_b)`` (ρ in normalised units).
* ``all``    — ``M = 1`` (no selection; the identity projection, for ablations).

Every mode is one :class:`SelectMode` in :data:`SELECT_MODES` — its name, its own parameter
(at most one), the parameter's default and range check, and its weight rule. The hosts' parameter
tables, the CLI and the benchmark profiles derive from that registry; a new mode is one weight
function plus one :func:`register_select_mode` call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import SelectionError

#: ``weights(normalised λ, coordinates C, the mode's parameter value, total gain) -> M``
WeightRule = Callable[[Tensor, Tensor, Any, float], Tensor]


@dataclass(frozen=True)
class SelectMode:
    """One selection mode (module doc).

    ``parameter`` — the name of its own parameter (``None``: it takes none); ``default`` — the
    value used when the parameter is not given (``None``: the parameter is required);
    ``check`` — returns an error text for a bad value, else ``None``; ``weights`` — the rule;
    ``leading`` — for modes that only need the leading pairs of each eigenproblem, how many for
    a given parameter value (``None``: the full spectrum); ``integer`` — whether the parameter
    is an integer (else a float).
    """

    name: str
    parameter: str | None
    default: float | int | None
    check: Callable[[Any], str | None]
    weights: WeightRule
    leading: Callable[[Any], int] | None = None
    integer: bool = False
    doc: str = ""


_MODES: dict[str, SelectMode] = {}
#: every registered mode by name (read-only view; :func:`register_select_mode` adds one)
SELECT_MODES: Mapping[str, SelectMode] = MappingProxyType(_MODES)


def register_select_mode(mode: SelectMode) -> SelectMode:
    """Add ``mode`` to :data:`SELECT_MODES` (an error if the name or its parameter is taken by
    another mode)."""
    if mode.name in _MODES:
        raise SelectionError(f"select mode {mode.name!r} is already registered")
    taken = {m.parameter: m.name for m in _MODES.values() if m.parameter}
    if mode.parameter in taken:
        raise SelectionError(
            f"select mode {mode.name!r}: parameter {mode.parameter!r} belongs to {taken[mode.parameter]!r}"
        )
    _MODES[mode.name] = mode
    return mode


def selection_parameters() -> tuple[str, ...]:
    """The parameter names of all modes (``k``, ``energy``, ``ratio``, ``rho``, …)."""
    return tuple(m.parameter for m in _MODES.values() if m.parameter)


def _order_mask(lam: Tensor, coords: Tensor, n_keep: int, order: Tensor) -> Tensor:
    mask = torch.zeros(lam.numel(), dtype=coords.dtype, device=coords.device)
    mask[order[:n_keep]] = 1
    return mask.reshape(coords.shape)


def _top_k(normalised: Tensor, coords: Tensor, k: Any, total_gain: float) -> Tensor:
    lam = normalised.reshape(-1)
    order = torch.argsort(lam, descending=True, stable=True)
    return _order_mask(lam, coords, min(int(k), lam.numel()), order)


def _energy(normalised: Tensor, coords: Tensor, energy: Any, total_gain: float) -> Tensor:
    lam = normalised.reshape(-1)
    order = torch.argsort(lam, descending=True, stable=True)
    gains = (lam * coords.reshape(-1).to(lam.dtype) ** 2)[order]
    if total_gain <= 0.0:
        n_keep = 0
    else:
        reached = torch.cumsum(gains, 0) >= energy * total_gain * (1 - 1e-12)
        hits = torch.nonzero(reached)
        n_keep = int(hits[0]) + 1 if hits.numel() else lam.numel()
    return _order_mask(lam, coords, n_keep, order)


def _ratio(normalised: Tensor, coords: Tensor, ratio: Any, total_gain: float) -> Tensor:
    return (normalised >= ratio).to(coords.dtype)


def _soft(normalised: Tensor, coords: Tensor, rho: Any, total_gain: float) -> Tensor:
    return (normalised / (normalised + rho)).to(coords.dtype)


def _all(normalised: Tensor, coords: Tensor, value: Any, total_gain: float) -> Tensor:
    return torch.ones_like(coords)


def _non_negative_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"k must be a non-negative integer, got {value!r}"
    return None


register_select_mode(
    SelectMode(
        "top_k", "k", None, _non_negative_int, _top_k, lambda k: max(int(k), 1), integer=True,
        doc="the k largest-λ coordinates",
    )
)  # fmt: skip
register_select_mode(
    SelectMode(
        "energy", "energy", 0.9,
        lambda v: None if 0.0 < float(v) <= 1.0 else f"energy must be in (0, 1], got {v}",
        _energy, doc="the fewest largest-λ coordinates holding this fraction of the gain",
    )
)  # fmt: skip
register_select_mode(
    SelectMode(
        "ratio", "ratio", 1.0, lambda v: None if float(v) >= 0.0 else f"ratio must be >= 0, got {v}",
        _ratio, doc="coordinates with normalised λ ≥ τ",
    )
)  # fmt: skip
register_select_mode(
    SelectMode(
        "soft", "rho", 1.0, lambda v: None if float(v) > 0.0 else f"rho must be > 0, got {v}",
        _soft, doc="shrink each coordinate by λ/(λ+ρ)",
    )
)  # fmt: skip
register_select_mode(
    SelectMode("all", None, None, lambda v: None, _all, doc="keep everything (no projection)")
)


def get_select_mode(name: str) -> SelectMode:
    """The registered mode ``name``; :class:`SelectionError` naming the known ones otherwise."""
    mode = _MODES.get(name) if isinstance(name, str) else None
    if mode is None:
        raise SelectionError(f"unknown select mode '{name}'; expected one of {tuple(_MODES)}")
    return mode


@dataclass(frozen=True)
class Selection:
    """A validated selection rule: a mode and the value of its parameter (if it takes one).

    Build with :meth:`create` to get parameter checking.
    """

    mode: str
    value: float | int | None = None

    @classmethod
    def create(cls, mode: str, **parameters: Any) -> Selection:
        """Validate that ``mode`` is known and exactly its own parameter is given and in range
        (``Selection.create("soft", rho=0.5)``)."""
        spec = get_select_mode(mode)
        given = {name: value for name, value in parameters.items() if value is not None}
        extra = sorted(name for name in given if name != spec.parameter)
        if extra:
            raise SelectionError(
                f"select '{mode}' does not take parameter(s) {extra}"
                + (f"; it takes '{spec.parameter}'" if spec.parameter else "")
            )
        if spec.parameter is None:
            return cls(mode)
        if spec.parameter not in given:
            raise SelectionError(f"select '{mode}' needs the parameter '{spec.parameter}'")
        value = given[spec.parameter]
        problem = spec.check(value)
        if problem is not None:
            raise SelectionError(problem)
        return cls(mode, value)

    @property
    def spec(self) -> SelectMode:
        return get_select_mode(self.mode)

    def leading_pairs(self) -> int | None:
        """How many leading eigenpairs per factor the mode needs (``None``: all of them)."""
        spec = self.spec
        return None if spec.leading is None else spec.leading(self.value)

    def as_dict(self) -> dict[str, Any]:
        """``{"mode": …, <its parameter>: value}`` (JSON-serialisable, for reports)."""
        spec = self.spec
        return {"mode": self.mode} | ({spec.parameter: self.value} if spec.parameter else {})


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
    return selection.spec.weights(normalised_lambda, coords, selection.value, total_gain)
