"""``benchmarks/cost_at_scale.py``: the ``--quick`` run's JSON and its extrapolation arithmetic."""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import load_script

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "cost_at_scale.py"
KFAC_METHODS = ("kfac_dense", "kfac_topk")


@pytest.fixture(scope="module")
def cost_at_scale():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield load_script(SCRIPT, "cost_at_scale")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def quick_run(cost_at_scale, tmp_path_factory):
    """The ``--quick`` run through the script's ``main`` (in this process, to save a start-up)."""
    out = tmp_path_factory.mktemp("cost_at_scale") / "quick.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cost_at_scale.main(["--quick", "--json", str(out)]) == 0
    return json.loads(out.read_text()), stdout.getvalue()


def test_quick_fisher_rows_are_side_by_side_measurements(quick_run):
    report, stdout = quick_run
    fisher = report["fisher"]
    assert "tiny Llama" in fisher["model"]
    assert fisher["n_tokens"] == fisher["n_batches"] * fisher["batch_size"] * fisher["seq_len"]
    rows = {row["method"]: row for row in fisher["rows"]}
    assert list(rows) == ["fwd+bwd", "fwd+bwd frozen", "diag", "kfac", "lora"]
    reference = rows["fwd+bwd"]["all_seconds"]
    for row in rows.values():
        assert len(row["all_seconds"]) == fisher["repeats"] == 2
        assert row["seconds"] == pytest.approx(statistics.median(row["all_seconds"]))
        assert row["tokens_per_s"] == pytest.approx(fisher["n_tokens"] / row["seconds"])
        per_round = [t / ref for t, ref in zip(row["all_seconds"], reference, strict=True)]
        assert row["all_ratios"] == pytest.approx(per_round)  # each round's own reference
        assert row["ratio"] == pytest.approx(statistics.median(per_round))
    for kind in ("diag", "kfac", "lora"):  # the written file matches the on-paper size
        assert rows[kind]["file_MiB"] == pytest.approx(rows[kind]["file_MiB_on_paper"], rel=0.1)
    assert "## Fisher collection throughput" in stdout


def test_quick_extrapolation_is_the_sum_of_unit_measurements(quick_run):
    report, stdout = quick_run
    projection = report["projection"]
    units = projection["units"]
    model = projection["models"]["tiny"]
    layers = model["n_layers"]
    assert model["n_weights"] == 7 * layers == 14
    shapes = model["weight_shapes"]
    assert shapes["k_proj"] == [32, 64] and shapes["down_proj"] == [64, 176]
    svd_total = model["methods"]["svd"]["seconds_per_merge"]
    for method, record in model["methods"].items():
        counts = record["counts"]
        assert sum(counts.values()) == model["n_weights"]
        assert record["complete"] and record["missing_units"] == []
        total = sum(count * units[key]["seconds"] for key, count in counts.items())
        assert record["seconds_per_merge"] == pytest.approx(total, rel=1e-12)
        assert record["ratio_to_svd"] == pytest.approx(total / svd_total, rel=1e-12)
        assert record["peak_mb"] >= max(units[key]["peak_mb"] for key in counts)
        for key in counts:
            assert key.split("/")[1] == method
            assert units[key]["seconds"] > 0
    for method in KFAC_METHODS:  # A shared by q/k/v and gate/up: solved once per group
        record = model["methods"][method]
        cached = {key: n for key, n in record["counts"].items() if key.endswith("/input-cached")}
        assert cached == {f"32x64/{method}/input-cached": 2 * layers,
                          f"176x64/{method}/input-cached": layers}  # fmt: skip
        assert record["counts"][f"64x64/{method}"] == 2 * layers  # q and o
        assert (record["cache_misses"], record["cache_hits"]) == ((7 + 4) * layers, 3 * layers)
        for key in cached:
            assert (units[key]["hits"], units[key]["misses"]) == (1, 1)
        held = record["cache_held_max_mb"]
        assert 0 < held <= sum(e["bytes"] for k in record["counts"] for e in units[k]["solved"])
    lora = model["methods"]["lora"]
    assert (lora["cache_misses"], lora["cache_hits"]) == (2 * 7 * layers, 0)
    assert model["methods"]["diag"]["cache_misses"] == 0
    assert "### tiny Llama" in stdout and "projection s / merge" in stdout


def test_replay_arithmetic_and_lru_eviction(cost_at_scale):
    weights = {
        "model.layers.0.self_attn.q_proj.weight": (4, 4),
        "model.layers.0.self_attn.k_proj.weight": (2, 4),
    }
    mib = 2**20
    units = {
        "4x4/kfac_dense": {"seconds": 1.0, "peak_mb": 10.0, "hits": 0, "misses": 2,
                           "solved": [{"dim": 4, "bytes": 1 * mib}, {"dim": 4, "bytes": 2 * mib}]},
        "2x4/kfac_dense/input-cached": {"seconds": 0.5, "peak_mb": 8.0, "hits": 1, "misses": 1,
                                        "solved": [{"dim": 2, "bytes": mib // 2}]},
    }  # fmt: skip
    replay = cost_at_scale.replay_merge(weights, "kfac_dense", 64, units)
    assert replay["seconds_per_merge"] == 1.5
    assert replay["peak_mb"] == 3.0 + 8.0  # k runs with q's G (1) and the shared A (2) held
    assert replay["cache_held_max_mb"] == 3.0
    assert (replay["cache_misses"], replay["cache_hits"]) == (3, 1)
    # a cache of one entry loses A when k's G is inserted: k is solved cold
    plan = cost_at_scale.replay_merge(weights, "kfac_dense", 1)
    assert plan["counts"] == {"4x4/kfac_dense": 1, "2x4/kfac_dense": 1}
    # a missing measurement makes the total incomplete instead of silently smaller
    units["2x4/kfac_dense/input-cached"] = {"seconds": None, "skipped": "dim > cap"}
    partial = cost_at_scale.replay_merge(weights, "kfac_dense", 64, units)
    assert partial["seconds_per_merge"] is None and not partial["complete"]
    assert partial["seconds_measured_part"] == 1.0 and partial["weights_missing"] == 1


def test_child_process_measures_a_cached_input_unit(tmp_path, cost_at_scale):
    path = tmp_path / "inputs.safetensors"
    cost_at_scale.build_inputs(48, 200, path, seed=0)
    spec = {"method": "kfac_topk", "path": str(path), "repeats": 1, "device": "cpu",
            "input_cached": True}  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--child", json.dumps(spec), "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (record["hits"], record["misses"]) == (1, 1)
    assert [entry["dim"] for entry in record["solved"]] == [48]  # only G was solved
    assert record["seconds"] > 0 and record["peak_device_extra_mb"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_request_without_cuda_fails_clearly(cost_at_scale, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cost_at_scale.main(["--device", "cuda", "--quick"])
    assert exit_info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err
