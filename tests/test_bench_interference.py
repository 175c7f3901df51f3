"""``benchmarks/interference``: the pipeline's FusionBench merge host (TSV on the tiny world) and
the benchmark's normalised accuracy, rows, tables, plot, profiles and CLI checks.

TSV-M reference (independent of FusionBench): each input's task vector is ``Δᵢ = (alpha/r)·BᵢAᵢ``
(rank ≤ r); TSV keeps the top ``min(m, n) / T`` ≥ r singular triplets of each, orthogonalises
the stacked left and right singular vectors and keeps the singular values, so the merged ``Δ``
has exactly the inputs' non-zero singular values, computed here from the adapter files in
float64; every weight no adapter touches is the base's, bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_fusion_bench_world import ADAPTERS, World
from test_fusion_bench_world import world as world  # the fixture

from sst_merge_plugin.bench import fusion_merge
from sst_merge_plugin.bench.fusion_merge import TSV, fusion_bench_config, run_fusion_merge
from sst_merge_plugin.bench.pipeline import Pipeline
from sst_merge_plugin.bench.profile import AdapterSpec, FisherSettings, Profile, Sweep
from sst_merge_plugin.bench.prompts import TrainingPrompts
from sst_merge_plugin.bench.training import LoRATrainingConfig
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.suite import EvalConfig

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "interference" / "run.py"
TSV_SWEEP = Sweep("tsv", TSV, None, (None,))


@pytest.fixture(scope="module")
def interference() -> ModuleType:
    """``benchmarks/interference/run.py`` as a module."""
    spec = importlib.util.spec_from_file_location("interference_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _adapters(world: World) -> dict[str, Path]:
    return {name: world.adapter(name) for name in ADAPTERS}


def _tsv_config(world: World) -> dict:
    return fusion_bench_config(TSV_SWEEP, None, world.base, _adapters(world))


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
    sweep = Sweep("tsv", TSV, "alpha", (0.5, 1.0), {"exclude_keys": ["lm_head.weight"]})
    config = fusion_bench_config(sweep, 0.5, world.base, _adapters(world))
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
        (Sweep("tsv", TSV, "density", (0.5,)), "no per-model density"),
        (Sweep("tsv", TSV, None, (None,), fisher_kind="lora"), "Fisher file"),
        (Sweep("tsv", "fusion_bench:", None, (None,)), "'fusion_bench:<class path>'"),
    ],
)
def test_fusion_bench_config_rejects_what_the_host_cannot_do(
    world: World, sweep: Sweep, message: str
) -> None:
    with pytest.raises(SSTError, match=message):
        fusion_bench_config(sweep, sweep.values[0], world.base, _adapters(world))


def test_fusion_bench_config_weights_the_safety_adapter(world: World) -> None:
    sweep = Sweep("tsv", TSV, "safety_weight", (1.0, 2.0))
    adapters = _adapters(world)
    assert fusion_bench_config(sweep, 1.0, world.base, adapters) == _tsv_config(world)
    weighted = fusion_bench_config(sweep, 2.0, world.base, adapters)
    assert weighted == {**_tsv_config(world), "weights": {"safety": 2.0}}
    entries = fusion_merge.model_pool(weighted)._models
    assert entries["safety"]["adapter_weight"] == 2.0
    assert all("adapter_weight" not in entries[name] for name in ADAPTERS if name != "safety")
    without_safety = {name: path for name, path in adapters.items() if name != "safety"}
    with pytest.raises(SSTError, match="safety_weight needs a 'safety' adapter"):
        fusion_bench_config(sweep, 2.0, world.base, without_safety)
    experts = replace(sweep, utility_weight=0.5)
    assert fusion_bench_config(experts, 1.0, world.base, adapters)["weights"] == {
        "reverse_letters": 0.5,
        "uppercase": 0.5,
    }


def test_tsv_with_a_safety_weight_scales_that_input_singular_values(
    world: World, tmp_path: Path
) -> None:
    sweep = Sweep("tsv", TSV, "safety_weight", (2.0,))
    config = fusion_bench_config(sweep, 2.0, world.base, _adapters(world))
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
    profile = Profile("tiny", specs, FisherSettings(), EvalConfig(), sweeps, single_adapters=False)
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
    utilities = Sweep("tsv_utilities", TSV, None, (None,), utilities_only=True)
    pipeline = _world_pipeline(world, tmp_path / "workspace", monkeypatch, (TSV_SWEEP, utilities))
    jobs = [job for job in pipeline.merges.jobs() if job.config is not None]
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
    sweeps = (
        Sweep("ta", "task_arithmetic", "safety_weight", (2.0,), utility_weight=0.25),
        Sweep("tsv", TSV, "safety_weight", (2.0,), utility_weight=0.25),
    )
    pipeline = _world_pipeline(world, tmp_path / "ws", monkeypatch, sweeps)
    mergekit_config, fusion_config = (job.config for job in pipeline.merges.jobs() if job.config)
    weights = [model["parameters"]["weight"] for model in mergekit_config["models"]]
    assert weights == [2.0 if name == "safety" else 0.25 for name in ADAPTERS]
    assert fusion_config["weights"] == {
        name: (2.0 if name == "safety" else 0.25) for name in ADAPTERS
    }


# ---- the benchmark script ------------------------------------------------------------------


def test_normalized_accuracy_leaves_out_skills_whose_expert_scores_zero(
    interference: ModuleType,
) -> None:
    alone = {"a": 0.8, "b": 0.5, "c": 0.0, "unused": 0.9}
    mean, ratios = interference.normalized_accuracy({"a": 0.6, "b": 1.0, "c": 0.25}, alone)
    assert ratios == {"a": pytest.approx(0.75), "b": 2.0, "c": None}
    assert mean == pytest.approx(1.375)
    assert interference.normalized_accuracy({"c": 0.5}, alone) == (None, {"c": None})


def _record(method: str, knob, utility: dict[str, float], **metrics) -> dict:
    return {
        "method": method,
        "knob": knob,
        "merge_seconds": 2.0,
        "metrics": {
            "utility": utility,
            "utility_mean": sum(utility.values()) / len(utility),
            "harmful_refusal": metrics.get("harmful", 0.25),
            "benign_over_refusal": metrics.get("benign", 0.125),
        },
        "sst_summary": metrics.get("sst_summary"),
    }


def test_rows_tables_and_plot(interference: ModuleType, tmp_path: Path) -> None:
    alone = {"a": 0.8, "b": 0.5, "c": 1.0, "d": 0.5}
    summary = {"pooled_gain_kept_fraction": 0.9}
    records = [
        (2, _record("ties", 0.5, {"a": 0.6, "b": 1.0})),
        (2, _record("sst_merge", 1.0, {"a": 0.8, "b": 0.5}, harmful=0.75, sst_summary=summary)),
        (4, _record("ties", 0.5, {"a": 0.4, "b": 0.25, "c": 0.5, "d": 0.5})),
        (4, _record("sst_merge", 1.0, {"a": 0.4, "b": 0.5, "c": 1.0, "d": 0.3}, harmful=0.5)),
    ]
    rows = [interference.interference_row(n, record, alone) for n, record in records]
    assert rows[0] == {
        "n_experts": 2,
        "method": "ties",
        "knob": 0.5,
        "normalized_accuracy": pytest.approx(1.375),
        "normalized": {"a": pytest.approx(0.75), "b": 2.0},
        "utility": {"a": 0.6, "b": 1.0},
        "expert_accuracy": {"a": 0.8, "b": 0.5},
        "utility_mean": 0.8,
        "harmful_refusal": 0.25,
        "benign_over_refusal": 0.125,
        "merge_seconds": 2.0,
    }
    assert rows[1]["sst_summary"] == summary and rows[1]["normalized_accuracy"] == 1.0
    assert rows[2]["normalized_accuracy"] == pytest.approx((0.5 + 0.5 + 0.5 + 1.0) / 4)
    references = {
        "base": {"harmful_refusal": 0.0, "benign_over_refusal": 0.0},
        "safety alone": {"harmful_refusal": 0.875, "benign_over_refusal": 0.25},
        "experts": {name: alone[name] for name in "abcd"},
    }
    report = interference.markdown_report(rows, references)
    assert "| 2 | ties | 0.5 | 1.375 | 0.800 | 0.250 | 0.125 | 2.0 |" in report
    assert "| 4 | sst_merge | 1 | 0.775 | 0.550 | 0.500 | 0.125 | 2.0 |" in report
    assert "| safety alone | 0.875 | 0.250 | – |" in report
    assert "| c alone | – | – | 1.000 |" in report
    assert "| sst_merge (N=4) | 1 | 0.500 | 0.125 |" in report  # per-skill table
    plot = tmp_path / "out" / "interference.png"
    interference.plot_interference(rows, references, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profiles_share_the_expert_specs(interference: ModuleType) -> None:
    sweeps = interference.method_sweeps(0.5, 2.0)
    assert list(sweeps) == list(interference.METHODS)
    assert sweeps["sst_merge"].values == (0.5,) and sweeps["sst_merge"].fisher_kind == "lora"
    for method in ("task_arithmetic", "ties", "dare_ties", "tsv"):
        assert (sweeps[method].knob, sweeps[method].values) == ("safety_weight", (2.0,)), method
    assert {sweep.utility_weight for sweep in sweeps.values()} == {1.0}
    scaled = interference.method_sweeps(0.5, 2.0, 0.25)
    assert {sweep.utility_weight for sweep in scaled.values()} == {0.25}
    assert dict(sweeps["sst_merge"].parameters)["select"] == "soft"
    assert sweeps["tsv"].merge_method == TSV
    small = interference.interference_profile(2, sweeps.values())
    large = interference.interference_profile(8, sweeps.values())
    assert [spec.name for spec in large.adapters] == ["safety", *interference.SKILLS]
    assert large.adapters[:3] == small.adapters  # same specs → same cached adapters
    assert large.adapters[0] == interference.SAFETY_SPEC
    assert {spec.training for spec in large.adapters[1:]} == {interference.EXPERT_TRAINING}
    assert small.evaluation.utility == interference.SKILLS[:2]
    assert len(set(interference.SKILLS)) == len(interference.SKILLS) == 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-experts", "0", "2", "9"], "between 1 and 8, got [0, 9]"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--sst-scale", "nan"], "--sst-scale must be a finite number"),
        (["--safety-weight", "-1"], "--safety-weight must be a finite number >= 0, got -1.0"),
        (["--expert-weight", "inf"], "--expert-weight must be a finite number >= 0, got inf"),
        (["--methods", "magic"], "invalid choice: 'magic'"),
    ],
)
def test_bad_command_lines_are_rejected(
    interference: ModuleType, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit):
        interference.parse_args(["--out", "results", *argv])
    error = capsys.readouterr().err
    assert message in error, error


def test_command_line_defaults(interference: ModuleType) -> None:
    args = interference.parse_args(["--out", "results", "--n-experts", "4", "2", "4"])
    assert args.n_experts == [2, 4]
    assert args.methods == list(interference.METHODS)
    assert args.sst_scale == interference.SST_SCALE
    assert args.safety_weight == interference.SAFETY_WEIGHT == 1.0
    assert args.expert_weight == interference.EXPERT_WEIGHT == 1.0
    assert args.workspace.parts[-2:] == ("bench", "interference")
