"""Wilson intervals against scipy's, and the paired bootstrap against its known limits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.stats import paired_bootstrap, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(0, 32), (1, 32), (16, 32), (31, 32), (32, 32), (143, 159)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    reference = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    interval = wilson_interval(k, n)
    assert interval.estimate == k / n
    assert interval.low == pytest.approx(reference.low, abs=1e-12)
    assert interval.high == pytest.approx(reference.high, abs=1e-12)


def test_wilson_holds_its_estimate_exactly() -> None:
    """Every interval contains its estimate, and 0/n and n/n end exactly at 0 and 1 (a float
    rounding of 1 − 1e-16 once made a negative error bar and crashed the Pareto plot)."""
    for n in range(1, 401):
        assert wilson_interval(0, n).low == 0.0 and wilson_interval(n, n).high == 1.0
        for k in range(n + 1):
            interval = wilson_interval(k, n)
            assert interval.low <= interval.estimate <= interval.high, (k, n)


def test_wilson_rejects_impossible_counts() -> None:
    for k, n in ((3, 2), (-1, 4), (0, 0)):
        with pytest.raises(SSTError, match="proportion"):
            wilson_interval(k, n)


def test_paired_bootstrap_is_exact_where_the_answer_is_known() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 300).astype(float)
    same = paired_bootstrap({"x": a}, {"x": a})  # identical outcomes: no spread at all
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    flipped = 1 - a  # a − (1 − a) = 2a − 1 per item
    shifted = paired_bootstrap({"x": a}, {"x": flipped}, n_resamples=20_000)
    d = 2 * a - 1
    assert shifted.estimate == pytest.approx(d.mean())
    se = d.std(ddof=1) / np.sqrt(d.size)  # normal approximation of the mean difference
    assert shifted.low == pytest.approx(d.mean() - 1.96 * se, abs=0.15 * se + 1e-3)
    assert shifted.high == pytest.approx(d.mean() + 1.96 * se, abs=0.15 * se + 1e-3)
    assert shifted.excludes_zero() == (abs(d.mean()) > 2.5 * se)


def test_paired_bootstrap_pairs_items_and_averages_sets() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=200)
    # a large common per-item effect cancels in pairs: a tight interval around 0.1
    paired = paired_bootstrap({"s": base + 0.1}, {"s": base}, n_resamples=2000)
    assert paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    two = paired_bootstrap(
        {"a": [1.0] * 10, "b": [0.0] * 20}, {"a": [0.0] * 10, "b": [0.0] * 20}, n_resamples=500
    )
    assert two.estimate == pytest.approx(0.5)  # the mean over sets, not over pooled items
    with pytest.raises(SSTError, match="paired sets differ"):
        paired_bootstrap({"a": [1.0]}, {"b": [1.0]})
    with pytest.raises(SSTError, match="equal, non-empty length"):
        paired_bootstrap({"a": [1.0, 0.0]}, {"a": [1.0]})
