"""``benchmarks/interference``: the pipeline's FusionBench merge host (TSV on the tiny world) and
the benchmark script under the validation/test protocol.

TSV-M reference (independent of FusionBench): each input's task vector is ``Δᵢ = (alpha/r)·BᵢAᵢ``
(rank ≤ r); TSV keeps the top ``min(m, n) / T`` ≥ r singular triplets of each, orthogonalises
the stacked left and right singular vectors and keeps the singular values, so the merged ``Δ``
has exactly the inputs' non-zero singular values, computed here from the adapter files in
float64; every weight no adapter touches is the base's, bit for bit.

The script: normalised accuracy and its paired bootstrap interval (against the Wilson interval
where they must agree), rows / tables / plot from synthetic records whose expected numbers are
worked out by hand, the profiles (the main benchmark's safety adapter and skill specs, the two
splits), the same grid budget for every method (and what each point sets in the merge
configuration), the command line, and an end-to-end run on the tiny world whose chosen points
are checked against the rule applied to the recorded validation sweeps.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from support import load_script
from test_fusion_bench_world import ADAPTERS, World
from test_fusion_bench_world import world as world  # the fixture

from sst_merge_plugin.bench import fusion_merge
from sst_merge_plugin.bench.fusion_merge import TSV, fusion_bench_config, run_fusion_merge
from sst_merge_plugin.bench.pipeline import BenchmarkRun, Pipeline, TunedMethod
from sst_merge_plugin.bench.profile import FULL, AdapterSpec, FisherSettings, Profile, Sweep
from sst_merge_plugin.bench.prompts import TrainingPrompts
from sst_merge_plugin.bench.training import LoRATrainingConfig
from sst_merge_plugin.bench.tuning import Chosen
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.stats import wilson_interval
from sst_merge_plugin.evaluation.suite import EvalConfig

TSV_SWEEP = Sweep("tsv", TSV)


@pytest.fixture(scope="module")
def interference() -> ModuleType:
    """``benchmarks/interference/run.py`` as a module."""
    return load_script("benchmarks/interference/run.py", "interference_run")


def _adapters(world: World) -> dict[str, Path]:
    return {name: world.adapter(name) for name in ADAPTERS}


def _tsv_config(world: World) -> dict:
    return fusion_bench_config(TSV_SWEEP, {}, world.base, _adapters(world))


def _lora_deltas(adapter: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """``(r, {weight name: (alpha/r)·B·A in float64})`` of a PEFT adapter folder."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    deltas = {}
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            if ".lora_A." in key:
                name = key.removeprefix("base_model.model.").replace(".lora_A.", ".")
                lora_b = handle.get_tensor(key.replace(".lora_A.", ".lora_B.")).double()
                deltas[name] = scale * lora_b @ handle.get_tensor(key).double()
    return config["r"], deltas


def _tsv_singular_values(
    inputs: dict[str, tuple[int, dict[str, torch.Tensor]]],
    name: str,
    weights: dict[str, float] | None = None,
) -> torch.Tensor:
    """The TSV-M reference for weight ``name``: every input's top-r singular values of its
    ``(alpha/r)·B·A``, times that input's weight (default 1), in descending order."""
    weights = weights or {}
    values = [
        weights.get(adapter, 1.0) * torch.linalg.svdvals(deltas[name])[:r]
        for adapter, (r, deltas) in inputs.items()
    ]
    return torch.cat(values).sort(descending=True).values


