"""FusionBench adapters used programmatically: loader, algorithm settings and errors, the other
SST methods against mergekit, the Fisher cache, the task pool against evaluate_model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_fusion_bench_world import ADAPTERS, World
from test_fusion_bench_world import world as world  # the fixture

from sst_merge_plugin.core import DiagFisher, SSTError
from sst_merge_plugin.fisher.file import FisherFileError

LOADER = "sst_merge_plugin.fusion_bench.loaders.load_lora_causal_lm"


def make_pool(world: World, adapters=ADAPTERS):
    from fusion_bench.modelpool import CausalLMPool

    models = {"_pretrained_": str(world.base)}
    for name in adapters:
        models[name] = {
            "_target_": LOADER,
            "pretrained_model_name_or_path": str(world.base),
            "adapter_path": str(world.adapter(name)),
        }
    return CausalLMPool(models=models, tokenizer=str(world.base), model_kwargs={})


def no_loading(pool):
    """``pool`` whose models may not be loaded (errors must come before any loading)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were validated")

    pool.load_model = refuse
    return pool


# ---- loader ------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1.0, 2.5, -1])
def test_loader_merges_the_adapter_and_leaves_parameters_trainable(
    world: World, weight: float
) -> None:
    from sst_merge_plugin.fusion_bench.loaders import load_lora_causal_lm

    model = load_lora_causal_lm(world.base, world.adapter("reverse_letters"), adapter_weight=weight)
    assert all(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    config = json.loads((world.adapter("reverse_letters") / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    base = load_file(world.base / "model.safetensors")
    prefix = "base_model.model.model.layers.1.mlp.down_proj"
    with safe_open(
        str(world.adapter("reverse_letters") / "adapter_model.safetensors"), "pt"
    ) as handle:
        lora_a = handle.get_tensor(f"{prefix}.lora_A.weight")
        lora_b = handle.get_tensor(f"{prefix}.lora_B.weight")
    name = "model.layers.1.mlp.down_proj.weight"
    expected = base[name].double() + weight * scale * lora_b.double() @ lora_a.double()
    torch.testing.assert_close(model.state_dict()[name].double(), expected, rtol=0, atol=1e-6)


def test_loader_rejects_a_folder_without_adapter(world: World) -> None:
    from sst_merge_plugin.fusion_bench.loaders import load_lora_causal_lm

    with pytest.raises(SSTError, match=r"has no adapter_config\.json"):
        load_lora_causal_lm(world.base, world.base)
    with pytest.raises(SSTError, match="adapter_weight must be a finite number, got nan"):
        load_lora_causal_lm(world.base, world.adapter("safety"), adapter_weight=float("nan"))


# ---- algorithm: validation before anything is loaded ---------------------------------------


def algorithm(**settings):
    from sst_merge_plugin.fusion_bench.algorithm import SSTMergeAlgorithm

    return SSTMergeAlgorithm(**settings)


def fisher_settings(world: World) -> dict:
    return {
        "harm_fisher": str(world.harm_fisher),
        "benign_fisher": str(world.benign_fisher),
        "safety_model": "safety",
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"selct": "top_k"}, r"unknown parameter\(s\) 'selct' \(did you mean 'select'\?\)"),
        ({"threshold": 0.5}, "sst_merge does not take the parameter 'threshold'"),
        ({"merge_method": "sst_magic"}, "unknown merge_method 'sst_magic'"),
        ({"k": "many"}, r"k: invalid value 'many'"),
    ],
)
def test_bad_settings_fail_at_construction(settings: dict, message: str) -> None:
    with pytest.raises(SSTError, match=message):
        algorithm(**settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"select": "top_k"}, "select: select 'top_k' needs the parameter 'k'"),
        ({"select": "energy", "k": 3}, r"does not take parameter\(s\) \['k'\]"),
        ({"utility_merge": "tie"}, "did you mean 'ties'"),
        ({"safety_model": "guard"}, r"safety_model must name .* got 'guard'"),
        ({"weight": {"maths": 2.0}}, r"weight: no model\(s\) \['maths'\] in the pool"),
        ({"harm_fisher": None}, "needs 'harm_fisher' .* or fisher_collection.harm_data"),
        ({"fisher_collection": {"harm_dta": "x"}}, r"unknown key\(s\) \['harm_dta'\]"),
    ],
)
def test_bad_settings_fail_before_loading_models(
    world: World, settings: dict, message: str
) -> None:
    with pytest.raises(SSTError, match=message):
        algorithm(**{**fisher_settings(world), **settings}).run(no_loading(make_pool(world)))


