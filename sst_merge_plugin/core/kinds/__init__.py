"""The Fisher kinds: one registry, one module per kind (``docs/design.md`` §2).

A kind is a :class:`FisherKind`: its container (a :class:`~sst_merge_plugin.core.fisher.
FisherBase` — validation, file entries, damping, quadratic form and its own SST projection)
and its accumulator (a :class:`~sst_merge_plugin.core.statistics.LayerStatistics`). Everything
else — the ``sst-merge fisher --kind`` choices, the Fisher file reader and writer, the
collection hooks, the projector, the hosts' checks — asks this registry, never the kind's name.

Built-in kinds (:data:`BUILTIN_KINDS`): ``diag``, ``kfac``, ``lora``. Their modules are imported
on first use, so :func:`kind_names` costs no torch import (the CLI builds its parser from it).
A new kind is one module defining ``KIND = FisherKind(...)`` plus one line here (or a
:func:`register_fisher_kind` call from user code).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sst_merge_plugin.core.errors import SSTError

if TYPE_CHECKING:
    from torch import Tensor

    from sst_merge_plugin.core.fisher import FisherBase
    from sst_merge_plugin.core.statistics import LayerStatistics

#: the built-in kinds: name → the module that defines its ``KIND``
BUILTIN_KINDS: dict[str, str] = {
    "diag": "sst_merge_plugin.core.kinds.diag",
    "kfac": "sst_merge_plugin.core.kinds.kfac",
    "lora": "sst_merge_plugin.core.kinds.lora",
}


@dataclass(frozen=True)
class FisherKind:
    """One Fisher structure.

    ``container`` — its :class:`~sst_merge_plugin.core.fisher.FisherBase` subclass;
    ``statistics`` — its accumulator class, built by :meth:`new_statistics`; ``restricted`` —
    whether it is collected inside an adapter's subspace ``(U, V)`` (``--restrict-to``): its
    projections then have rank ≤ r and come as factors (``write_adapter``); ``summary`` — one
    line for help texts.
    """

    name: str
    container: type[FisherBase]
    statistics: type[LayerStatistics]
    restricted: bool = False
    summary: str = ""

    def new_statistics(
        self, layer: str, shape: tuple[int, int], subspace: tuple[Tensor, Tensor] | None
    ) -> LayerStatistics:
        """The accumulator for the weight ``layer`` of ``shape = (d_out, d_in)``; ``subspace =
        (U, V)`` is required for (and only accepted by) a restricted kind."""
        d_out, d_in = shape
        if self.restricted:
            if subspace is None:
                raise SSTError(f"{layer}: the {self.name} kind needs the adapter subspace (U, V)")
            return self.statistics(layer, d_out, d_in, *subspace)  # type: ignore[call-arg]
        if subspace is not None:
            raise SSTError(f"{layer}: the {self.name} kind takes no adapter subspace")
        return self.statistics(layer, d_out, d_in)


_REGISTERED: dict[str, FisherKind] = {}


def register_fisher_kind(kind: FisherKind) -> FisherKind:
    """Make ``kind`` available under ``kind.name`` (an error if another kind has the name)."""
    known = _REGISTERED.get(kind.name)
    if known is not None and known is not kind:
        raise SSTError(f"Fisher kind {kind.name!r} is already registered")
    if kind.container.kind != kind.name:
        raise SSTError(
            f"Fisher kind {kind.name!r}: its container says kind {kind.container.kind!r}"
        )
    _REGISTERED[kind.name] = kind
    return kind


def kind_names() -> tuple[str, ...]:
    """Every kind's name: the built-in ones, then those registered from outside."""
    return tuple(dict.fromkeys([*BUILTIN_KINDS, *_REGISTERED]))


def get_kind(name: str) -> FisherKind:
    """The kind ``name`` (imports a built-in kind's module on first use)."""
    kind = _REGISTERED.get(name)
    if kind is None and name in BUILTIN_KINDS:
        kind = register_fisher_kind(importlib.import_module(BUILTIN_KINDS[name]).KIND)
    if kind is None:
        raise SSTError(f"unknown Fisher kind {name!r}; expected one of {', '.join(kind_names())}")
    return kind