@pytest.fixture(scope="module")
def tsv_merged(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tsv") / "merged"
    torch.set_num_threads(1)
    assert run_fusion_merge(_tsv_config(world), out, "cpu", quiet=True) > 0
    return out


# ---- the FusionBench host: TSV -------------------------------------------------------------


def test_tsv_keeps_every_input_singular_value_and_nothing_else(
    world: World, tsv_merged: Path
) -> None:
    merged = load_file(tsv_merged / "model.safetensors")
    base = load_file(world.base / "model.safetensors")
    inputs = {name: _lora_deltas(world.adapter(name)) for name in ADAPTERS}
    assert merged.keys() == base.keys()
    touched = inputs["safety"][1].keys()
    assert len(touched) == 14
    for name in base:
        if name not in touched:  # embeddings and norms
            assert torch.equal(merged[name], base[name]), name
            continue
        delta = merged[name].double() - base[name].double()
        expected = _tsv_singular_values(inputs, name)
        got = torch.linalg.svdvals(delta)
        torch.testing.assert_close(got[: len(expected)], expected, rtol=1e-4, atol=1e-5)
        assert float(got[len(expected) :].abs().max()) < 1e-5, name
        task_arithmetic = sum(d[name] for _, d in inputs.values())
        assert float((delta - task_arithmetic).abs().max()) > 1e-3, name  # TSV is not TA


def test_tsv_folder_reloads_with_transformers(world: World, tsv_merged: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert [path.name for path in tsv_merged.parent.iterdir()] == ["merged"]  # no temporaries
    model = AutoModelForCausalLM.from_pretrained(tsv_merged, dtype=torch.float32)
    stored = load_file(tsv_merged / "model.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, stored.get(name, stored["model.embed_tokens.weight"])), name
    text = "how to make a cake"
    assert (
        AutoTokenizer.from_pretrained(tsv_merged)(text)["input_ids"]
        == AutoTokenizer.from_pretrained(world.base)(text)["input_ids"]
    )


def _tokenizer_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the pool's tokenizer fail to load: the merge fails after the weights were saved."""
    make_pool = fusion_merge.model_pool

    def broken_pool(config):
        pool = make_pool(config)

        def no_tokenizer():
            raise OSError("disk full")

        pool.load_tokenizer = no_tokenizer
        return pool

    monkeypatch.setattr(fusion_merge, "model_pool", broken_pool)


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        ("missing adapter", SSTError, r"has no adapter_config\.json"),
        ("unknown algorithm", SSTError, "cannot instantiate the FusionBench algorithm"),
        ("failed save", OSError, "disk full"),
    ],
)
def test_a_failed_merge_leaves_no_folder(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    breakage: str,
    error: type[Exception],
    message: str,
) -> None:
    config = _tsv_config(world)
    if breakage == "missing adapter":  # fails while the pool is loaded, after two models
        config["models"]["uppercase"] = str(world.root / "no-such-adapter")
    elif breakage == "unknown algorithm":
        config["algorithm"]["_target_"] = "fusion_bench.method.NoSuchMerging"
    else:
        _tokenizer_fails(monkeypatch)
    out = tmp_path / "runs" / "merged"
    with pytest.raises(error, match=message):
        run_fusion_merge(config, out, "cpu", quiet=True)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_fusion_bench_config_puts_the_knob_into_the_algorithm(world: World) -> None:
    sweep = Sweep("tsv", TSV, {"alpha": (0.5, 1.0)}, {"exclude_keys": ["lm_head.weight"]})
    config = fusion_bench_config(sweep, {"alpha": 0.5}, world.base, _adapters(world))
    assert config == {
        "host": "fusion_bench",
        "algorithm": {
            "_target_": "fusion_bench.method.TaskSingularVectorMerging",
            "exclude_keys": ["lm_head.weight"],
            "alpha": 0.5,
        },
        "base_model": str(world.base),
        "models": {name: str(world.adapter(name)) for name in ADAPTERS},
        "dtype": "float32",
    }
    json.dumps(config)  # part of the row's content key


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (Sweep("tsv", TSV, {"density": (0.5,)}), "no per-model density"),
        (Sweep("tsv", TSV, fisher_kind="lora"), "Fisher file"),
        (Sweep("tsv", "fusion_bench:"), "'fusion_bench:<class path>'"),
    ],
)
def test_fusion_bench_config_rejects_what_the_host_cannot_do(
    world: World, sweep: Sweep, message: str
) -> None:
    with pytest.raises(SSTError, match=message):
        fusion_bench_config(sweep, sweep.points()[0], world.base, _adapters(world))


def test_fusion_bench_config_weights_the_safety_adapter(world: World) -> None:
    sweep = Sweep("tsv", TSV, {"safety_weight": (1.0, 2.0), "utility_weight": (1.0, 0.5)})
    adapters = _adapters(world)
    unweighted = {"safety_weight": 1.0, "utility_weight": 1.0}
    assert fusion_bench_config(sweep, unweighted, world.base, adapters) == _tsv_config(world)
    weighted = fusion_bench_config(sweep, {"safety_weight": 2.0}, world.base, adapters)
    assert weighted == {**_tsv_config(world), "weights": {"safety": 2.0}}
    entries = fusion_merge.model_pool(weighted)._models
    assert entries["safety"]["adapter_weight"] == 2.0
    assert all("adapter_weight" not in entries[name] for name in ADAPTERS if name != "safety")
    without_safety = {name: path for name, path in adapters.items() if name != "safety"}
    with pytest.raises(SSTError, match="safety_weight needs a 'safety' adapter"):
        fusion_bench_config(sweep, {"safety_weight": 2.0}, world.base, without_safety)
    experts = {"safety_weight": 1.0, "utility_weight": 0.5}
    assert fusion_bench_config(sweep, experts, world.base, adapters)["weights"] == {
        "reverse_letters": 0.5,
        "uppercase": 0.5,
    }


def test_tsv_with_a_safety_weight_scales_that_input_singular_values(
    world: World, tmp_path: Path
) -> None:
    sweep = Sweep("tsv", TSV, {"safety_weight": (2.0,)})
    config = fusion_bench_config(sweep, {"safety_weight": 2.0}, world.base, _adapters(world))
    run_fusion_merge(config, tmp_path / "merged", "cpu", quiet=True)
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    base = load_file(world.base / "model.safetensors")
    inputs = {name: _lora_deltas(world.adapter(name)) for name in ADAPTERS}
    for name in inputs["safety"][1]:
        expected = _tsv_singular_values(inputs, name, {"safety": 2.0})
        got = torch.linalg.svdvals(merged[name].double() - base[name].double())
        torch.testing.assert_close(got[: len(expected)], expected, rtol=1e-4, atol=1e-5)


