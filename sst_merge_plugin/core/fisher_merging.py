"""Diagonal-Fisher-weighted averaging (Fisher merging, Matena & Raffel 2022) for task deltas.

Per parameter ``p``, with input deltas ``Δ_i``, diagonal Fishers ``F_i`` and weights ``w_i``:

    Δ[p] = Σ_i w_i F̃_i[p] Δ_i[p] / Σ_i w_i F̃_i[p],   F̃_i = F_i / s_i + δ

``s_i = mean(F_i)`` when ``normalise`` is set (so models whose Fishers differ in overall scale
count equally), else 1. The floor ``δ = ε · mean_i mean(F_i / s_i)`` is common to all inputs, so
parameters that no Fisher constrains get the ``w``-weighted average of the deltas instead of a
division by zero. Because the weights sum
out, ``W0 + Δ`` equals the Fisher-weighted average of the full parameters ``W0 + Δ_i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import FisherValidationError
from sst_merge_plugin.core.fisher import all_finite


def fisher_weighted_average(
    deltas: Sequence[Tensor],
    fishers: Sequence[Tensor],
    weights: Sequence[float] | None = None,
    *,
    floor: float = 1e-6,
    normalise: bool = False,
) -> Tensor:
    """Fisher-weighted average of ``deltas`` (see module doc). Returns the input dtype."""
    if not deltas:
        raise FisherValidationError("Fisher merging needs at least one delta")
    if len(fishers) != len(deltas):
        raise FisherValidationError(
            f"Fisher merging got {len(deltas)} deltas but {len(fishers)} Fishers"
        )
    weights = [1.0] * len(deltas) if weights is None else list(weights)
    if len(weights) != len(deltas):
        raise FisherValidationError(f"got {len(weights)} weights for {len(deltas)} deltas")
    if floor < 0:
        raise FisherValidationError(f"floor must be >= 0, got {floor}")
    scaled_fishers = []
    for index, (delta, fisher) in enumerate(zip(deltas, fishers, strict=True)):
        if delta.shape != deltas[0].shape or fisher.shape != delta.shape:
            raise FisherValidationError(
                f"input {index}: delta {tuple(delta.shape)} and Fisher {tuple(fisher.shape)} must "
                f"match the first delta's shape {tuple(deltas[0].shape)}"
            )
        if not (all_finite(fisher) and all_finite(delta)):
            raise FisherValidationError(f"input {index}: delta or Fisher contains NaN/Inf")
        if float(fisher.min()) < 0:
            raise FisherValidationError(f"input {index}: diagonal Fisher has negative entries")
        scaled = fisher.double()
        mean = float(scaled.mean())
        scaled_fishers.append(scaled / mean if normalise and mean > 0 else scaled)
    mean_level = sum(float(f.mean()) for f in scaled_fishers) / len(scaled_fishers)
    offset = floor * (mean_level if mean_level > 0 else 1.0)
    numerator = torch.zeros(deltas[0].shape, dtype=torch.float64, device=deltas[0].device)
    denominator = torch.zeros_like(numerator)
    for delta, scaled, weight in zip(deltas, scaled_fishers, weights, strict=True):
        numerator += weight * (scaled + offset) * delta.double()
        denominator += weight * (scaled + offset)
    if float(denominator.abs().min()) == 0.0:
        raise FisherValidationError(
            "Fisher merging: the weighted Fishers sum to zero somewhere; use weights that do not "
            "cancel and a floor > 0"
        )
    return (numerator / denominator).to(deltas[0].dtype)
