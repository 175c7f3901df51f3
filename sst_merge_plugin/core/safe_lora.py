"""Safe LoRA projection and the SafeMERGE-style cosine-gated merge (``docs/design.md`` §3.2).

Safe LoRA (Hsu et al., 2024) builds, per weight, an *alignment matrix* ``V = W_aligned −
W_unaligned`` (here: the safety delta) and the map ``C = V Vᵀ / ‖V‖_F`` (the paper's and its
reference code's formula, which is a scaled — not an orthogonal — projection). A utility delta
``ΔW`` is replaced by ``C ΔW`` when the cosine similarity ``⟨ΔW, CΔW⟩ / (‖ΔW‖ ‖CΔW‖)`` is below a
threshold ``τ``: layers whose update leaves the alignment subspace get projected back into it.

SafeMERGE (Djuhera et al., 2025) uses the same similarity as a gate: where it is below ``τ`` the
fine-tuned layer is merged with the safety layer, ``w_u ΔW + w_s ΔW_s``; elsewhere ``ΔW`` is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import FisherValidationError
from sst_merge_plugin.core.fisher import all_finite
from sst_merge_plugin.core.projector import low_rank_factors


@dataclass(frozen=True)
class GatedDelta:
    """A per-weight decision: the resulting delta, whether the gate fired, and the similarity."""

    delta: Tensor
    gated: bool
    similarity: float


def apply_alignment_map(delta: Tensor, alignment: Tensor) -> Tensor:
    """``C ΔW`` with ``C = V Vᵀ / ‖V‖_F``, computed without forming the ``d_out²`` matrix.

    ``V = L R`` (exact low-rank factors when ``V`` is a LoRA delta) gives
    ``C ΔW = L (R Rᵀ) (Lᵀ ΔW) / ‖V‖_F``.
    """
    _check_pair(delta, alignment)
    norm = torch.linalg.matrix_norm(alignment.double())
    if float(norm) == 0.0:
        return torch.zeros_like(delta)
    left, right = low_rank_factors(alignment.double())
    if right is None:  # full rank: V (Vᵀ ΔW)
        mapped = left @ (left.T @ delta.double())
    else:
        mapped = left @ ((right @ right.T) @ (left.T @ delta.double()))
    return (mapped / norm).to(delta.dtype)


def alignment_similarity(delta: Tensor, alignment: Tensor) -> tuple[float, Tensor]:
    """``(cos(ΔW, CΔW), CΔW)``; the cosine is 0 when either side vanishes."""
    mapped = apply_alignment_map(delta, alignment)
    a, b = delta.double().reshape(-1), mapped.double().reshape(-1)
    denom = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return (float(a @ b) / denom if denom > 0 else 0.0), mapped


def safe_lora_project(delta: Tensor, alignment: Tensor, threshold: float) -> GatedDelta:
    """Safe LoRA: ``C ΔW`` if ``cos(ΔW, CΔW) < threshold`` else ``ΔW``."""
    similarity, mapped = alignment_similarity(delta, alignment)
    gated = similarity < threshold
    return GatedDelta(mapped if gated else delta, gated, similarity)


def cosine_gated_merge(
    delta: Tensor,
    safety_delta: Tensor,
    threshold: float,
    *,
    utility_weight: float = 1.0,
    safety_weight: float = 1.0,
) -> GatedDelta:
    """SafeMERGE: ``w_u ΔW + w_s ΔW_s`` where ``cos(ΔW, CΔW) < threshold`` (``C`` from ``ΔW_s``),
    else ``ΔW``."""
    similarity, _ = alignment_similarity(delta, safety_delta)
    gated = similarity < threshold
    merged = utility_weight * delta + safety_weight * safety_delta if gated else delta
    return GatedDelta(merged, gated, similarity)


def _check_pair(delta: Tensor, alignment: Tensor) -> None:
    if delta.shape != alignment.shape or delta.ndim != 2:
        raise FisherValidationError(
            f"delta {tuple(delta.shape)} and alignment matrix {tuple(alignment.shape)} must be "
            "2-D and of the same shape"
        )
    for label, tensor in (("delta", delta), ("alignment matrix", alignment)):
        if not all_finite(tensor):
            raise FisherValidationError(f"{label} contains NaN/Inf")