def test_run_fusion_merge_rejects_a_mergekit_configuration(tmp_path: Path) -> None:
    with pytest.raises(SSTError, match="not a FusionBench job configuration"):
        run_fusion_merge({"merge_method": "ties"}, tmp_path / "out", "cpu")


def _world_pipeline(
    world: World, workspace: Path, monkeypatch: pytest.MonkeyPatch, sweeps: tuple[Sweep, ...]
) -> Pipeline:
    """A pipeline of ``sweeps`` over the world's three adapters, which stand in for trained ones
    (training is tested in test_bench_pipeline)."""
    training = LoRATrainingConfig(rank=4, alpha=8.0, steps=1)
    specs = tuple(
        AdapterSpec(name, None if name == "safety" else name, 1, training) for name in ADAPTERS
    )
    profile = Profile(
        "tiny", specs, FisherSettings(), EvalConfig(), EvalConfig(), sweeps, single_adapters=False
    )
    pipeline = Pipeline(
        profile,
        workspace,
        model_dir=world.base,
        prompts=TrainingPrompts((), (), ()),
        progress=False,
    )
    monkeypatch.setattr(pipeline.adapters, "folder", lambda spec: world.adapter(spec.name))
    return pipeline


def test_pipeline_dispatches_fusion_bench_sweeps(
    world: World, tsv_merged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    utilities = Sweep("tsv_utilities", TSV, inputs="utilities")
    pipeline = _world_pipeline(world, tmp_path / "workspace", monkeypatch, (TSV_SWEEP, utilities))
    jobs = [job for sweep in (TSV_SWEEP, utilities) for job in pipeline.merges.sweep_jobs(sweep)]
    assert [job.config["host"] for job in jobs] == ["fusion_bench", "fusion_bench"]
    assert list(jobs[0].config["models"]) == list(ADAPTERS)
    assert list(jobs[1].config["models"]) == [name for name in ADAPTERS if name != "safety"]
    assert pipeline.merges.run(jobs[0], tmp_path / "merged") > 0
    produced = load_file(tmp_path / "merged" / "model.safetensors")
    reference = load_file(tsv_merged / "model.safetensors")
    assert all(torch.equal(produced[name], reference[name]) for name in reference)


def test_pipeline_weights_every_expert_on_both_hosts(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = {"safety_weight": (2.0,), "utility_weight": (0.25,)}
    sweeps = (Sweep("ta", "task_arithmetic", grid), Sweep("tsv", TSV, grid))
    pipeline = _world_pipeline(world, tmp_path / "ws", monkeypatch, sweeps)
    mergekit_config, fusion_config = (pipeline.merges.sweep_jobs(s)[0].config for s in sweeps)
    weights = [model["parameters"]["weight"] for model in mergekit_config["models"]]
    assert weights == [2.0 if name == "safety" else 0.25 for name in ADAPTERS]
    assert fusion_config["weights"] == {
        name: (2.0 if name == "safety" else 0.25) for name in ADAPTERS
    }


# ---- the benchmark script: normalised accuracy ---------------------------------------------


def test_normalized_accuracy_leaves_out_skills_whose_expert_scores_zero(
    interference: ModuleType,
) -> None:
    alone = {"a": 0.8, "b": 0.5, "c": 0.0, "unused": 0.9}
    mean, ratios = interference.normalized_accuracy({"a": 0.6, "b": 1.0, "c": 0.25}, alone)
    assert ratios == {"a": pytest.approx(0.75), "b": 2.0, "c": None}
    assert mean == pytest.approx(1.375)
    assert interference.normalized_accuracy({"c": 0.5}, alone) == (None, {"c": None})


def _outcomes(correct: int, n: int) -> list[float]:
    return [1.0] * correct + [0.0] * (n - correct)


def test_normalized_interval_is_paired_and_matches_wilson_for_a_perfect_expert(
    interference: ModuleType,
) -> None:
    # the same outcomes for both models: the ratio is 1 in every resample (paired items)
    same = {"a": _outcomes(5, 8), "b": [0.0, 1.0, 1.0, 0.0]}
    assert interference.normalized_interval(same, same).as_dict() == {
        "estimate": 1.0,
        "low": 1.0,
        "high": 1.0,
    }
    # an expert right on every item: the ratio is the merged accuracy, whose 95 % interval on
    # 400 items the Wilson interval (0.451, 0.549) approximates to well within 0.01
    interval = interference.normalized_interval({"a": _outcomes(200, 400)}, {"a": [1.0] * 400})
    wilson = wilson_interval(200, 400)
    assert interval.estimate == 0.5
    assert interval.low == pytest.approx(wilson.low, abs=0.01)
    assert interval.high == pytest.approx(wilson.high, abs=0.01)
    assert (round(wilson.low, 3), round(wilson.high, 3)) == (0.451, 0.549)


def test_normalized_interval_follows_the_estimate_definition(interference: ModuleType) -> None:
    merged = {"a": _outcomes(3, 8), "z": [1.0, 1.0], "b": _outcomes(4, 6)}
    alone = {"a": _outcomes(6, 8), "z": [0.0, 0.0], "b": _outcomes(6, 6)}
    interval = interference.normalized_interval(merged, alone, n_resamples=2000, seed=3)
    assert interval.estimate == pytest.approx((3 / 6 + 4 / 6) / 2)  # z has no ratio
    assert interval.low < interval.estimate < interval.high
    # z (expert at 0) is left out of the resamples too
    without_z = {name: merged[name] for name in ("a", "b")}
    assert interference.normalized_interval(without_z, alone, n_resamples=2000, seed=3) == interval
    assert interference.normalized_interval({"z": [1.0]}, {"z": [0.0]}) is None
    with pytest.raises(SSTError, match="one equal length"):
        interference.normalized_interval({"a": [1.0, 0.0]}, {"a": [1.0]})


# ---- rows, tables and plot from synthetic records ------------------------------------------


def _record(
    method: str,
    knob: dict | None,
    harmful: list[float],
    benign: list[float],
    utility: dict[str, list[float]],
    seconds: float | None = 2.0,
) -> dict:
    """An evaluation record as :class:`~sst_merge_plugin.bench.scoring.Scoring` writes it."""
    accuracy = {name: sum(items) / len(items) for name, items in utility.items()}
    return {
        "method": method,
        "knob": knob,
        "config": None,
        "merge_seconds": seconds,
        "sst_summary": None,
        "metrics": {
            "harmful_refusal": sum(harmful) / len(harmful),
            "benign_over_refusal": sum(benign) / len(benign),
            "utility": accuracy,
            "utility_mean": sum(accuracy.values()) / len(accuracy) if accuracy else None,
            "n_harmful": len(harmful),
            "n_benign": len(benign),
            "n_utility": {name: len(items) for name, items in utility.items()},
            "items": {
                "harmful": [{"response": "", "refused": bool(x)} for x in harmful],
                "benign": [{"response": "", "refused": bool(x)} for x in benign],
                "utility": {name: [bool(x) for x in items] for name, items in utility.items()},
                "mmlu": [],
            },
        },
    }


SKILL_A, SKILL_B = "reverse_letters", "uppercase"


def _synthetic_run(interference: ModuleType) -> tuple[BenchmarkRun, dict[str, dict]]:
    """N = 2: task arithmetic (no point met the rule) and SST-Merge (its second point did)."""
    sweeps = [s for s in interference.SWEEPS if s.label in ("task_arithmetic", "sst_merge")]
    profile = interference.interference_profile(2, sweeps)
    o, ones, zeros = _outcomes, [1.0] * 8, [0.0] * 8

    def skills(a: list[float], b: list[float]) -> dict[str, list[float]]:
        return {SKILL_A: a, SKILL_B: b}

    base_val = _record("base", None, zeros, zeros, skills(zeros, o(2, 8)), None)
    base_test = _record("base", None, zeros, zeros, skills(zeros, o(4, 8)), None)
    ta = [{"utility_weight": 0.25, "safety_weight": 1.0}, {"utility_weight": 1, "safety_weight": 2}]
    ta_val = [
        _record("task_arithmetic", ta[0], o(4, 8), zeros, skills(ones, ones)),
        _record("task_arithmetic", ta[1], o(6, 8), o(2, 8), skills(ones, zeros)),
    ]
    ta_test = _record("task_arithmetic", ta[0], o(4, 8), zeros, skills(o(6, 8), o(2, 8)))
    sst = [{"utility_weight": 0.5, "scale": 1.5}, {"utility_weight": 0.5, "scale": 3.0}]
    sst_val = [
        _record("sst_merge", sst[0], o(2, 8), zeros, skills(ones, ones)),
        _record("sst_merge", sst[1], ones, zeros, skills(ones, o(4, 8))),
    ]
    sst_test = _record("sst_merge", sst[1], ones, o(1, 8), skills(ones, o(3, 8)), 5.0)
    safety = _record("safety alone", None, ones, o(1, 8), skills(zeros, zeros), 1.0)
    run = BenchmarkRun(profile, base_val, base_test, [base_test, safety])
    run.methods = [
        TunedMethod(sweeps[0], ta_val, Chosen(0, False, "no point met it"), ta_test),
        TunedMethod(sweeps[1], sst_val, Chosen(1, True, "highest utility"), sst_test),
    ]
    experts = {
        SKILL_A: _record(f"{SKILL_A} alone", None, [0.0], [0.0], {SKILL_A: ones}),
        SKILL_B: _record(f"{SKILL_B} alone", None, [0.0], [0.0], {SKILL_B: o(4, 8)}),
    }
    return run, experts


def test_rows_tables_and_plot(interference: ModuleType, tmp_path: Path) -> None:
    run, experts = _synthetic_run(interference)
    rows = interference.n_rows(2, run, experts)
    assert [(r["method"], r["feasible"]) for r in rows] == [
        ("base", None),
        ("safety alone", None),
        ("task_arithmetic", False),
        ("sst_merge", True),
    ]
    base, safety, ta, sst = rows
    assert base["validation"]["utility_mean"] == 0.125 and safety["validation"] is None
    # the chosen knob and its validation scores come from the rule's index
    assert ta["knob"] == {"utility_weight": 0.25, "safety_weight": 1.0}
    assert sst["knob"] == {"utility_weight": 0.5, "scale": 3.0}
    assert (sst["validation"]["harmful_refusal"], sst["validation"]["utility_mean"]) == (1.0, 0.75)
    assert ta["reason"] == "no point met it" and sst["merge_method"] == "sst_merge"
    # normalised accuracy: (6/8 ÷ 1 + 2/8 ÷ 4/8) / 2 and (1 + 3/8 ÷ 4/8) / 2; base (0 + 1) / 2
    assert ta["test"]["normalized_accuracy"] == pytest.approx((0.75 + 0.5) / 2)
    assert ta["test"]["normalized"] == {SKILL_A: 0.75, SKILL_B: 0.5}
    assert sst["test"]["normalized_accuracy"] == pytest.approx((1.0 + 0.75) / 2)
    assert base["test"]["normalized_accuracy"] == pytest.approx(0.5)
    assert safety["test"]["normalized_accuracy"] == 0.0
    for row in rows:
        interval = row["test"]["intervals"]["normalized_accuracy"]
        assert interval["low"] <= row["test"]["normalized_accuracy"] <= interval["high"]
    # test rates carry Wilson intervals: 0/8 → [0, z²/(8 + z²)] = [0, 0.3244]
    assert ta["test"]["intervals"]["benign_over_refusal"] == pytest.approx(
        {"estimate": 0.0, "low": 0.0, "high": 0.32441}, abs=1e-5
    )
    assert sst["test"]["intervals"]["utility"] == wilson_interval(11, 16).as_dict()

    references = {
        "base": {"harmful_refusal": 0.0, "benign_over_refusal": 0.0,
                 "intervals": {"harmful_refusal": wilson_interval(0, 8).as_dict(),
                               "benign_over_refusal": wilson_interval(0, 8).as_dict()}},
        "safety alone": {"harmful_refusal": 1.0, "benign_over_refusal": 0.125,
                         "intervals": {"harmful_refusal": wilson_interval(8, 8).as_dict(),
                                       "benign_over_refusal": wilson_interval(1, 8).as_dict()}},
        "experts": {skill: interference.expert_reference(record, skill)
                    for skill, record in experts.items()},
    }  # fmt: skip
    assert references["experts"][SKILL_B] == {
        "exact_match": 0.5,
        "n_items": 8,
        "intervals": {"exact_match": wilson_interval(4, 8).as_dict()},
    }
    protocol = interference.protocol_summary(
        [m.sweep for m in run.methods], interference.VALIDATION, interference.TEST
    )
    report = interference.write_results(tmp_path / "out", rows, references, protocol)
    assert (tmp_path / "out" / "interference.md").read_text() == report
    assert "## N = 2 (reverse_letters, uppercase) — test split" in report
    bounds = ta["test"]["intervals"]["normalized_accuracy"]
    assert (
        "| task_arithmetic | λ=0.25, safety_weight=1 | no | 0.50 / 0.00 / 1.00 "
        f"| 0.62 [{bounds['low']:.2f}, {bounds['high']:.2f}] | 0.50 [0.22, 0.78] "
        "| 0.00 [0.00, 0.32] | 0.50 [0.28, 0.72] | 2.0 |"
    ) in report
    assert "| sst_merge | λ=0.5, scale=3 | yes | 1.00 / 0.00 / 0.75 |" in report
    assert "| base | – | – | 0.00 / 0.00 / 0.12 |" in report
    assert "| safety alone | – | – | – | 0.00 [0.00, 0.00] | 1.00 [0.68, 1.00] |" in report
    assert "| safety alone | 1.00 [0.68, 1.00] | 0.12 [0.02, 0.47] | – |" in report
    assert "| uppercase alone | – | – | 0.50 [0.22, 0.78] (n = 8) |" in report
    assert "task_arithmetic: λ ∈ {0.25, 0.5, 1} × safety_weight ∈ {1, 2}" in report
    assert "sst_merge: λ ∈ {0.25, 0.5, 1} × scale ∈ {1.5, 3}" in report
    assert "harmbench-val (41 prompts), overrefusal-val (40), 16 validation-pool" in report
    payload = json.loads((tmp_path / "out" / "interference.json").read_text())
    assert payload["references"] == references
    assert payload["protocol"]["methods"]["sst_merge"]["parameters"]["rho"] == 1.0
    methods = ["base", "safety alone", "task_arithmetic", "sst_merge"]
    assert [r["method"] for r in payload["rows"]] == methods
    assert payload["rows"][3]["test"]["normalized_accuracy"] == pytest.approx(0.875)
    assert (tmp_path / "out" / "interference.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- profiles, grids, command line ---------------------------------------------------------


def test_profiles_share_the_expert_specs_and_the_pinned_safety_adapter(
    interference: ModuleType,
) -> None:
    from sst_merge_plugin.data.tasks import SKILLS as TASKS

    skills = interference.SKILLS
    old_order = ("reverse_letters", "uppercase", "unit_conversion", "sort_digits", "acronym",
                 "max_number", "count_word", "addition")  # fmt: skip
    assert skills[:10] == (*old_order, "last_word", "lowercase")
    # every skill but the code-flavoured one added later for coder models (the Qwen profiles)
    assert sorted(skills) == sorted(set(TASKS) - {"python_eval"})
    assert len(set(skills)) == len(skills) == 12
    small = interference.interference_profile(2)
    large = interference.interference_profile(12)
    assert [spec.name for spec in large.adapters] == ["safety", *skills]
    assert large.adapters[:3] == small.adapters  # same specs → same cached adapters
    # the main benchmark's safety spec on the 604 pairs N = 2, 4, 8 were measured with
    assert large.adapters[0] == small.adapters[0] == replace(FULL.adapters[0], n_train=604)
    assert small.adapters[1:] == FULL.adapters[1:]  # the main benchmark's two skill adapters
    assert {(s.n_train, s.training) for s in large.adapters[1:]} == {
        (400, LoRATrainingConfig(steps=60, learning_rate=2e-3))
    }
    assert (large.fisher, large.rule) == (FULL.fisher, FULL.rule)
    assert large.fisher_kinds == ("lora",)
    assert not small.single_adapters and small.reference_lambdas == ()
    assert small.validation == EvalConfig(
        harmful="harmbench-val", benign="overrefusal-val", utility=skills[:2], n_harmful=41,
        n_benign=40, n_utility=16, skill_pool="validation", max_new_tokens=32,
    )  # fmt: skip
    assert large.test == EvalConfig(
        harmful="harmbench-test", benign="overrefusal-test", utility=skills, n_harmful=159,
        n_benign=100, n_utility=32, skill_pool="test", max_new_tokens=32,
    )  # fmt: skip


def test_expert_alone_answers_the_merged_models_items(
    interference: ModuleType, world: World
) -> None:
    from sst_merge_plugin.evaluation.suite import prepare_eval_data

    test = EvalConfig(
        harmful=str(world.data("harmful.txt")),
        benign=str(world.data("benign.txt")),
        utility=("reverse_letters", "uppercase"),
        n_utility=32,
    )
    merged = prepare_eval_data(test).utility
    for skill in test.utility:
        alone = interference.expert_config(test, skill)
        assert replace(alone, utility=test.utility, n_harmful=32, n_benign=32) == test
        assert prepare_eval_data(alone).utility == {skill: merged[skill]}
        assert len(merged[skill]) == 32


def test_every_method_has_the_same_grid_budget(
    interference: ModuleType, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweeps = {sweep.label: sweep for sweep in interference.SWEEPS}
    assert tuple(sweeps) == interference.METHODS
    assert list(sweeps) == [
        "task_arithmetic", "ties", "dare_ties", "tsv", "sst_merge", "sst_dual",
        "dual_single_fisher",
    ]  # fmt: skip
    for label, sweep in sweeps.items():
        assert len(sweep.points()) == 6, label
        assert sweep.grid["utility_weight"] == (0.25, 0.5, 1.0), label
        projecting = sweep.merge_method.startswith("sst_")
        strength = "scale" if projecting else "safety_weight"
        assert set(sweep.grid) == {"utility_weight", strength}, label
        # the dual's safety LoRA is unprojected: the baselines' weights
        assert sweep.grid[strength] == ((1.5, 3.0) if label == "sst_merge" else (1.0, 2.0))
    assert sweeps["tsv"].merge_method == TSV
    assert dict(sweeps["ties"].parameters) == {"normalize": False, "density": 0.5}
    assert dict(sweeps["sst_merge"].parameters) == {
        "select": "soft", "rho": 1.0, "utility_merge": "task_arithmetic",
    }  # fmt: skip
    assert sweeps["sst_merge"].fisher_kind == "lora"
    assert dict(sweeps["sst_dual"].parameters) == dict(sweeps["sst_merge"].parameters)
    assert (sweeps["sst_dual"].fisher_kind, sweeps["sst_dual"].project) == ("lora", "utility")

    # each point sets every expert's weight to λ and the safety strength where it belongs
    pipeline = _world_pipeline(world, tmp_path / "ws", monkeypatch, tuple(sweeps.values()))
    fishers = (world.harm_fisher, world.benign_fisher)
    monkeypatch.setattr(pipeline.fishers, "pair", lambda kind, at="base": fishers)
    point = {"utility_weight": 0.25, "safety_weight": 2.0}
    for label in ("task_arithmetic", "ties", "dare_ties"):
        config = pipeline.merges.config(sweeps[label], point)
        weights = [model["parameters"]["weight"] for model in config["models"]]
        assert weights == [2.0 if name == "safety" else 0.25 for name in ADAPTERS], label
    tsv = pipeline.merges.config(sweeps["tsv"], point)
    assert tsv["weights"] == {name: 2.0 if name == "safety" else 0.25 for name in ADAPTERS}
    sst = pipeline.merges.config(sweeps["sst_merge"], {"utility_weight": 0.25, "scale": 3.0})
    assert sst["parameters"]["scale"] == 3.0
    assert [m["parameters"]["weight"] for m in sst["models"]] == [1.0, 0.25, 0.25]
    assert sst["models"][0]["parameters"]["role"] == "safety"
    # the dual: one gain Fisher per expert, the cost Fisher shared, the safety LoRA at the scale
    monkeypatch.setattr(pipeline.fishers, "cost", lambda kind, objective, at: f"cost-{objective}")
    monkeypatch.setattr(
        pipeline.fishers, "adapter_fisher", lambda spec, kind, at: f"gain-{spec.name}"
    )
    dual = pipeline.merges.config(sweeps["sst_dual"], {"utility_weight": 0.5, "scale": 2.0})
    assert (dual["parameters"]["project"], dual["parameters"]["scale"]) == ("utility", 2.0)
    assert dual["parameters"]["cost_fisher"] == "cost-kl"
    gains = [m["parameters"].get("gain_fisher") for m in dual["models"]]
    assert gains == [None, *(f"gain-{name}" for name in ADAPTERS if name != "safety")]
    assert [m["parameters"]["weight"] for m in dual["models"]] == [1.0, 0.5, 0.5]
    # its single-Fisher control: the same cost Fisher and inputs, no gain Fishers
    control = sweeps["dual_single_fisher"]
    assert (control.merge_method, control.project, control.fisher_kind) == (
        "sst_single_fisher", "utility", "lora",
    )  # fmt: skip
    assert dict(control.parameters) == dict(sweeps["sst_dual"].parameters)
    single = pipeline.merges.config(control, {"utility_weight": 0.5, "scale": 2.0})
    assert single["merge_method"] == "sst_single_fisher"
    assert (single["parameters"]["project"], single["parameters"]["cost_fisher"]) == (
        "utility", "cost-kl",
    )  # fmt: skip
    assert [m["parameters"].get("gain_fisher") for m in single["models"]] == [None] * 3
    assert [m["parameters"]["weight"] for m in single["models"]] == [1.0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-experts", "0", "2", "13"], "between 1 and 12, got [0, 13]"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--methods", "magic"], "invalid choice: 'magic'"),
        (["--sst-scale", "3"], "unrecognized arguments: --sst-scale 3"),
        (["--safety-weight", "2"], "unrecognized arguments: --safety-weight 2"),
        (["--expert-weight", "0.5"], "unrecognized arguments: --expert-weight 0.5"),
    ],
)
def test_bad_command_lines_are_rejected(
    interference: ModuleType, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit):
        interference.parse_args(["--out", "results", *argv])
    error = capsys.readouterr().err
    assert message in error, error


def test_command_line(interference: ModuleType) -> None:
    args = interference.parse_args(["--out", "results"])
    assert args.n_experts == [2, 4, 8, 12]
    assert args.methods == list(interference.METHODS)  # every method, in SWEEPS order
    assert args.workspace.parts[-2:] == ("bench", "interference")
    assert (args.threads, args.no_progress) == (None, False)
    args = interference.parse_args(
        ["--out", "r", "--n-experts", "12", "2", "12", "--methods", "tsv", "--threads", "1",
         "--workspace", "ws", "--no-progress"]
    )  # fmt: skip
    assert (args.n_experts, args.methods, args.threads) == ([2, 12], ["tsv"], 1)
    assert (args.workspace, args.no_progress) == (Path("ws"), True)


# ---- end to end on the tiny world ----------------------------------------------------------


def test_benchmark_end_to_end_on_the_tiny_world(
    interference: ModuleType, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N = 1, 2 through the real pipeline (the world's adapters stand in for trained ones):
    every output written after each N, each chosen point the rule's pick among the validation
    records, the references and normalised accuracies consistent with the records."""
    from sst_merge_plugin.bench.adapters import Adapters
    from sst_merge_plugin.bench.tuning import Scores

    monkeypatch.setattr(Adapters, "folder", lambda self, spec: world.adapter(spec.name))
    split = EvalConfig(
        harmful=str(world.data("harmful.txt")),
        benign=str(world.data("benign.txt")),
        n_harmful=2,
        n_benign=2,
        n_utility=2,
        max_new_tokens=3,
        batch_size=2,
    )
    sweeps = {sweep.label: sweep for sweep in interference.SWEEPS}
    small = (  # two points each keep the test short; the grids are checked above
        replace(
            sweeps["task_arithmetic"], grid={"utility_weight": (0.5,), "safety_weight": (1, 2)}
        ),
        replace(sweeps["sst_merge"], grid={"utility_weight": (0.5,), "scale": (1.5, 3.0)}),
    )
    prompts = TrainingPrompts(
        harmful=("how to make a bomb", "how to make poison ?", "how to build a bomb"),
        helpful_pairs=(("how to make a cake", "sure here is what ."),),
        edgy=("how to make a house",),
    )
    benchmark = interference.Benchmark(
        tmp_path / "ws",
        small,
        progress=False,
        validation=replace(split, skill_pool="validation"),
        test=split,
        model_dir=world.base,
        prompts=prompts,
    )
    written = []
    write_results = interference.write_results

    def spy(out, rows, references, protocol):
        written.append(sorted({row["n_experts"] for row in rows}))
        return write_results(out, rows, references, protocol)

    monkeypatch.setattr(interference, "write_results", spy)
    out = tmp_path / "out"
    report = interference.run_benchmark(benchmark, [1, 2], out)
    assert written == [[1], [1, 2]]  # rewritten after each N
    assert report == (out / "interference.md").read_text()
    assert json.loads((out / "run.json").read_text())["n_experts_done"] == [1, 2]
    payload = json.loads((out / "interference.json").read_text())
    rows, references = payload["rows"], payload["references"]
    methods = ("base", "safety alone", "task_arithmetic", "sst_merge")
    assert [(r["n_experts"], r["method"]) for r in rows] == [
        (n, method) for n in (1, 2) for method in methods
    ]
    assert list(references["experts"]) == ["reverse_letters", "uppercase"]
    assert {e["n_items"] for e in references["experts"].values()} == {2}
    assert references["base"]["n_harmful"] == references["safety alone"]["n_harmful"] == 2
    for n in (1, 2):
        summary = json.loads((out / f"n{n}" / "results.json").read_text())
        base_over = summary["base_validation"]["benign_over_refusal"]
        for row in rows:
            if row["n_experts"] != n:
                continue
            test = row["test"]
            assert test["n_utility"] == dict.fromkeys(interference.SKILLS[:n], 2)
            alone = {s: references["experts"][s]["exact_match"] for s in test["utility"]}
            expected, _ = interference.normalized_accuracy(test["utility"], alone)
            assert test["normalized_accuracy"] == expected
            if row["method"] in ("base", "safety alone"):
                assert (
                    row["test"]["harmful_refusal"] == references[row["method"]]["harmful_refusal"]
                )
                continue
            sweep = summary["sweeps"][row["method"]]
            scores = [
                Scores(p["harmful_refusal"], p["benign_over_refusal"], p["utility_mean"])
                for p in sweep
            ]
            chosen = interference.RULE.choose(scores, base_over)
            assert (row["knob"], row["feasible"]) == (sweep[chosen.index]["knob"], chosen.feasible)
            assert row["validation"] == sweep[chosen.index]
    assert sorted(path.name for path in (out / "n2").iterdir()) == [
        "pareto.png", "results.json", "results.md", "sweeps.png",
    ]  # fmt: skip
    assert (out / "interference.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --keep-earlier: a run of N = 2 only keeps the N = 1 rows of the run above
    before = json.loads((out / "interference.json").read_text())
    earlier_run = json.loads((out / "run.json").read_text())
    interference.run_benchmark(benchmark, [2], out, keep_earlier=True)
    after = json.loads((out / "interference.json").read_text())
    assert after == before  # N = 1 kept as written, N = 2 redone from the cache
    meta = json.loads((out / "run.json").read_text())
    assert (meta["n_experts"], meta["n_experts_done"]) == ([2], [1, 2])
    assert meta["earlier"] == earlier_run
    # without it the run replaces the folder's results with its own N only
    interference.run_benchmark(benchmark, [2], tmp_path / "alone")
    alone = json.loads((tmp_path / "alone" / "interference.json").read_text())
    assert [r for r in before["rows"] if r["n_experts"] == 2] == alone["rows"]
    # another protocol (one method fewer) is refused before anything is written
    other = interference.Benchmark(
        tmp_path / "ws", small[:1], progress=False, validation=benchmark.validation,
        test=split, model_dir=world.base, prompts=prompts,
    )  # fmt: skip
    written.clear()
    with pytest.raises(SSTError, match="another protocol"):
        interference.run_benchmark(other, [1], out, keep_earlier=True)
    assert written == [] and json.loads((out / "interference.json").read_text()) == after
    # so is the same methods' run with another safety input (the protocol records the inputs)
    monkeypatch.setattr(interference, "SAFETY_SPEC", replace(interference.SAFETY_SPEC, n_train=302))
    with pytest.raises(SSTError, match="another protocol"):
        interference.run_benchmark(benchmark, [1], out, keep_earlier=True)
    assert written == [] and json.loads((out / "interference.json").read_text()) == after
