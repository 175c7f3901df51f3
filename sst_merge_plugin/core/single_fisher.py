"""Single-Fisher projection: the AlignGuard-LoRA / SafeAnchor-style ablation (DESIGN 1.5).

Keeps the safety patch along the leading eigenvectors of ``F_harm`` alone, i.e. SST-Merge with the
benign metric replaced by the Euclidean one, ``F_benign = I``: the generalized problem
``F_h v = λ I v`` is the ordinary eigenproblem of ``F_h``. Comparing it with :func:`project_patch`
shows what the second (benign) Fisher buys.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sst_merge_plugin.core.fisher import DiagFisher, Fisher, KFACFisher, LoRAFisher
from sst_merge_plugin.core.gevp import GEVPCache, SolverName
from sst_merge_plugin.core.projector import DEFAULT_DAMPING, ProjectionResult, project_patch
from sst_merge_plugin.core.selection import Selection


def identity_fisher_like(fisher: Fisher) -> Fisher:
    """The Euclidean metric ``I`` in ``fisher``'s structure (same kind, shape and subspace).

    ``diag``: all ones; ``kfac``: ``I_{d_in} ⊗ I_{d_out}``; ``lora``: ``UᵀIU = I_r``,
    ``VᵀIV = I_r`` with full-space traces ``d_in`` and ``d_out``.
    """
    if isinstance(fisher, DiagFisher):
        return DiagFisher(torch.ones_like(fisher.diag))
    eye = torch.eye
    if isinstance(fisher, KFACFisher):
        return KFACFisher(
            eye(fisher.A.shape[0], dtype=fisher.A.dtype, device=fisher.A.device),
            eye(fisher.G.shape[0], dtype=fisher.G.dtype, device=fisher.G.device),
        )
    d_out, d_in = fisher.weight_shape
    r_out, r_in = fisher.rank
    dtype, device = fisher.A_r.dtype, fisher.A_r.device
    return LoRAFisher(
        fisher.U,
        fisher.V,
        eye(r_in, dtype=dtype, device=device),
        eye(r_out, dtype=dtype, device=device),
        A_trace=float(d_in),
        G_trace=float(d_out),
    )


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
    """``project_patch(patch, F_h, I, selection)``: keep the patch along top eigenvectors of F_h.

    The diagnostics' "cost" is then the squared Euclidean norm of the (projected) patch.
    """
    return project_patch(
        patch,
        harm_fisher,
        identity_fisher_like(harm_fisher),
        selection,
        damping=damping,
        solver=solver,
        cache=cache,
        name=name,
    )
