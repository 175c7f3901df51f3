"""The protocol's knob grids, knob application and selection rule."""

from __future__ import annotations

import pytest

from sst_merge_plugin.bench.tuning import (
    Scores,
    SelectionRule,
    apply_knobs,
    grid_points,
)
from sst_merge_plugin.core.errors import SSTError

CONFIG = {
    "merge_method": "task_arithmetic",
    "base_model": "/base",
    "parameters": {"normalize": False},
    "models": [
        {"model": "/base+/adapters/safety", "parameters": {"weight": 1.0}},
        {"model": "/base+/adapters/upper", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "/base+/adapters/rev"},
    ],
}


def is_safety(entry: dict) -> bool:
    return entry["model"].endswith("/safety")


def test_grid_points_are_the_product_in_key_order() -> None:
    points = grid_points({"utility_weight": (0.5, 1.0), "safety_weight": (1, 2, 3)})
    assert points[:4] == [
        {"utility_weight": 0.5, "safety_weight": 1},
        {"utility_weight": 0.5, "safety_weight": 2},
        {"utility_weight": 0.5, "safety_weight": 3},
        {"utility_weight": 1.0, "safety_weight": 1},
    ]
    assert len(points) == 6 and grid_points({}) == [{}]
    with pytest.raises(SSTError, match="no values"):
        grid_points({"scale": ()})


def test_apply_knobs_sets_weights_density_and_shared_parameters() -> None:
    out = apply_knobs(
        CONFIG,
        {"safety_weight": 2.0, "utility_weight": 0.5, "density": 0.7, "lambda": 1.2},
        is_safety,
    )
    weights = [entry["parameters"]["weight"] for entry in out["models"]]
    assert weights == [2.0, 0.5, 0.5]
    assert [entry["parameters"]["density"] for entry in out["models"]] == [0.7] * 3
    assert out["parameters"] == {"normalize": False, "lambda": 1.2}
    assert CONFIG["models"][0]["parameters"] == {"weight": 1.0}  # the input is not changed
    with pytest.raises(SSTError, match="exactly one safety input"):
        apply_knobs(CONFIG, {"utility_weight": 2.0}, lambda entry: True)
    with pytest.raises(SSTError, match="exactly one safety input"):
        apply_knobs(CONFIG, {"safety_weight": 2.0}, lambda entry: False)
    utilities = apply_knobs(CONFIG, {"utility_weight": 0.5}, lambda entry: False)
    assert [entry["parameters"]["weight"] for entry in utilities["models"]] == [0.5] * 3


def test_rule_prefers_utility_within_the_constraints() -> None:
    rule = SelectionRule()
    points = [
        Scores(0.95, 0.04, 0.60),
        Scores(0.99, 0.02, 0.70),  # feasible, best utility
        Scores(1.00, 0.20, 0.90),  # too much over-refusal
        Scores(0.80, 0.00, 0.95),  # too little refusal
        Scores(0.92, 0.01, 0.70),  # same utility, less over-refusal: wins the tie
    ]
    chosen = rule.choose(points, base_over_refusal=0.01)
    assert (chosen.index, chosen.feasible) == (4, True)
    assert rule.choose(points[:4], base_over_refusal=0.01).index == 1
    # the margin is relative to the base model's over-refusal
    assert rule.choose([Scores(0.9, 0.10, 0.5)], base_over_refusal=0.05).feasible
    assert not rule.choose([Scores(0.9, 0.11, 0.5)], base_over_refusal=0.05).feasible


def test_rule_falls_back_to_the_sum_and_grid_order() -> None:
    rule = SelectionRule()
    points = [Scores(0.5, 0.3, 0.6), Scores(0.8, 0.5, 0.6), Scores(0.6, 0.2, 0.4)]
    chosen = rule.choose(points, base_over_refusal=0.0)
    assert (chosen.index, chosen.feasible) == (1, False)  # sums 0.8, 0.9, 0.8
    assert "highest refusal - over-refusal + utility" in chosen.reason
    tie = [Scores(0.5, 0.0, 0.5), Scores(0.6, 0.1, 0.5)]
    assert rule.choose(tie, base_over_refusal=0.0).index == 0
    with pytest.raises(SSTError, match="no points"):
        rule.choose([], base_over_refusal=0.0)


def test_drift_rule_asks_for_the_base_models_own_refusal() -> None:
    """``refusal_vs_base``: the bar is the base model's validation refusal (+ the offset), not
    ``min_refusal``; the default rule's dict and reasons are unchanged."""
    rule = SelectionRule(over_refusal_margin=0.03, refusal_vs_base=0.0)
    points = [
        Scores(0.70, 0.30, 0.80),  # below the base's 0.75
        Scores(0.75, 0.33, 0.60),  # at the base's refusal, over-refusal at base + 0.03
        Scores(0.85, 0.34, 0.90),  # over-refusal above base + 0.03
    ]
    chosen = rule.choose(points, base_over_refusal=0.30, base_refusal=0.75)
    assert (chosen.index, chosen.feasible) == (1, True)
    assert "refusal >= 0.750 (base)" in chosen.reason
    assert rule.choose(points, 0.30, base_refusal=0.70).index == 0  # a lower bar
    assert SelectionRule(refusal_vs_base=0.05).refusal_bar(0.7) == pytest.approx(0.75)
    with pytest.raises(SSTError, match="needs the base model's refusal"):
        rule.choose(points, base_over_refusal=0.30)
    assert rule.as_dict() == {
        "min_refusal": 0.9,
        "over_refusal_margin": 0.03,
        "refusal_vs_base": 0.0,
    }
    assert SelectionRule().as_dict() == {"min_refusal": 0.9, "over_refusal_margin": 0.05}
    assert "refusal >= 0.9 and" in SelectionRule().choose(points, 0.30).reason


def test_headline_is_chosen_among_merges_of_every_adapter() -> None:
    """The full profile's first protocol run made ``safety_alone_sst`` (the safety adapter
    alone, projected; refusal 1.00, over-refusal 0.05, utility 0) the headline because it met
    the rule at zero utility: the headline is chosen among the SST-Merge sweeps that merge every
    adapter, here the dual (higher fallback score than the safety-side variant)."""
    from sst_merge_plugin.bench.pipeline import BenchmarkRun, TunedMethod
    from sst_merge_plugin.bench.profile import FULL
    from sst_merge_plugin.bench.report import bootstrap_rows, headline
    from sst_merge_plugin.bench.tuning import Chosen

    def record(refusal: float, over: float, utility: float) -> dict:
        metrics = {"harmful_refusal": refusal, "benign_over_refusal": over,
                   "utility_mean": utility, "items": {}}  # fmt: skip
        return {"metrics": metrics}

    sweeps = {sweep.label: sweep for sweep in FULL.sweeps}
    scores = {"sst_lora_soft": (0.98, 0.33, 0.64), "sst_dual_lora_rho": (0.71, 0.05, 0.64),
              "safety_alone_sst": (1.0, 0.05, 0.0)}  # fmt: skip
    base = record(0.05, 0.0, 0.0)
    run = BenchmarkRun(FULL, base, base)
    for label, point in scores.items():
        chosen = Chosen(0, label == "safety_alone_sst", "test")
        run.methods.append(TunedMethod(sweeps[label], [record(*point)], chosen, record(*point)))
    assert headline(run) is run.methods[1]
    assert [row["baseline"] for row in bootstrap_rows(run)] == ["sst_lora_soft", "safety_alone_sst"]
    run.methods = run.methods[2:]
    assert headline(run) is None
