"""Framework-free torch math of SST-Merge (no mergekit / FusionBench imports; the formulas
are derived in ``docs/design.md``).

* :mod:`.fisher` — the container interface every Fisher kind implements, damping, validation.
* :mod:`.kinds` — the registry of Fisher kinds and one module per kind (``diag``, ``kfac``,
  ``lora``): container, accumulator, file entries, projection.
* :mod:`.statistics` — the token-level estimator and the accumulators' shared machinery.
* :mod:`.gevp` — generalized eigensolvers (dense float64, top-k Krylov) and their cache.
* :mod:`.selection` — the registry of selection modes (``top_k``, ``energy``, ``ratio``,
  ``soft``, ``all``).
* :mod:`.projector` — the SST projector ``P(ΔW)`` with gain/cost diagnostics.
* :mod:`.single_fisher`, :mod:`.safe_lora`, :mod:`.fisher_merging` — baselines the hosts lack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sst_merge_plugin.core.errors import (
        FisherValidationError,
        SelectionError,
        SolverError,
        SSTError,
    )
    from sst_merge_plugin.core.fisher import Fisher, check_compatible, relative_damping
    from sst_merge_plugin.core.fisher_merging import fisher_weighted_average
    from sst_merge_plugin.core.gevp import GeneralizedEigenpairs, GEVPCache, solve
    from sst_merge_plugin.core.kinds import FisherKind, get_kind, kind_names
    from sst_merge_plugin.core.kinds.diag import DiagFisher
    from sst_merge_plugin.core.kinds.kfac import KFACFisher
    from sst_merge_plugin.core.kinds.lora import LoRAFisher
    from sst_merge_plugin.core.projector import (
        DEFAULT_DAMPING,
        ProjectionDiagnostics,
        ProjectionResult,
        project_patch,
    )
    from sst_merge_plugin.core.safe_lora import cosine_gated_merge, safe_lora_project
    from sst_merge_plugin.core.selection import Selection
    from sst_merge_plugin.core.single_fisher import project_single_fisher

#: public name -> defining module; imported on first access (PEP 562), so that
#: ``import sst_merge_plugin.core.errors`` (the CLI, the mergekit start-up hook) does not pay
#: for importing torch.
_EXPORTS: dict[str, str] = {
    "check_compatible": "sst_merge_plugin.core.fisher",
    "cosine_gated_merge": "sst_merge_plugin.core.safe_lora",
    "DEFAULT_DAMPING": "sst_merge_plugin.core.projector",
    "DiagFisher": "sst_merge_plugin.core.kinds.diag",
    "Fisher": "sst_merge_plugin.core.fisher",
    "fisher_weighted_average": "sst_merge_plugin.core.fisher_merging",
    "FisherValidationError": "sst_merge_plugin.core.errors",
    "GeneralizedEigenpairs": "sst_merge_plugin.core.gevp",
    "GEVPCache": "sst_merge_plugin.core.gevp",
    "FisherKind": "sst_merge_plugin.core.kinds",
    "get_kind": "sst_merge_plugin.core.kinds",
    "kind_names": "sst_merge_plugin.core.kinds",
    "KFACFisher": "sst_merge_plugin.core.kinds.kfac",
    "LoRAFisher": "sst_merge_plugin.core.kinds.lora",
    "project_patch": "sst_merge_plugin.core.projector",
    "project_single_fisher": "sst_merge_plugin.core.single_fisher",
    "ProjectionDiagnostics": "sst_merge_plugin.core.projector",
    "ProjectionResult": "sst_merge_plugin.core.projector",
    "relative_damping": "sst_merge_plugin.core.fisher",
    "safe_lora_project": "sst_merge_plugin.core.safe_lora",
    "Selection": "sst_merge_plugin.core.selection",
    "SelectionError": "sst_merge_plugin.core.errors",
    "solve": "sst_merge_plugin.core.gevp",
    "SolverError": "sst_merge_plugin.core.errors",
    "SSTError": "sst_merge_plugin.core.errors",
}

__all__ = [
    "DEFAULT_DAMPING",
    "DiagFisher",
    "Fisher",
    "FisherKind",
    "FisherValidationError",
    "GEVPCache",
    "GeneralizedEigenpairs",
    "KFACFisher",
    "LoRAFisher",
    "ProjectionDiagnostics",
    "ProjectionResult",
    "SSTError",
    "Selection",
    "SelectionError",
    "SolverError",
    "check_compatible",
    "cosine_gated_merge",
    "fisher_weighted_average",
    "get_kind",
    "kind_names",
    "project_patch",
    "project_single_fisher",
    "relative_damping",
    "safe_lora_project",
    "solve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
