"""Single-Fisher projection: the AlignGuard-LoRA / SafeAnchor-style ablation (``docs/design.md``
§3.1).

Keeps the safety patch along the leading eigenvectors of ``F_harm`` alone, i.e. SST-Merge with the
benign metric replaced by the Euclidean one, ``F_benign = I``: the generalized problem
``F_h v = λ I v`` is the ordinary eigenproblem of ``F_h``. Comparing it with :func:`project_patch`
shows what the second (benign) Fisher buys.
"""

from __future__ import annotations

from torch import Tensor

from sst_merge_plugin.core.fisher import Fisher
from sst_merge_plugin.core.gevp import GEVPCache, SolverName
from sst_merge_plugin.core.projector import DEFAULT_DAMPING, ProjectionResult, project_patch
from sst_merge_plugin.core.selection import Selection


def project_single_fisher(
    patch: Tensor,
    harm_fisher: Fisher,
    selection: Selection,
    *,
    damping: float = DEFAULT_DAMPING,
    solver: SolverName = "auto",
    cache: GEVPCache | None = None,
    name: str = "weight",
) -> ProjectionResult:
    """``project_patch(patch, F_h, I, selection)``: keep the patch along top eigenvectors of F_h
    (``I`` in ``F_h``'s structure, :meth:`~.fisher.FisherBase.identity_like`).

    The diagnostics' "cost" is then the squared Euclidean norm of the (projected) patch.
    """
    return project_patch(
        patch,
        harm_fisher,
        harm_fisher.identity_like(),
        selection,
        damping=damping,
        solver=solver,
        cache=cache,
        name=name,
    )