def test_fisher_of_another_model_is_refused_before_loading(world: World, tmp_path: Path) -> None:
    from sst_merge_plugin.fisher.file import FisherFile, FisherMetadata, write_fisher_file

    settings = fisher_settings(world)
    for label, objective in (("harm", "refusal"), ("benign", "kl")):
        source = FisherFile(settings[f"{label}_fisher"])
        fishers = {name: source.get(name) for name in source.weight_names()}
        other = tmp_path / f"other_{label}.safetensors"
        metadata = FisherMetadata("kfac", objective, 1, 1, "0" * 64, "f" * 64)
        write_fisher_file(other, fishers, metadata)
        settings[f"{label}_fisher"] = str(other)
    with pytest.raises(FisherFileError, match=r"harm_fisher .* was collected on another model"):
        algorithm(**settings).run(no_loading(make_pool(world)))
    with pytest.raises(SSTError, match=r"check_fingerprint: invalid value 'maybe'"):
        algorithm(**settings, check_fingerprint="maybe")
    unchecked = algorithm(**settings, check_fingerprint=False)
    unchecked.run(make_pool(world))
    assert set(unchecked.merge_report["fingerprint_checks"].values()) == {
        "not checked (check_fingerprint: false)"
    }


def test_kind_mismatch_between_fisher_files_is_refused(world: World, tmp_path: Path) -> None:
    from sst_merge_plugin.fisher.file import FisherFile, FisherMetadata, write_fisher_file

    source = FisherFile(world.harm_fisher)
    diag = {
        name: DiagFisher(torch.ones(source.weight_shape(name), dtype=torch.float64))
        for name in source.weight_names()
    }
    path = tmp_path / "diag.safetensors"
    write_fisher_file(path, diag, FisherMetadata("diag", "kl", 1, 1, "0" * 64))
    with pytest.raises(FisherFileError, match="different Fisher kinds"):
        algorithm(**{**fisher_settings(world), "benign_fisher": str(path)}).run(
            no_loading(make_pool(world))
        )


