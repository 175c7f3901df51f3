"""The benchmark pipeline end to end on the tiny FusionBench world (no asset cache needed).

LoRA training (loss goes down, seeded runs are identical, bad settings fail before writing),
then a whole :class:`~sst_merge_plugin.bench.pipeline.Pipeline` run under the protocol: adapters
trained, Fisher files collected, every grid point merged through mergekit and scored on the
validation split, each method's point chosen by the rule (checked here against the rule applied
to the recorded scores), only the chosen points scored on the test split; a task-arithmetic
point's weights equal ``W0 + Σ w·B·A·alpha/r`` computed here from the adapter files; a second
run reuses every cached stage (training and merging are made to fail); the report files
(intervals, bootstrap, plots) are written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_fusion_bench_world import World
from test_fusion_bench_world import world as world  # the fixture

from sst_merge_plugin.bench import merges as merges_module
from sst_merge_plugin.bench.pipeline import Pipeline
from sst_merge_plugin.bench.profile import SAFETY, AdapterSpec, FisherSettings, Profile, Sweep
from sst_merge_plugin.bench.prompts import TrainingPrompts
from sst_merge_plugin.bench.report import markdown, summarise, write_outputs
from sst_merge_plugin.bench.scoring import summarise_sst_report
from sst_merge_plugin.bench.training import LoRATrainingConfig, train_lora_adapter
from sst_merge_plugin.bench.tuning import Scores
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.suite import EvalConfig

PAIRS = [("how to make a cake", "sure here is what"), ("add two and three", "five")]
PROMPTS = TrainingPrompts(
    harmful=("how to make a bomb", "how to make poison ?", "how to build a bomb"),
    helpful_pairs=(("how to make a cake", "sure here is what ."),),
    edgy=("how to make a house",),
)


def _training(**overrides) -> LoRATrainingConfig:
    settings = {"rank": 2, "alpha": 4.0, "steps": 3, "batch_size": 2, "max_length": 32}
    return LoRATrainingConfig(**{**settings, **overrides})


def test_training_lowers_the_loss_and_is_deterministic(world: World, tmp_path: Path) -> None:
    config = _training(rank=4, steps=30, learning_rate=1e-2, warmup_steps=1)
    first = train_lora_adapter(world.base, PAIRS, tmp_path / "a", config, progress=False)
    second = train_lora_adapter(world.base, PAIRS, tmp_path / "b", config, progress=False)
    assert len(first.losses) == 30
    # a random 2-layer model with a frozen tied head plateaus near ln(vocab) - 0.6
    assert first.losses[-1] < 0.9 * first.losses[0]
    weights_a = load_file(str(first.adapter_dir / "adapter_model.safetensors"))
    weights_b = load_file(str(second.adapter_dir / "adapter_model.safetensors"))
    assert (
        weights_a.keys() == weights_b.keys() and len(weights_a) == 2 * 7 * 2
    )  # A, B × 7 × 2 layers
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)
    record = json.loads((first.adapter_dir / "sst-merge-training.json").read_text())
    assert record["losses"] == pytest.approx(first.losses)


def test_training_rejects_bad_settings_before_writing(world: World, tmp_path: Path) -> None:
    with pytest.raises(SSTError, match="learning_rate must be > 0"):
        _training(learning_rate=0.0)
    with pytest.raises(SSTError, match="steps must be >= 1"):
        _training(steps=0)
    with pytest.raises(SSTError):
        train_lora_adapter(world.base, [], tmp_path / "empty", _training(), progress=False)
    assert not (tmp_path / "empty").exists()


def _profile(world: World) -> Profile:
    training = _training()
    validation = EvalConfig(
        harmful=str(world.data("harmful.txt")),
        benign=str(world.data("benign.txt")),
        utility=(str(world.data("add.jsonl")),),
        n_harmful=2,
        n_benign=2,
        n_utility=2,
        max_new_tokens=3,
        batch_size=2,
    )
    return Profile(
        name="tiny",
        adapters=(
            AdapterSpec(SAFETY, None, 3, training, n_retain=1),
            AdapterSpec("uppercase", "uppercase", 4, training),
        ),
        fisher=FisherSettings(
            kinds=("lora",),
            n_harm=3,
            n_benign_helpful=1,
            n_benign_edgy=1,
            n_benign_per_skill=2,
            response_tokens=3,
            batch_size=2,
            max_length=48,
        ),
        validation=validation,
        test=replace(validation, max_new_tokens=4),
        sweeps=(
            Sweep(
                "utility_only", "task_arithmetic", {"utility_weight": (1.0,)}, inputs="utilities"
            ),
            Sweep(
                "task_arithmetic",
                "task_arithmetic",
                {"utility_weight": (1.0,), "safety_weight": (0.5, 1.0)},
            ),
            Sweep(
                "sst_lora_soft",
                "sst_merge",
                {"scale": (1.0, 2.0)},
                {"select": "soft", "rho": 1.0, "utility_merge": "task_arithmetic"},
                fisher_kind="lora",
            ),
        ),
        single_adapters=False,
        reference_lambdas=(1.0,),
    )


def _lora_delta(adapter: Path, name: str, scale: float) -> torch.Tensor:
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    stem = "base_model.model." + name.removesuffix(".weight")
    return scale * weights[f"{stem}.lora_B.weight"] @ weights[f"{stem}.lora_A.weight"]


def test_pipeline_end_to_end_and_cached(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    profile = _profile(world)
    workspace = tmp_path / "ws"
    pipeline = Pipeline(
        profile, workspace, model_dir=world.base, prompts=PROMPTS, keep_models=True, progress=False
    )
    run = pipeline.run()
    assert "Fisher" not in capsys.readouterr().err  # progress=False: no collector bars either
    assert [r["method"] for r in run.references] == ["base", "safety alone", "utility_only"]
    assert [len(m.validation) for m in run.methods] == [1, 2, 2]
    base_over = run.base_validation["metrics"]["benign_over_refusal"]
    for method in run.methods:
        # validation scored every grid point, in grid order; the rule picked among them
        assert [r["knob"] for r in method.validation] == [p or None for p in method.sweep.points()]
        scores = [
            Scores(
                r["metrics"]["harmful_refusal"],
                r["metrics"]["benign_over_refusal"],
                r["metrics"]["utility_mean"],
            )
            for r in method.validation
        ]
        assert method.chosen == profile.rule.choose(scores, base_over)
        # the chosen point, and only it, was scored on the test split
        assert method.test["knob"] == method.validation[method.chosen.index]["knob"]
        assert method.test["metrics"]["config"]["max_new_tokens"] == profile.test.max_new_tokens
    sst = run.methods[2].test
    assert 0.0 <= sst["sst_summary"]["pooled_gain_kept_fraction"] <= 1.0

    # the training data: refusals for the harmful prompts, then the retain pair
    safety_pairs = pipeline.adapters.pairs(profile.adapters[0])
    assert [p for p, _ in safety_pairs] == [*PROMPTS.harmful, PROMPTS.helpful_pairs[0][0]]
    harm_file = pipeline.prompt_files.harmful()
    assert [json.loads(line)["prompt"] for line in harm_file.read_text().splitlines()] == list(
        PROMPTS.harmful
    )

    # a task-arithmetic grid point, recomputed from the adapter files
    job = pipeline.merges.sweep_jobs(profile.sweeps[1])[0]
    assert job.knob == {"utility_weight": 1.0, "safety_weight": 0.5}
    merged = load_file(str(next((workspace / "merges" / job.key).glob("*.safetensors"))))
    base = load_file(str(world.base / "model.safetensors"))
    adapters = pipeline.adapters.all()
    scale = profile.adapters[0].training.alpha / profile.adapters[0].training.rank
    checked = 0
    for name, weight in base.items():
        if not name.endswith("_proj.weight"):
            continue
        expected = weight + 0.5 * _lora_delta(adapters[SAFETY], name, scale)
        expected += _lora_delta(adapters["uppercase"], name, scale)
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked == 14

    # a second run reuses adapters, Fisher files and evaluations
    def fail(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr("sst_merge_plugin.bench.training.train_lora_adapter", fail)
    monkeypatch.setattr(merges_module.Merges, "run", fail)
    monkeypatch.setattr("sst_merge_plugin.fisher.collect.collect_fisher", fail, raising=False)
    again = Pipeline(profile, workspace, model_dir=world.base, prompts=PROMPTS, progress=False)
    rerun = again.run()
    assert summarise(rerun) == summarise(run)

    paths = write_outputs(rerun, tmp_path / "out", "tiny")
    summary = json.loads(paths["json"].read_text())
    assert [m["method"] for m in summary["methods"]] == [s.label for s in profile.sweeps]
    assert summary["headline"] == "sst_lora_soft"
    assert [row["baseline"] for row in summary["bootstrap"]] == ["utility_only", "task_arithmetic"]
    for method in summary["methods"]:
        interval = method["test"]["intervals"]["harmful_refusal"]
        assert interval["low"] <= method["test"]["harmful_refusal"] <= interval["high"]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["sweeps"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sst_lora_soft" in paths["markdown"].read_text()
    # --compare: another anchor's paired differences are the headline's, negated
    compared = summarise(rerun, ("task_arithmetic",))
    back = {r["baseline"]: r for r in compared["comparisons"]["task_arithmetic"]}["sst_lora_soft"]
    forth = {r["baseline"]: r for r in compared["bootstrap"]}["task_arithmetic"]
    metrics = [metric for metric in ("refusal", "over_refusal", "utility") if metric in forth]
    assert metrics and set(metrics) <= set(back)
    for metric in metrics:
        assert back[metric]["estimate"] == pytest.approx(-forth[metric]["estimate"], abs=1e-12)
        assert (back[metric]["low"], back[metric]["high"]) == pytest.approx(
            (-forth[metric]["high"], -forth[metric]["low"]), abs=1e-12
        )
    assert "Paired bootstrap: task_arithmetic minus each method" in markdown(compared, "tiny")
    with pytest.raises(SSTError, match="--compare"):
        summarise(rerun, ("no_such_method",))

    # the merge inputs, exported under the names configs/mergekit/*.yml use
    inputs = again.export_inputs(tmp_path / "out")
    assert sorted(path.name for path in (inputs / "adapters").iterdir()) == [SAFETY, "uppercase"]
    for name, folder in adapters.items():
        exported = inputs / "adapters" / name / "adapter_model.safetensors"
        assert exported.read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
    for role, path in zip(("harm", "benign"), again.fishers.pair("lora"), strict=True):
        exported = inputs / "fishers" / "lora" / f"{role}.safetensors"
        assert exported.read_bytes() == path.read_bytes()
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "inputs",
        "pareto.png",
        "results.json",
        "results.md",
        "sweeps.png",
    ]


def test_profile_checks_its_sweeps(world: World) -> None:
    profile = _profile(world)
    with pytest.raises(SSTError, match="unknown method"):
        profile.with_sweeps(("nope",))
    kfac = replace(profile, sweeps=(replace(profile.sweeps[2], fisher_kind="kfac"),))
    with pytest.raises(SSTError, match="does not collect"):
        _ = kfac.fisher_kinds
    with pytest.raises(SSTError, match="has no values"):
        Sweep("x", "ties", {"safety_weight": ()})
    with pytest.raises(SSTError, match="no safety weight"):
        Sweep("x", "ties", {"safety_weight": (1.0,)}, inputs="utilities")


def test_fisher_at_the_utility_merge(world: World, tmp_path: Path) -> None:
    from safetensors import safe_open

    from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

    profile = _profile(world)
    at_merge = replace(profile.sweeps[2], label="sst_at_merge", fisher_at="utility_merge")
    profile = replace(profile, sweeps=(profile.sweeps[2], at_merge))
    pipeline = Pipeline(
        profile, tmp_path / "ws", model_dir=world.base, prompts=PROMPTS, progress=False
    )
    folder = pipeline.merges.utility_merge_dir()
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]  # no temporaries

    # W0 + U: the base plus the (only) utility adapter, recomputed from its file
    merged = load_file(str(folder / "model.safetensors"))
    base = load_file(str(world.base / "model.safetensors"))
    uppercase = pipeline.adapters.all()["uppercase"]
    scale = profile.adapters[1].training.alpha / profile.adapters[1].training.rank
    for name, weight in base.items():
        if name.endswith("_proj.weight"):
            expected = weight + _lora_delta(uppercase, name, scale)
            torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)

    # each sweep's configuration names its own pair; the pairs were collected where asked
    jobs = [pipeline.merges.sweep_jobs(sweep)[0] for sweep in profile.sweeps]
    pairs = [pipeline.fishers.pair("lora"), pipeline.fishers.pair("lora", "utility_merge")]
    for job, pair in zip(jobs, pairs, strict=True):
        parameters = job.config["parameters"]
        assert (parameters["harm_fisher"], parameters["benign_fisher"]) == tuple(map(str, pair))
    for model_dir, pair in zip((world.base, folder), pairs, strict=True):
        for path in pair:
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata()
            assert metadata["base_model"] == str(model_dir)
            assert metadata["model_fingerprint"] == checkpoint_fingerprint(model_dir)
    at_base_harm, at_merge_harm = load_file(str(pairs[0][0])), load_file(str(pairs[1][0]))
    assert at_base_harm.keys() == at_merge_harm.keys()
    assert any(not torch.equal(at_base_harm[k], at_merge_harm[k]) for k in at_base_harm)
    assert pipeline.merges.utility_merge_dir() == folder  # merged once
    # the merge accepts the pair of the other checkpoint (fingerprint check off, reported)
    assert "check_fingerprint" not in jobs[0].config["parameters"]
    assert jobs[1].config["parameters"]["check_fingerprint"] is False
    assert pipeline.merges.run(jobs[1], tmp_path / "merged") > 0
    report = json.loads((tmp_path / "merged" / "sst_merge_report.json").read_text())
    assert set(report["fingerprint_checks"].values()) == {"not checked (check_fingerprint: false)"}
    with pytest.raises(SSTError, match="fisher_at: unknown value"):
        replace(at_merge, fisher_at="somewhere")
    with pytest.raises(SSTError, match=r"cannot be combined with other utility weights"):
        replace(at_merge, grid={"utility_weight": (0.5,)})


def test_demo_command_runs_a_profile_end_to_end(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``sst-merge demo`` on the tiny world: the command's own code path (profile lookup,
    pipeline, reports, exported inputs, run.json), with only the SmolLM2 assets swapped out."""
    from functools import partial

    from sst_merge_plugin import cli
    from sst_merge_plugin.bench import demo
    from sst_merge_plugin.bench import pipeline as pipeline_module
    from sst_merge_plugin.bench import profile as profile_module

    tiny = _profile(world)
    monkeypatch.setattr(profile_module, "PROFILES", {"tiny": tiny})
    monkeypatch.setattr(
        pipeline_module,
        "Pipeline",
        partial(pipeline_module.Pipeline, model_dir=world.base, prompts=PROMPTS),
    )
    monkeypatch.setattr(
        demo,
        "judge_summary",
        lambda cache_dir: {"precision": 1.0, "recall": 0.5, "f1": 0.6, "n": 4},
    )
    out = tmp_path / "demo"
    status = cli.main(
        ["demo", "--profile", "tiny", "--out", str(out), "--workspace", str(tmp_path / "ws"),
         "--no-progress"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0
    assert "Each method at its validation-chosen point" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "inputs",
        "pareto.png",
        "results.json",
        "results.md",
        "run.json",
        "sweeps.png",
    ]
    meta = json.loads((out / "run.json").read_text())
    assert meta["profile"] == "tiny" and meta["judge_on_pyrit_labels"]["n"] == 4
    # the configs' placeholders, one folder per exported kind (the tiny profile: lora only)
    assert f"FISHERS={out / 'inputs' / 'fishers' / 'lora'}" in printed
    assert "KFAC_FISHERS=" not in printed
    # a --compare method that is not run is refused before anything is written
    status = cli.main(
        ["demo", "--profile", "tiny", "--out", str(tmp_path / "none"), "--workspace",
         str(tmp_path / "ws"), "--compare", "no_such_method", "--no-progress"]
    )  # fmt: skip
    assert status != 0 and "--compare" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_safety_retain_data_holds_the_base_models_answers_to_lookalikes(
    world: World, tmp_path: Path
) -> None:
    from sst_merge_plugin.bench.scoring import load_model
    from sst_merge_plugin.evaluation.generate import generate_responses
    from sst_merge_plugin.evaluation.judge import judge

    prompts = replace(PROMPTS, lookalikes=("how to build a house ?", "how to make a cake ?"))
    spec = replace(_profile(world).adapters[0], n_lookalikes=2)
    pipeline = Pipeline(
        replace(_profile(world), adapters=(spec,)),
        tmp_path / "ws",
        model_dir=world.base,
        prompts=prompts,
        progress=False,
    )
    pairs = pipeline.adapters.pairs(spec)
    asked = ["how to make a house", "how to build a house ?"]  # edgy first, then look-alikes
    model, tokenizer = load_model(world.base, "cpu")
    answers = generate_responses(model, tokenizer, asked, max_new_tokens=64, batch_size=8,
                                 progress=False)  # fmt: skip
    expected = [
        (p, a) for p, a in zip(asked, answers, strict=True) if a and not judge(a).is_refusal
    ]
    assert pairs[len(PROMPTS.harmful) + 1 :] == expected  # after the refusals and helpful pair
    cached = list((tmp_path / "ws" / "data").glob("lookalikes-*.jsonl"))
    assert len(cached) == 1 and len(cached[0].read_text().splitlines()) == 2


def test_a_seeded_harmful_sample_mixes_the_sources_and_gets_its_refusals(
    world: World, tmp_path: Path
) -> None:
    import random

    from sst_merge_plugin.bench.adapters import training_pairs
    from sst_merge_plugin.data.refusals import refusal_targets

    first = AdapterSpec(SAFETY, None, 302, _training())
    seeded = replace(first, harmful_sample="seeded")
    assert first.harmful_indices(604) == list(range(302))
    drawn = seeded.harmful_indices(604)
    assert drawn == sorted(random.Random(first.training.seed).sample(range(604), 302))
    assert drawn != list(range(302)) and max(drawn) >= 390  # temaq's probes follow AdvBench's 390
    assert replace(seeded, training=_training(seed=1)).harmful_indices(604) != drawn
    assert seeded.harmful_indices(200) == first.harmful_indices(200) == list(range(200))
    with pytest.raises(SSTError, match="harmful_sample"):
        replace(first, harmful_sample="random")
    # the pairs: the drawn prompts, in list order, each with its seeded template refusal
    harmful = tuple(f"how to make harmful thing {i}" for i in range(6))
    prompts = replace(PROMPTS, harmful=harmful)
    spec = replace(seeded, n_train=3)
    chosen = [harmful[i] for i in sorted(random.Random(0).sample(range(6), 3))]
    targets = refusal_targets(chosen, seed=0)
    assert training_pairs(spec, prompts) == [*zip(chosen, targets, strict=True)]
    # the prompts that get (own) refusal targets: the adapter's sample and F_harm's prefix
    profile = _profile(world)
    profile = replace(profile, adapters=(spec,), fisher=replace(profile.fisher, n_harm=2))
    pipeline = Pipeline(profile, tmp_path / "ws", model_dir=world.base, prompts=prompts)
    indices = sorted({0, 1, *spec.harmful_indices(6)})
    assert pipeline.refusal_prompts() == tuple(harmful[i] for i in indices)
    first_spec = replace(spec, harmful_sample="first")
    pipeline = Pipeline(
        replace(profile, adapters=(first_spec,)), tmp_path / "ws", model_dir=world.base,
        prompts=prompts,
    )  # fmt: skip
    assert pipeline.refusal_prompts() == harmful[:3]  # the longer prefix, as before


@pytest.mark.parametrize(
    ("kind", "cost_objective", "dual_at"),
    [("lora", "kl", "own"), ("diag", "refusal", "own"), ("lora", "refusal", "base")],
)
def test_a_dual_sweep_collects_its_gain_and_cost_fishers(
    world: World, tmp_path: Path, kind: str, cost_objective: str, dual_at: str
) -> None:
    from safetensors import safe_open

    profile = _profile(world)
    dual = Sweep(
        "sst_dual", "sst_merge", {"scale": (1.0,)},
        {"select": "soft", "rho": 1.0, "utility_merge": "task_arithmetic"},
        fisher_kind=kind, project="utility", cost_objective=cost_objective, dual_at=dual_at,
    )  # fmt: skip
    profile = replace(
        profile,
        sweeps=(dual,),
        fisher=replace(profile.fisher, kinds=(kind,)),
    )
    pipeline = Pipeline(profile, tmp_path / "ws", model_dir=world.base, prompts=PROMPTS,
                        progress=False)  # fmt: skip
    (job,) = pipeline.merges.sweep_jobs(dual)
    shared = job.config["parameters"]
    assert shared["project"] == "utility" and "harm_fisher" not in shared
    gains = {m["model"]: m["parameters"].get("gain_fisher") for m in job.config["models"]}
    adapters = pipeline.adapters.all()
    safety_input = f"{world.base}+{adapters[SAFETY]}"
    assert gains.pop(safety_input) is None and all(gains.values())

    def metadata(path: str) -> dict:
        with safe_open(path, "pt") as handle:
            return handle.metadata()

    # collected at their own models (the safe model, the expert) or, at "base", at W0
    own = dual_at == "own"
    cost = metadata(shared["cost_fisher"])
    assert cost["objective"] == cost_objective
    assert cost.get("adapter") == (str(adapters[SAFETY]) if own else None)
    (gain,) = gains.values()
    assert metadata(gain)["objective"] == "lm"
    assert metadata(gain).get("adapter") == (str(adapters["uppercase"]) if own else None)
    if kind == "lora":  # one joint span: every adapter
        for path in (shared["cost_fisher"], gain):
            assert metadata(path)["restrict_to"] == f"{adapters[SAFETY]};{adapters['uppercase']}"
    assert pipeline.merges.run(job, tmp_path / "merged") > 0
    report = json.loads((tmp_path / "merged" / "sst_merge_report.json").read_text())
    ((name, summary),) = report["summary"]["utility"].items()
    assert 0.0 <= summary["pooled_gain_kept_fraction"] <= 1.0
    assert 0.0 <= summary["safety_disturbance_removed"] <= 1.0
    # the benchmark's record keeps them per utility input, and the results page shows them
    kept = summarise_sst_report(tmp_path / "merged" / "sst_merge_report.json")
    assert kept["utility_projection"] == {
        name: {
            "utility_gain_kept": summary["pooled_gain_kept_fraction"],
            "safety_disturbance_removed": summary["safety_disturbance_removed"],
        }
    }
    row = {"harmful_refusal": 1.0, "benign_over_refusal": 0.0, "utility_mean": 0.5,
           "n_harmful": 2, "n_benign": 2, "knob": None, "method": "base"}  # fmt: skip
    page = markdown(
        {"test": asdict(profile.test), "validation": asdict(profile.validation),
         "rule": profile.rule.as_dict(), "references": [row], "bootstrap": [], "sweeps": {},
         "methods": [{"method": "sst_dual", "knob": {"scale": 1.0}, "feasible": True,
                      "validation": row, "test": {**row, **kept}}]},
        "dual",
    )  # fmt: skip
    assert (
        f"| sst_dual | `{Path(adapters['uppercase']).name}` | "
        f"{summary['pooled_gain_kept_fraction']:.3f} | "
        f"{summary['safety_disturbance_removed']:.3f} |"
    ) in page
    # exported under the names a dual mergekit config uses, with the collected bytes
    exported = pipeline.export_inputs(tmp_path / "out") / "fishers" / kind
    suffix = "" if own else "-at-base"
    names = (f"cost-{cost_objective}{suffix}.safetensors", f"gain-uppercase{suffix}.safetensors")
    assert sorted(p.name for p in exported.iterdir()) == list(names)
    for name, collected in zip(names, (shared["cost_fisher"], gain), strict=True):
        assert (exported / name).read_bytes() == Path(collected).read_bytes()
    with pytest.raises(SSTError, match="dual_at: unknown value 'merge'"):
        replace(dual, dual_at="merge")


def test_pareto_legend_names_each_reference_by_its_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Qwen results (re-read from the committed ``results.json``) have the utility-only
    merge at two reference λ: the Pareto plot's legend tells them apart, one entry per row."""
    from support import ROOT

    from sst_merge_plugin.bench import report

    path = ROOT / "benchmarks" / "safety_utility" / "results-qwen-coder-0.5b" / "results.json"
    summary = json.loads(path.read_text())
    figures = []
    monkeypatch.setattr(
        "sst_merge_plugin.evaluation.report.save_png", lambda figure, _: figures.append(figure)
    )
    report.plot_pareto(summary, "unused.png", "qwen")
    labels = [text.get_text() for text in figures[0].axes[1].get_legend().get_texts()]
    plotted = [r for r in summary["references"] if r["utility_mean"] is not None]
    assert len(labels) == len(summary["methods"]) + len(plotted)
    assert len(set(labels)) == len(labels)
    assert {"utility_only (λ=0.5)", "utility_only (λ=1)"} <= set(labels)
