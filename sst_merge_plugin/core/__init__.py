"""Framework-free torch math of SST-Merge (no mergekit / FusionBench imports).

* :mod:`.fisher` — Fisher containers (``diag``, ``kfac``, ``lora``) and relative damping.
* :mod:`.gevp` — generalized eigensolvers (dense float64, top-k Krylov) and their cache.
* :mod:`.selection` — which eigen-coordinates to keep (``top_k``, ``energy``, ``ratio``, ``soft``).
* :mod:`.projector` — the SST projector ``P(ΔW)`` with gain/cost diagnostics.
* :mod:`.single_fisher`, :mod:`.safe_lora`, :mod:`.fisher_merging` — baselines the hosts lack.
"""

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