def test_nan_in_a_fisher_entry_is_refused_before_loading(world: World, tmp_path: Path) -> None:
    """Every entry is checked up front, not when the merge reaches its tensor."""
    from safetensors.torch import save_file

    with safe_open(str(world.benign_fisher), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    name = sorted(tensors)[-1].split("::")[0]
    tensors[f"{name}::G"][0, 0] = float("inf")
    path = tmp_path / "benign_inf.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(SSTError, match=rf"{name}: benign_fisher .*: entry G: contains 1 NaN/Inf"):
        algorithm(**{**fisher_settings(world), "benign_fisher": str(path)}).run(
            no_loading(make_pool(world))
        )


def _lora_fishers(world: World, folder: Path, adapter: str, record_digest: bool) -> dict:
    """A harm/benign lora pair restricted to ``adapter``'s subspaces (SVD of its ``B·A``), with
    its ``restrict_to_sha256`` when ``record_digest`` (as the collector writes it)."""
    import hashlib

    from sst_merge_plugin.core import LoRAFisher
    from sst_merge_plugin.fisher.file import FisherMetadata, write_fisher_file
    from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

    weights = world.adapter(adapter) / "adapter_model.safetensors"
    factors = load_file(weights)
    extra = {"restrict_to": str(world.adapter(adapter))}
    if record_digest:
        extra["restrict_to_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    settings = {}
    for label, objective, seed in (("harm", "refusal", 1), ("benign", "kl", 2)):
        generator = torch.Generator().manual_seed(seed)
        fishers = {}
        for key in sorted(factors):
            if ".lora_A." not in key:
                continue
            delta = factors[key.replace("lora_A", "lora_B")].double() @ factors[key].double()
            u, _, vh = torch.linalg.svd(delta, full_matrices=False)
            x = torch.randn(4, 8, generator=generator, dtype=torch.float64)
            name = key.removeprefix("base_model.model.").replace(".lora_A", "")
            fishers[name] = LoRAFisher(u[:, :4], vh[:4].T, x @ x.T, x @ x.T + torch.eye(4))
        path = folder / f"{label}_{adapter}.safetensors"
        fingerprint = checkpoint_fingerprint(world.base)
        metadata = FisherMetadata("lora", objective, 10, 2, "0" * 64, fingerprint, extra=extra)
        write_fisher_file(path, fishers, metadata)
        settings[f"{label}_fisher"] = str(path)
    return settings


def test_lora_fishers_of_another_adapter_are_refused(world: World, tmp_path: Path) -> None:
    """Restricted to another adapter than the safety model's adapter_path: with the recorded
    digest the run stops before loading; without it, when the first projection would drop
    nearly all of the patch. The right adapter's Fishers merge (residual ~1e-7)."""
    settings = {**fisher_settings(world), "select": "soft"}
    wrong = _lora_fishers(world, tmp_path, "uppercase", record_digest=True)
    with pytest.raises(
        SSTError, match=r"harm_fisher .* was collected with --restrict-to .*/uppercase"
    ):
        algorithm(**{**settings, **wrong}).run(no_loading(make_pool(world)))
    unrecorded = _lora_fishers(world, tmp_path, "uppercase", record_digest=False)
    with pytest.raises(SSTError, match=r"of the safety patch lies outside the subspace .* stale"):
        algorithm(**{**settings, **unrecorded}).run(make_pool(world))
    right = algorithm(**{**settings, **_lora_fishers(world, tmp_path, "safety", True)})
    right.run(make_pool(world))
    records = right.merge_report["tensors"].values()
    residuals = [r["subspace_residual"] for r in records if r["action"] == "projected"]
    assert len(residuals) == 14 and max(residuals) < 1e-5


def test_swapped_fishers_fail_and_a_zero_scale_warns(world: World) -> None:
    from sst_merge_plugin.method.checks import SSTCheckWarning

    swapped = {
        **fisher_settings(world),
        "harm_fisher": str(world.benign_fisher),
        "benign_fisher": str(world.harm_fisher),
    }
    with pytest.raises(SSTError, match="are swapped: harm_fisher"):
        algorithm(**swapped).run(no_loading(make_pool(world)))
    with pytest.raises(SSTError, match=r"scale is -2\.0"):
        algorithm(**fisher_settings(world), scale=-2.0).run(no_loading(make_pool(world)))
    with pytest.warns(SSTCheckWarning, match=r"^\[zero_safety_patch\]"):
        algorithm(**fisher_settings(world), weight={"safety": 0.0}).prepare(make_pool(world))


# ---- the other SST methods equal the mergekit path ----------------------------------------


def _diag_fishers(world: World, folder: Path) -> dict[str, Path]:
    """One positive diagonal Fisher file per adapter model (seeded), base fingerprint."""
    from sst_merge_plugin.fisher.file import FisherFile, FisherMetadata, write_fisher_file
    from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

    source = FisherFile(world.harm_fisher)
    fingerprint = checkpoint_fingerprint(world.base)
    paths = {}
    for index, model in enumerate(ADAPTERS):
        generator = torch.Generator().manual_seed(10 + index)
        fishers = {
            name: DiagFisher(torch.rand(source.weight_shape(name), generator=generator) + 0.01)
            for name in source.weight_names()
        }
        paths[model] = folder / f"{model}_diag.safetensors"
        metadata = FisherMetadata("diag", "kl", 10, 2, "0" * 64, fingerprint)
        write_fisher_file(paths[model], fishers, metadata)
    return paths


def _mergekit(world: World, method: str, shared: dict, per_model: dict, out: Path) -> dict:
    import mergekit.merge
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    from sst_merge_plugin.mergekit import registration

    registration.install()
    config = {
        "merge_method": method,
        "base_model": str(world.base),
        "dtype": "float32",
        "parameters": shared,
        "models": [
            {"model": f"{world.base}+{world.adapter(name)}", "parameters": per_model[name]}
            for name in ADAPTERS
        ],
    }
    options = MergeOptions(
        lora_merge_cache=str(out.parent / "lora_cache"), copy_tokenizer=False,
        write_model_card=False,
    )  # fmt: skip
    mergekit.merge.run_merge(MergeConfiguration.model_validate(config), str(out), options=options)
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize("method", ["sst_single_fisher", "sst_safe_lora", "sst_fisher_merge"])
def test_baseline_methods_equal_the_mergekit_path(
    world: World, tmp_path: Path, method: str
) -> None:
    if method == "sst_single_fisher":
        shared = {"harm_fisher": str(world.harm_fisher), "select": "ratio", "ratio": 2.0}
        per_model = {
            "safety": {"role": "safety", "weight": 0.5},
            "reverse_letters": {},
            "uppercase": {},
        }
        fb_settings = {**shared, "safety_model": "safety", "weight": {"safety": 0.5}}
    elif method == "sst_safe_lora":
        shared = {"threshold": 0.3, "gate": "merge", "scale": 0.8}
        per_model = {
            "safety": {"role": "safety"},
            "reverse_letters": {"weight": 0.6},
            "uppercase": {},
        }
        fb_settings = {**shared, "safety_model": "safety", "weight": {"reverse_letters": 0.6}}
    else:
        fishers = _diag_fishers(world, tmp_path)
        shared = {"normalise": True}
        per_model = {name: {"fisher": str(path)} for name, path in fishers.items()}
        per_model["reverse_letters"]["weight"] = 2.0
        fb_settings = {
            **shared,
            "fisher": {name: str(path) for name, path in fishers.items()},
            "weight": {"reverse_letters": 2.0},
        }
    sst = algorithm(merge_method=method, **fb_settings)
    merged = sst.run(make_pool(world))
    expected = _mergekit(world, method, shared, per_model, tmp_path / "mergekit")
    state = merged.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    actions = sst.merge_report["summary"]["actions"]
    if method == "sst_single_fisher":
        assert actions == {"projected": 14, "utility_only": 7}
    elif method == "sst_safe_lora":  # the gate fired on some projections, not on all
        assert actions["gated"] > 0 and actions["not_gated"] > 0
    else:
        assert actions == {"fisher_weighted": 14, "utility_only": 7}


@pytest.mark.parametrize("project", ["utility", "both"])
def test_dual_projection_equals_the_mergekit_path(world: World, tmp_path: Path, project) -> None:
    """``project: utility | both`` (each utility delta projected with its ``gain_fisher`` and
    the ``cost_fisher``): the FusionBench run and mergekit's ``run_merge`` give the same bits,
    and both report what the projection kept of each utility delta."""
    cost = tmp_path / "cost.safetensors"
    shutil.copyfile(world.harm_fisher, cost)  # the refusal Fisher as the safety-behaviour cost
    shared = {"project": project, "cost_fisher": str(cost), "select": "soft", "rho": 0.5}
    if project == "both":
        shared.update(harm_fisher=str(world.harm_fisher), benign_fisher=str(world.benign_fisher))
    gains = dict.fromkeys(("reverse_letters", "uppercase"), str(world.benign_fisher))
    per_model = {"safety": {"role": "safety"}, **{m: {"gain_fisher": g} for m, g in gains.items()}}
    sst = algorithm(merge_method="sst_merge", safety_model="safety", gain_fisher=gains, **shared)
    merged = sst.run(make_pool(world))
    expected = _mergekit(world, "sst_merge", shared, per_model, tmp_path / "mergekit")
    state = merged.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    summary = sst.merge_report["summary"]
    assert sorted(summary["utility"]) == sorted(gains)
    for record in summary["utility"].values():
        assert 0 < record["safety_disturbance_removed"] < 1
    safety_action = "projected" if project == "both" else "safety_unprojected"
    assert summary["actions"] == {safety_action: 14, "utility_only": 7}
    report = json.loads((tmp_path / "mergekit" / "sst_merge_report.json").read_text())
    assert report["summary"]["utility"].keys() == {f"{world.base}+{world.adapter(m)}"
                                                   for m in gains}  # fmt: skip


def test_another_skills_gain_fisher_is_refused(world: World, tmp_path: Path) -> None:
    """A gain file records the adapter applied while collecting it (``sst-merge fisher
    --adapter``): given to another skill (the two files swapped), the run stops before loading
    anything; each skill's own file merges."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from sst_merge_plugin.fisher.adapter import read_lora_adapter

    def gain_of(skill: str) -> str:
        path = tmp_path / f"gain-{skill}.safetensors"
        tensors = load_file(str(world.benign_fisher))
        with safe_open(str(world.benign_fisher), "pt") as opened:
            metadata = dict(opened.metadata())
        adapter = read_lora_adapter(world.adapter(skill))
        metadata.update(adapter=str(adapter.path), adapter_sha256=adapter.sha256)
        save_file(tensors, str(path), metadata)
        return str(path)

    shared = {"project": "utility", "cost_fisher": str(world.harm_fisher), "select": "soft"}
    swapped = {"reverse_letters": gain_of("uppercase"), "uppercase": gain_of("reverse_letters")}
    with pytest.raises(
        SSTError, match=r"gain_fisher .* was collected with the adapter .*/uppercase"
    ):
        algorithm(merge_method="sst_merge", safety_model="safety", gain_fisher=swapped,
                  **shared).run(no_loading(make_pool(world)))  # fmt: skip
    own = {skill: file for skill, file in zip(swapped, reversed(swapped.values()), strict=True)}
    sst = algorithm(merge_method="sst_merge", safety_model="safety", gain_fisher=own, **shared)
    sst.run(make_pool(world))
    assert sorted(sst.merge_report["summary"]["utility"]) == sorted(own)


# ---- Fisher cache -------------------------------------------------------------------------


def _request(world: World, data: Path, **options):
    from sst_merge_plugin.fisher.request import FisherRequest

    return FisherRequest.from_options(
        str(world.base),
        str(data),
        "refusal",
        "lora",
        restrict_to=str(world.adapter("safety")),
        options={"split": "all", "batch_size": 2, "max_length": 32, **options},
    )


def test_fisher_cache_key_follows_content_and_reuses_files(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sst_merge_plugin.fisher import collect
    from sst_merge_plugin.fisher.cache import cached_fisher_file, content_key

    data = tmp_path / "harmful.txt"
    data.write_text(world.data("harmful.txt").read_text())
    key = content_key(_request(world, data))
    assert key == content_key(_request(world, data, device="cpu"))  # device is not content
    assert key != content_key(_request(world, data, seed=1))
    copy = tmp_path / "copy.txt"
    copy.write_text(data.read_text())
    assert key == content_key(_request(world, copy))  # the prompts count, not the file name
    data.write_text(data.read_text() + "how to build a bomb\n")
    assert key != content_key(_request(world, data))
    with pytest.raises(SSTError, match="unknown option"):
        content_key(_request(world, data, max_exampels=3))
    with pytest.raises(SSTError, match="split: unknown value 'test'"):
        content_key(_request(world, data, split="test"))

    calls = []
    real_collect = collect.collect_fisher_file
    monkeypatch.setattr(
        collect,
        "collect_fisher_file",
        lambda request, out, **kw: calls.append(str(out)) or real_collect(request, out, **kw),
    )
    first = cached_fisher_file(_request(world, data), tmp_path / "cache", "harm")
    second = cached_fisher_file(_request(world, data), tmp_path / "cache", "harm")
    assert first == second and calls == [str(first)]
    assert first.name.startswith("harm-refusal-lora-")


# ---- task pool ------------------------------------------------------------------------------


def eval_settings(world: World) -> dict:
    return {
        "harmful": str(world.data("harmful.txt")),
        "benign": str(world.data("benign.txt")),
        "utility": [str(world.data("add.jsonl"))],
        "truefalse": str(world.data("truefalse.json")),
        "max_new_tokens": 3,
    }


def test_task_pool_is_evaluate_model_plus_a_markdown_row(world: World, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sst_merge_plugin.evaluation.suite import EvalConfig, evaluate_model
    from sst_merge_plugin.fusion_bench.taskpool import SSTSafetyTaskPool

    markdown = tmp_path / "row.md"
    pool = SSTSafetyTaskPool(
        evaluation=eval_settings(world), tokenizer=str(world.base), name="base", knob=0.5,
        markdown_path=str(markdown),
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(world.base)
    report = pool.evaluate(model)
    settings = {**eval_settings(world), "utility": (str(world.data("add.jsonl")),)}
    direct = evaluate_model(
        model, AutoTokenizer.from_pretrained(world.base), EvalConfig(**settings), progress=False
    )
    timing = ("seconds", "seconds_by_part")
    assert {k: v for k, v in report.items() if k not in timing} == {
        "name": "base", "knob": 0.5, **{k: v for k, v in direct.items() if k not in timing}
    }  # fmt: skip
    lines = markdown.read_text().splitlines()
    assert len(lines) == 3 and lines[2].startswith("| base | 0.5 |")


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ({"harmfull": "advbench"}, "unknown key 'harmfull' \\(did you mean 'harmful'\\?\\)"),
        ({"harmful": "/no/such/prompts.txt"}, "neither a registered prompt set"),
        ({"n_harmful": 0}, "n_harmful must be >= 1"),
    ],
)
def test_task_pool_rejects_bad_evaluation_settings_when_built(
    evaluation: dict, message: str
) -> None:
    from sst_merge_plugin.fusion_bench.taskpool import SSTSafetyTaskPool

    with pytest.raises(SSTError, match=message):
        SSTSafetyTaskPool(evaluation=evaluation)


def test_fisher_merge_collects_one_diag_fisher_per_model_on_its_adapter(
    world: World, tmp_path: Path
) -> None:
    from sst_merge_plugin.fisher.file import FisherFile

    data = {name: str(world.data("benign.txt")) for name in ADAPTERS}
    collection = {"data": data, "split": "all", "batch_size": 2, "max_length": 32,
                  "response_tokens": 3, "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    sst = algorithm(merge_method="sst_fisher_merge", fisher_collection=collection)
    sst.run(make_pool(world))
    assert sst.merge_report["summary"]["actions"] == {"fisher_weighted": 14, "utility_only": 7}
    files = sst.merge_report["fisher_files"]
    assert set(files) == {f"{name}: fisher" for name in ADAPTERS}
    for name in ADAPTERS:
        opened = FisherFile(files[f"{name}: fisher"]["path"])
        assert opened.kind == "diag" and opened.objective == "kl"
        assert opened.metadata["adapter"] == str(world.adapter(name))
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == sorted(ADAPTERS)


@pytest.mark.parametrize(
    "method", ["sst_merge", "sst_single_fisher", "sst_safe_lora", "sst_fisher_merge"]
)
def test_shipped_method_configs_instantiate_with_valid_settings(method: str) -> None:
    """Every shipped method YAML names existing, method-appropriate parameters (the algorithm
    rejects unknown ones and those its method does not take)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sst_merge_plugin.fusion_bench.algorithm import SSTMergeAlgorithm

    config = OmegaConf.load(
        Path(__file__).parents[1] / f"configs/fusion_bench/method/{method}.yaml"
    )
    if method == "sst_fisher_merge":
        config.fisher_collection.data = {"reverse_letters": "benign-edgy"}
    sst = instantiate(config)
    assert isinstance(sst, SSTMergeAlgorithm) and sst.merge_method == method
    assert sst.config.merge_method == method
