"""Uncertainty of the benchmark's rates: Wilson intervals and paired bootstrap differences.

* :func:`wilson_interval` — the 95 % Wilson score interval of a proportion ``k/n``:

      centre = (p + z²/2n) / (1 + z²/n),  half-width = z·√(p(1−p)/n + z²/4n²) / (1 + z²/n)

  with ``p = k/n`` and ``z = 1.959964`` (two-sided 95 %). Unlike ``p ± z·√(p(1−p)/n)`` it stays
  inside [0, 1] and does not collapse to a point at ``p ∈ {0, 1}``.
* :func:`paired_bootstrap` — the difference of two models' mean outcomes on the SAME items
  (``mean(a) − mean(b)``) with a percentile interval from ``n_resamples`` resamples of the items
  with replacement, each resample applied to both models (paired), seeded. For a difference of
  means of several item sets (e.g. refusal on harmful prompts, utility over two skills) each set
  is resampled on its own and the statistic combined as the caller's mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sst_merge_plugin.core.errors import SSTError

#: two-sided 95 % normal quantile
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % interval ``[low, high]``."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    def excludes_zero(self) -> bool:
        """Whether 0 lies outside ``[low, high]``."""
        return self.low > 0 or self.high < 0


def wilson_interval(successes: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of ``successes / n`` (module doc)."""
    if n <= 0 or not 0 <= successes <= n:
        raise SSTError(f"a proportion needs 0 <= successes <= n and n > 0, got {successes}/{n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # the interval holds p exactly (rounding put 1 − 1e-16 above p = 1 and 7e-18 below p = 0)
    return Interval(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def paired_bootstrap(
    first: Mapping[str, Sequence[float]],
    second: Mapping[str, Sequence[float]],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """``mean over sets of (mean(first[s]) − mean(second[s]))`` and its paired percentile
    interval (module doc). ``first`` and ``second`` map item-set names to per-item outcomes on
    the same items in the same order (e.g. ``{"reverse_letters": [1, 0, …], "uppercase": …}``).
    """
    if set(first) != set(second) or not first:
        raise SSTError(f"paired sets differ: {sorted(first)} vs {sorted(second)}")
    rng = np.random.default_rng(seed)
    estimate = 0.0
    resampled = np.zeros(n_resamples)
    for name in sorted(first):
        a = np.asarray(first[name], dtype=float)
        b = np.asarray(second[name], dtype=float)
        if a.shape != b.shape or a.ndim != 1 or a.size == 0:
            raise SSTError(f"{name}: paired outcomes need one equal, non-empty length")
        difference = a - b
        estimate += float(difference.mean())
        indices = rng.integers(0, difference.size, size=(n_resamples, difference.size))
        resampled += difference[indices].mean(axis=1)
    count = len(first)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(resampled / count, [tail, 100 - tail])
    return Interval(estimate / count, float(low), float(high))
