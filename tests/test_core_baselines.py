"""Baselines the hosts lack: Safe LoRA, SafeMERGE gate, Fisher merging, low-rank factoring."""

from __future__ import annotations

import pytest
import torch

from sst_merge_plugin.core import cosine_gated_merge, fisher_weighted_average, safe_lora_project
from sst_merge_plugin.core.errors import FisherValidationError
from sst_merge_plugin.core.projector import low_rank_factors
from sst_merge_plugin.core.safe_lora import apply_alignment_map


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("rank", [3, None])
def test_alignment_map_equals_dense_formula(rank):
    alignment = rand(40, rank, seed=1) @ rand(rank, 30, seed=2) if rank else rand(40, 30, seed=1)
    delta = rand(40, 30, seed=3)
    dense_c = alignment @ alignment.T / torch.linalg.matrix_norm(alignment)
    torch.testing.assert_close(apply_alignment_map(delta, alignment), dense_c @ delta)


def test_safe_lora_projects_only_below_threshold():
    alignment = rand(20, 2, seed=1) @ rand(2, 10, seed=2)
    inside = alignment @ rand(10, 10, seed=4)  # column space of V: high similarity
    outside = rand(20, 10, seed=5)
    hi = safe_lora_project(inside, alignment, threshold=0.5)
    lo = safe_lora_project(outside, alignment, threshold=0.5)
    assert hi.similarity > 0.5 and not hi.gated and torch.equal(hi.delta, inside)
    assert lo.similarity < 0.5 and lo.gated
    torch.testing.assert_close(lo.delta, apply_alignment_map(outside, alignment))


def test_cosine_gated_merge():
    safety = rand(20, 2, seed=1) @ rand(2, 10, seed=2)
    delta = rand(20, 10, seed=5)
    gated = cosine_gated_merge(delta, safety, threshold=0.9, utility_weight=0.7, safety_weight=0.3)
    assert gated.gated
    torch.testing.assert_close(gated.delta, 0.7 * delta + 0.3 * safety)
    kept = cosine_gated_merge(delta, safety, threshold=-1.0)
    assert not kept.gated and torch.equal(kept.delta, delta)


def test_fisher_weighted_average_formula_and_limits():
    deltas = [rand(4, 3, seed=i) for i in range(3)]
    fishers = [rand(4, 3, seed=10 + i).abs() for i in range(3)]
    weights = [1.0, 2.0, 0.5]
    out = fisher_weighted_average(deltas, fishers, weights, floor=0.0)
    num = sum(w * f * d for w, f, d in zip(weights, fishers, deltas, strict=True))
    den = sum(w * f for w, f in zip(weights, fishers, strict=True))
    torch.testing.assert_close(out, num / den)
    # one model: its own delta; equal Fishers: the weighted average of deltas
    torch.testing.assert_close(fisher_weighted_average(deltas[:1], fishers[:1]), deltas[0])
    same = [fishers[0]] * 3
    torch.testing.assert_close(
        fisher_weighted_average(deltas, same, weights),
        sum(w * d for w, d in zip(weights, deltas, strict=True)) / sum(weights),
    )
    # a parameter no Fisher constrains falls back to the weighted average (relative floor)
    zero = [f.clone() for f in fishers]
    for f in zero:
        f[0, 0] = 0
    avg = sum(w * d[0, 0] for w, d in zip(weights, deltas, strict=True)) / sum(weights)
    assert float(fisher_weighted_average(deltas, zero, weights)[0, 0]) == pytest.approx(float(avg))
    # normalise: a Fisher scaled by 1000 no longer dominates
    scaled = [fishers[0] * 1000, fishers[1]]
    torch.testing.assert_close(
        fisher_weighted_average(deltas[:2], scaled, normalise=True),
        fisher_weighted_average(
            deltas[:2], [fishers[0] / fishers[0].mean(), fishers[1] / fishers[1].mean()]
        ),
    )


def test_fisher_merging_errors():
    d = rand(2, 2)
    with pytest.raises(FisherValidationError, match="2 deltas but 1 Fishers"):
        fisher_weighted_average([d, d], [d.abs()])
    with pytest.raises(FisherValidationError, match="negative"):
        fisher_weighted_average([d], [-d.abs()])
    with pytest.raises(FisherValidationError, match="shape"):
        fisher_weighted_average([d], [torch.ones(3, 3)])


def test_low_rank_factors_exact_for_low_rank_and_fallback_for_full_rank():
    low = rand(200, 5, seed=1) @ rand(5, 150, seed=2)
    left, right = low_rank_factors(low)
    assert right is not None and left.shape[1] <= 72
    torch.testing.assert_close(left @ right, low)
    full = rand(200, 150, seed=3)
    left, right = low_rank_factors(full)
    assert right is None and left is full
