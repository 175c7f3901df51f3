"""``benchmarks/_common.py``: interleaved rounds and per-round ratios (no timing involved)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import load_script

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield load_script(BENCHMARKS / "_common.py", "_common")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_interleaved_runs_every_key_once_per_round_in_round_robin_order(common):
    calls, logged = [], []

    def measure(key, round_index):
        calls.append((key, round_index))
        return f"{key}{round_index}"

    results = common.interleaved(
        ["svd", "lora", "kfac"], 3, measure, lambda r, res: logged.append((r, dict(res)))
    )
    assert calls == [(key, r) for r in range(3) for key in ("svd", "lora", "kfac")]
    assert results == {key: [f"{key}{r}" for r in range(3)] for key in ("svd", "lora", "kfac")}
    assert logged == [(r, {key: f"{key}{r}" for key in ("svd", "lora", "kfac")}) for r in range(3)]
    with pytest.raises(ValueError, match="at least one round"):
        common.interleaved(["svd"], 0, measure)


def test_ratios_are_taken_against_the_reference_of_the_same_round(common):
    assert common.round_ratios([2.0, 4.0, 9.0], [1.0, 4.0, 3.0]) == [2.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="2 values but 3"):
        common.round_ratios([1.0, 2.0], [1.0, 2.0, 3.0])


def test_summary_is_the_median_of_per_round_ratios_not_the_ratio_of_medians(common):
    # a load spike in round 2 slows both the reference and the method measured next to it
    results = {
        "ties": [{"seconds": 1.0, "cpu_seconds": 1.0}, {"seconds": 2.0, "cpu_seconds": 1.0},
                 {"seconds": 10.0, "cpu_seconds": 1.0}],
        "kfac": [{"seconds": 3.0, "cpu_seconds": 2.0}, {"seconds": 2.0, "cpu_seconds": 2.0},
                 {"seconds": 5.0, "cpu_seconds": 4.0}],
    }  # fmt: skip
    summary = common.summarise_rounds(results, "ties", clocks=("", "cpu_"))
    kfac = summary["kfac"]
    assert kfac["all_ratios"] == [3.0, 1.0, 0.5]
    assert kfac["ratio"] == 1.0  # the ratio of the medians would be 3.0 / 2.0
    assert kfac["seconds"] == 3.0 and kfac["all_seconds"] == [3.0, 2.0, 5.0]
    assert kfac["cpu_seconds"] == 2.0 and kfac["cpu_ratio"] == 2.0
    assert kfac["all_cpu_ratios"] == [2.0, 2.0, 4.0]
    assert summary["ties"]["ratio"] == 1.0 and summary["ties"]["all_ratios"] == [1.0] * 3
    without = common.summarise_rounds(results, None)
    assert without["kfac"]["ratio"] is None and without["kfac"]["all_ratios"] is None
    assert "cpu_seconds" not in without["kfac"]


def test_thread_environment_limits_every_pool_of_a_child(common, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    limited = common.thread_environment(1)
    assert {name: limited[name] for name in common.THREAD_VARIABLES} == dict.fromkeys(
        ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), "1"
    )
    assert common.thread_environment(None)["OMP_NUM_THREADS"] == "8"
