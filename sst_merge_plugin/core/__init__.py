"""Framework-free torch math of SST-Merge (no mergekit / FusionBench imports).

* :mod:`.fisher` — Fisher containers (``diag``, ``kfac``, ``lora``) and relative damping.
* :mod:`.gevp` — generalized eigensolvers (dense float64, top-k Krylov) and their cache.
* :mod:`.selection` — which eigen-coordinates to keep (``top_k``, ``energy``, ``ratio``, ``soft``).
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
    from sst_merge_plugin.core.fisher import (
        DiagFisher,
        Fisher,
        KFACFisher,
        LoRAFisher,
        check_compatible,
        relative_damping,
    )
    from sst_merge_plugin.core.fisher_merging import fisher_weighted_average
    from sst_merge_plugin.core.gevp import GeneralizedEigenpairs, GEVPCache, solve
    from sst_merge_plugin.core.projector import (
        DEFAULT_DAMPING,
        ProjectionDiagnostics,
        ProjectionResult,
        project_patch,
    )
    from sst_merge_plugin.core.safe_lora import cosine_gated_merge, safe_lora_project
    from sst_merge_plugin.core.selection import Selection
    from sst_merge_plugin.core.single_fisher import identity_fisher_like, project_single_fisher

#: public name -> defining module; imported on first access (PEP 562), so that
#: ``import sst_merge_plugin.core.errors`` (the CLI, the mergekit start-up hook) does not pay
#: for importing torch.
_EXPORTS: dict[str, str] = {
    "check_compatible": "sst_merge_plugin.core.fisher",
    "cosine_gated_merge": "sst_merge_plugin.core.safe_lora",
    "DEFAULT_DAMPING": "sst_merge_plugin.core.projector",
    "DiagFisher": "sst_merge_plugin.core.fisher",
    "Fisher": "sst_merge_plugin.core.fisher",
    "fisher_weighted_average": "sst_merge_plugin.core.fisher_merging",
    "FisherValidationError": "sst_merge_plugin.core.errors",
    "GeneralizedEigenpairs": "sst_merge_plugin.core.gevp",
    "GEVPCache": "sst_merge_plugin.core.gevp",
    "identity_fisher_like": "sst_merge_plugin.core.single_fisher",
    "KFACFisher": "sst_merge_plugin.core.fisher",
    "LoRAFisher": "sst_merge_plugin.core.fisher",
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
    "identity_fisher_like",
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
