"""mergekit integration: merged weights against independent numpy/scipy references.

One real ``mergekit-yaml`` subprocess run (the unmodified console script finds ``sst_merge``
through the ``.pth`` hook); the other merges go through ``mergekit.merge.run_merge`` in this
process (the same code path without the ~10 s start-up). mergekit's built-in
``task_arithmetic``/``ties``/``dare_ties`` run on the same inputs in the same test, and the
utility part of every SST merge must equal them bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import python_output
from test_mergekit_support import (
    DAMPING,
    UTILITY_TARGETS,
    damp,
    file_sha256,
    kron_projection,
    linear_names,
    merge_config,
    mergekit_yaml,
    read_weights,
    run_in_process,
    shared_scenario,
    soft_weights,
    top_k_weights,
    write_config,
    write_diag,
    write_kfac,
    write_lora,
)

UTILITY_MODELS = ({"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.7})


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return shared_scenario(tmp_path_factory)


def models(scenario, safety_params=None, with_safety=True):
    out = []
    if with_safety:
        out.append(
            {
                "model": scenario.ref(scenario.safety),
                "parameters": {"role": "safety", **(safety_params or {})},
            }
        )
    for adapter, params in zip(scenario.utility, UTILITY_MODELS, strict=True):
        out.append({"model": scenario.ref(adapter), "parameters": dict(params)})
    return out


def builtin(scenario, tmp_path, method, seed=None):
    """mergekit's own ``method`` on the base and the two utility adapters."""
    out = tmp_path / f"builtin_{method}_{seed}"
    run_in_process(
        scenario, merge_config(scenario, method, {}, models(scenario, with_safety=False)), out, seed
    )
    return read_weights(out)


def shapes_of(scenario, names):
    return {n: tuple(scenario.base_weights[n].shape) for n in names}


def assert_sst_equals(merged, utility, expected_patches, atol=1e-6):
    """Tensors with a safety patch: utility + patch; all others: the utility merge, bit for bit."""
    assert set(merged) == set(utility)
    for name, tensor in merged.items():
        if name in expected_patches:
            expected = utility[name].double().numpy() + expected_patches[name]
            np.testing.assert_allclose(
                tensor.double().numpy(), expected, rtol=0, atol=atol, err_msg=name
            )
            assert not np.allclose(expected_patches[name], 0)
        else:
            assert torch.equal(tensor, utility[name]), name


def test_cli_sst_merge_lora_kind_ties_matches_scipy_and_builtin_ties(scenario, tmp_path):
    names = linear_names()
    harm = write_lora(tmp_path / "harm.safetensors", scenario, names, seed=11)
    benign = write_lora(tmp_path / "benign.safetensors", scenario, names, seed=12, objective="kl")
    rho = 0.5
    parameters = {
        "harm_fisher": str(tmp_path / "harm.safetensors"),
        "benign_fisher": str(tmp_path / "benign.safetensors"),
        "select": "soft",
        "rho": rho,
        "scale": 0.8,
        "utility_merge": "ties",
        "write_adapter": "safety",
    }
    config = write_config(
        tmp_path / "sst.yml", merge_config(scenario, "sst_merge", parameters, models(scenario))
    )
    out = tmp_path / "out"
    result = mergekit_yaml(config, out, "--lora-merge-cache", str(scenario.lora_cache))
    assert result.returncode == 0, result.stderr[-4000:]

    patches = {}
    for name in names:
        u, v, a_h, g_h, ta_h, tg_h = harm[name]
        _, _, a_b, g_b, ta_b, tg_b = benign[name]
        d_out, d_in = u.shape[0], v.shape[0]
        coords = u.T @ scenario.safety_delta(name) @ v
        projected = kron_projection(
            coords,
            damp(a_h, ta_h, d_in), damp(g_h, tg_h, d_out),
            damp(a_b, ta_b, d_in), damp(g_b, tg_b, d_out),
            soft_weights(rho, (ta_h * tg_h) / (ta_b * tg_b)),
        )  # fmt: skip
        patches[name] = 0.8 * u @ projected @ v.T
    merged = read_weights(out)
    assert_sst_equals(merged, builtin(scenario, tmp_path, "ties"), patches)

    report = json.loads((out / "sst_merge_report.json").read_text())
    assert report["method"] == "sst_merge"
    assert report["summary"]["actions"] == {
        "projected": len(names),
        "utility_only": len(merged) - len(names),
    }
    for label in ("harm_fisher", "benign_fisher"):
        import hashlib

        digest = hashlib.sha256(
            (tmp_path / f"{label.split('_')[0]}.safetensors").read_bytes()
        ).hexdigest()
        assert report["fisher_files"][label]["sha256"] == digest
    record = report["tensors"][names[0]]
    assert record["action"] == "projected" and record["kind"] == "lora"
    assert 0 < record["gain_kept_fraction"] < 1 and 0 < record["cost_kept_fraction"] < 1
    card = (out / "README.md").read_text()
    assert (
        "## SST-Merge (sst_merge)" in card
        and report["fisher_files"]["harm_fisher"]["sha256"] in card
    )

    # write_adapter: safety — PEFT applies exactly the projected patch on the base
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(str(scenario.base), dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base_model, str(out / "sst_adapter")).merge_and_unload()
    state = loaded.state_dict()
    for name, weight in scenario.base_weights.items():
        expected = weight.double().numpy() + patches.get(name, 0.0)
        np.testing.assert_allclose(
            state[name].double().numpy(), expected, rtol=0, atol=1e-6, err_msg=name
        )
    assert report["adapter"]["n_modules"] == len(names)
    assert set(report["adapter"]["ranks"].values()) == {4}


@pytest.mark.slow
def test_the_report_is_byte_reproducible(scenario, tmp_path):
    """One merge run twice, in fresh interpreters with different hash seeds, writes one
    ``sst_merge_report.json``, byte for byte: the Fisher headers it lists (``safe_open`` returns
    them in a different order on every call) are sorted."""
    from safetensors import safe_open

    names = linear_names()
    for role, seed, objective in (("harm", 31, "refusal"), ("benign", 32, "kl")):
        write_lora(tmp_path / f"{role}.safetensors", scenario, names, seed, objective=objective)
    parameters = {
        "harm_fisher": str(tmp_path / "harm.safetensors"),
        "benign_fisher": str(tmp_path / "benign.safetensors"),
        "select": "energy",
        "write_adapter": "safety",
    }
    config = json.dumps(merge_config(scenario, "sst_merge", parameters, models(scenario)))
    out = tmp_path / "out"
    code = (  # what run_in_process does, in a fresh interpreter
        "import json\n"
        "from mergekit.config import MergeConfiguration\n"
        "from mergekit.merge import run_merge\n"
        "from mergekit.options import MergeOptions\n"
        f"config = json.loads({config!r})\n"
        f"options = MergeOptions(lora_merge_cache={str(scenario.lora_cache)!r}, "
        "copy_tokenizer=False, quiet=True)\n"
        f"run_merge(MergeConfiguration.model_validate(config), {str(out)!r}, options=options, "
        f"config_source={config!r})\n"
    )
    reports = []
    for hash_seed in (1, 2):
        shutil.rmtree(out, ignore_errors=True)
        python_output(code, hash_seed=hash_seed)
        reports.append((out / "sst_merge_report.json").read_bytes())
    assert reports[0] == reports[1]
    files = json.loads(reports[0])["fisher_files"]
    for label, role in (("harm_fisher", "harm"), ("benign_fisher", "benign")):
        with safe_open(str(tmp_path / f"{role}.safetensors"), framework="pt") as handle:
            header = handle.metadata()
        assert files[label]["metadata"] == header
        assert list(files[label]["metadata"]) == sorted(header) and len(header) == 10


def test_kfac_top_k_with_task_arithmetic(scenario, tmp_path):
    names = linear_names()
    harm = write_kfac(tmp_path / "h.safetensors", names, shapes_of(scenario, names), seed=21)
    benign = write_kfac(
        tmp_path / "b.safetensors", names, shapes_of(scenario, names), seed=22, objective="kl"
    )
    parameters = {
        "harm_fisher": str(tmp_path / "h.safetensors"),
        "benign_fisher": str(tmp_path / "b.safetensors"),
        "select": "top_k",
        "k": 7,
    }
    out = tmp_path / "out"
    run_in_process(
        scenario,
        merge_config(scenario, "sst_merge", parameters, models(scenario, {"weight": 1.5})),
        out,
    )
    patches = {
        n: 1.5
        * kron_projection(
            scenario.safety_delta(n),
            damp(harm[n][0]),
            damp(harm[n][1]),
            damp(benign[n][0]),
            damp(benign[n][1]),
            top_k_weights(7),
        )
        for n in names
    }
    assert_sst_equals(read_weights(out), builtin(scenario, tmp_path, "task_arithmetic"), patches)


def test_dual_on_both_sides_matches_the_kron_reference(scenario, tmp_path):
    """``project: both``: each utility delta projected with its ``gain_fisher`` ``G_i`` and the
    ``cost_fisher`` ``C`` (soft, ``ρ·c`` with ``c = tr G_i / tr C``), task arithmetic of the
    projected deltas, plus the safety patch projected with ``(F_harm, F_benign)`` — against
    dense scipy references; the report's utility summary matches them too."""
    safety_names, utility_names = linear_names(), linear_names(UTILITY_TARGETS)
    shapes = shapes_of(scenario, utility_names)
    harm = write_kfac(tmp_path / "h.safetensors", safety_names, shapes, seed=31)
    benign = write_kfac(tmp_path / "b.safetensors", safety_names, shapes, seed=32, objective="kl")
    cost = write_kfac(tmp_path / "c.safetensors", utility_names, shapes, seed=33)
    gains = [
        write_kfac(
            tmp_path / f"g{i}.safetensors", utility_names, shapes, seed=34 + i, objective="lm"
        )
        for i in range(2)
    ]
    rho = 0.5
    parameters = {
        "project": "both",
        "harm_fisher": str(tmp_path / "h.safetensors"),
        "benign_fisher": str(tmp_path / "b.safetensors"),
        "cost_fisher": str(tmp_path / "c.safetensors"),
        "select": "soft",
        "rho": rho,
    }
    inputs = models(scenario)
    for i, entry in enumerate(inputs[1:]):
        entry["parameters"]["gain_fisher"] = str(tmp_path / f"g{i}.safetensors")
    out = tmp_path / "out"
    run_in_process(scenario, merge_config(scenario, "sst_merge", parameters, inputs), out)

    def soft(x, gain, cost_factors):
        (a_g, g_g), (a_c, g_c) = gain, cost_factors
        ratio = np.trace(a_g) * np.trace(g_g) / (np.trace(a_c) * np.trace(g_c))
        return kron_projection(x, damp(a_g), damp(g_g), damp(a_c), damp(g_c),
                               soft_weights(rho, ratio))  # fmt: skip

    merged = read_weights(out)
    for name, tensor in merged.items():
        base = scenario.base_weights[name]
        if name not in utility_names:
            assert torch.equal(tensor, base), name
            continue
        expected = base.double().numpy().copy()
        for adapter, params, gain in zip(scenario.utility, UTILITY_MODELS, gains, strict=True):
            delta = scenario.merged_weight(adapter, name) - base.double().numpy()
            expected += params["weight"] * soft(delta, gain[name], cost[name])
        if name in safety_names:
            expected += soft(scenario.safety_delta(name), harm[name], benign[name])
        np.testing.assert_allclose(tensor.double().numpy(), expected, rtol=0, atol=2e-6,
                                   err_msg=name)  # fmt: skip
    report = json.loads((out / "sst_merge_report.json").read_text())
    assert report["summary"]["actions"] == {
        "projected": len(safety_names),
        "utility_only": len(merged) - len(safety_names),
    }
    utility = report["summary"]["utility"]
    assert sorted(utility) == sorted(scenario.ref(a) for a in scenario.utility)
    assert all(0 < u["safety_disturbance_removed"] < 1 for u in utility.values())


def test_diag_ratio_with_dare_ties_equals_builtin_dare_under_one_seed(scenario, tmp_path):
    names = linear_names()
    harm = write_diag(tmp_path / "h.safetensors", names, shapes_of(scenario, names), seed=31)
    benign = write_diag(
        tmp_path / "b.safetensors", names, shapes_of(scenario, names), seed=32, objective="kl"
    )
    parameters = {
        "harm_fisher": str(tmp_path / "h.safetensors"),
        "benign_fisher": str(tmp_path / "b.safetensors"),
        "select": "ratio",
        "ratio": 1.0,
        "utility_merge": "dare_ties",
    }
    config = merge_config(scenario, "sst_merge", parameters, models(scenario))
    run_in_process(scenario, config, tmp_path / "out", seed=7)
    patches = {}
    for n in names:
        f_h, f_b = harm[n] + DAMPING * harm[n].mean(), benign[n] + DAMPING * benign[n].mean()
        normalised = (f_h / f_b) / (f_h.sum() / f_b.sum())
        keep = normalised >= 1.0
        assert 0 < keep.sum() < keep.size
        patches[n] = np.where(keep, scenario.safety_delta(n), 0.0)
    dare = builtin(scenario, tmp_path, "dare_ties", seed=7)
    assert_sst_equals(read_weights(tmp_path / "out"), dare, patches)
    other_seed = builtin(scenario, tmp_path, "dare_ties", seed=8)
    assert not torch.equal(other_seed[names[0]], dare[names[0]])  # DARE really is random


def test_merged_adapter_reproduces_the_merge(scenario, tmp_path):
    names = linear_names()
    write_lora(tmp_path / "h.safetensors", scenario, names, seed=41)
    write_lora(tmp_path / "b.safetensors", scenario, names, seed=42, objective="kl")
    parameters = {
        "harm_fisher": str(tmp_path / "h.safetensors"),
        "benign_fisher": str(tmp_path / "b.safetensors"),
        "select": "top_k",
        "k": 5,
        "write_adapter": "merged",
    }
    out = tmp_path / "out"
    run_in_process(scenario, merge_config(scenario, "sst_merge", parameters, models(scenario)), out)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(str(scenario.base), dtype=torch.float32)
    state = (
        PeftModel.from_pretrained(base_model, str(out / "sst_adapter"))
        .merge_and_unload()
        .state_dict()
    )
    merged = read_weights(out)
    for name, tensor in merged.items():
        np.testing.assert_allclose(
            state[name].numpy(), tensor.numpy(), rtol=0, atol=2e-6, err_msg=name
        )
    report = json.loads((out / "sst_merge_report.json").read_text())
    ranks = report["adapter"]["ranks"]
    # task arithmetic of rank-4 LoRAs plus a rank-4 projected patch: rank ≤ 12 on q/v, 8 on up/down
    assert set(ranks) == {n[: -len(".weight")] for n in linear_names(UTILITY_TARGETS)}
    assert all(r <= (12 if "self_attn" in m else 8) for m, r in ranks.items())


def test_single_fisher_kfac_is_the_harm_eigenbasis(scenario, tmp_path):
    names = linear_names()
    harm = write_kfac(tmp_path / "h.safetensors", names, shapes_of(scenario, names), seed=51)
    parameters = {"harm_fisher": str(tmp_path / "h.safetensors"), "select": "top_k", "k": 4}
    out = tmp_path / "out"
    run_in_process(
        scenario, merge_config(scenario, "sst_single_fisher", parameters, models(scenario)), out
    )
    patches = {}
    for n in names:
        a, g = harm[n]
        eye = lambda m: (1 + DAMPING) * np.eye(m.shape[0])  # noqa: E731 - damped identity factor
        patches[n] = kron_projection(
            scenario.safety_delta(n), damp(a), damp(g), eye(a), eye(g), top_k_weights(4)
        )
    assert_sst_equals(read_weights(out), builtin(scenario, tmp_path, "task_arithmetic"), patches)


@pytest.mark.parametrize("gate", ["project", "merge"])
def test_safe_lora_gates(scenario, tmp_path, gate):
    utility = builtin(scenario, tmp_path, "task_arithmetic")
    names = linear_names()
    cosines, mapped = {}, {}
    for n in names:
        alignment = scenario.safety_delta(n)
        delta = utility[n].double().numpy() - scenario.base_weights[n].double().numpy()
        mapped[n] = alignment @ alignment.T @ delta / np.linalg.norm(alignment)
        cosines[n] = float(
            (delta * mapped[n]).sum() / (np.linalg.norm(delta) * np.linalg.norm(mapped[n]))
        )
    threshold = float(np.median(list(cosines.values())))
    parameters = {"threshold": threshold, "gate": gate, "scale": 0.5}
    out = tmp_path / "out"
    run_in_process(
        scenario, merge_config(scenario, "sst_safe_lora", parameters, models(scenario)), out
    )
    merged = read_weights(out)
    gated = [n for n in names if cosines[n] < threshold]
    assert 0 < len(gated) < len(names)
    for n in names:
        base = scenario.base_weights[n].double().numpy()
        delta = utility[n].double().numpy() - base
        safety = 0.5 * scenario.safety_delta(n)
        if n not in gated and gate == "merge":
            assert torch.equal(merged[n], utility[n])
            continue
        if gate == "project":  # the aligned model W0 + s·ΔW_s plus the (projected) utility delta
            expected = base + safety + (mapped[n] if n in gated else delta)
        else:
            expected = base + delta + safety
        np.testing.assert_allclose(merged[n].double().numpy(), expected, rtol=0, atol=1e-6)
    report = json.loads((out / "sst_merge_report.json").read_text())
    assert sum(r["action"] == "gated" for r in report["tensors"].values()) == len(gated)


def test_fisher_weighted_merge(scenario, tmp_path):
    names = linear_names(UTILITY_TARGETS)
    shapes = shapes_of(scenario, names)
    fishers = [
        write_diag(tmp_path / f"f{i}.safetensors", names, shapes, seed=61 + i) for i in range(2)
    ]
    config = merge_config(scenario, "sst_fisher_merge", {"floor": 1e-3}, [
        {"model": scenario.ref(a), "parameters": {"weight": w, "fisher": str(tmp_path / f"f{i}.safetensors")}}
        for i, (a, w) in enumerate(zip(scenario.utility, (1.0, 0.5), strict=True))
    ])  # fmt: skip
    out = tmp_path / "out"
    run_in_process(scenario, config, out)
    merged = read_weights(out)
    for name, tensor in merged.items():
        base = scenario.base_weights[name].double().numpy()
        if name not in names:
            assert torch.equal(tensor, scenario.base_weights[name]), name
            continue
        deltas = [scenario.merged_weight(a, name) - base for a in scenario.utility]
        offset = 1e-3 * np.mean([f[name].mean() for f in fishers])
        num = sum(
            w * (f[name] + offset) * d for w, f, d in zip((1.0, 0.5), fishers, deltas, strict=True)
        )
        den = sum(w * (f[name] + offset) for w, f in zip((1.0, 0.5), fishers, strict=True))
        np.testing.assert_allclose(
            tensor.double().numpy(), base + num / den, rtol=0, atol=1e-6, err_msg=name
        )


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_missing_fisher_keep_and_drop(scenario, tmp_path, policy):
    names = linear_names()
    present = [n for n in names if "q_proj" in n]
    shapes = shapes_of(scenario, names)
    harm = write_kfac(tmp_path / "h.safetensors", present, shapes, seed=71)
    benign = write_kfac(tmp_path / "b.safetensors", present, shapes, seed=72, objective="kl")
    parameters = {
        "harm_fisher": str(tmp_path / "h.safetensors"),
        "benign_fisher": str(tmp_path / "b.safetensors"),
        "select": "top_k",
        "k": 3,
        "missing_fisher": policy,
    }
    out = tmp_path / "out"
    run_in_process(scenario, merge_config(scenario, "sst_merge", parameters, models(scenario)), out)
    patches = {
        n: kron_projection(
            scenario.safety_delta(n),
            damp(harm[n][0]),
            damp(harm[n][1]),
            damp(benign[n][0]),
            damp(benign[n][1]),
            top_k_weights(3),
        )
        for n in present
    }
    if policy == "keep":
        patches.update({n: scenario.safety_delta(n) for n in names if n not in present})
    assert_sst_equals(read_weights(out), builtin(scenario, tmp_path, "task_arithmetic"), patches)
    report = json.loads((out / "sst_merge_report.json").read_text())
    assert report["summary"]["actions"][f"missing_fisher_{policy}"] == len(names) - len(present)


def test_shipped_configs_run_on_a_tiny_model(scenario, tmp_path, monkeypatch):
    """configs/mergekit/*.yml, placeholders filled as configs/mergekit/README.md says."""
    import yaml

    adapters = tmp_path / "adapters"
    adapters.mkdir()
    for link, target in zip(
        ("safety", "reverse_letters", "uppercase"),
        (scenario.safety, *scenario.utility),
        strict=True,
    ):
        (adapters / link).symlink_to(target)
    fishers = tmp_path / "fishers"
    fishers.mkdir()
    write_lora(fishers / "harm.safetensors", scenario, linear_names(), seed=81)
    write_lora(fishers / "benign.safetensors", scenario, linear_names(), seed=82, objective="kl")
    # the dual's files, restricted to the joint span of the three adapters (as the demo exports)
    joint = tuple(adapters / name for name in ("safety", "reverse_letters", "uppercase"))
    utility_names = linear_names(UTILITY_TARGETS)
    write_lora(fishers / "cost-refusal.safetensors", scenario, utility_names, 83, "refusal", joint)
    for seed, name in enumerate(("reverse_letters", "uppercase"), start=84):
        write_lora(fishers / f"gain-{name}.safetensors", scenario, utility_names, seed, "lm", joint)
    # sst_dual_kfac's: kfac factors over each whole Linear the skills touch (KL cost, lm gains)
    kfac = tmp_path / "kfac"
    kfac.mkdir()
    shapes = shapes_of(scenario, utility_names)
    write_kfac(kfac / "cost-kl.safetensors", utility_names, shapes, seed=86, objective="kl")
    for seed, name in enumerate(("reverse_letters", "uppercase"), start=87):
        write_kfac(kfac / f"gain-{name}.safetensors", utility_names, shapes, seed, "lm")
    variables = {"BASE_MODEL": scenario.base, "ADAPTERS": adapters, "FISHERS": fishers,
                 "KFAC_FISHERS": kfac}  # fmt: skip
    for key, value in variables.items():
        monkeypatch.setenv(key, str(value))
    configs = Path(__file__).resolve().parents[1] / "configs" / "mergekit"
    outputs = {}
    for name in ("sst", "sst_dual", "sst_dual_kfac", "task_arithmetic", "ties", "dare_ties"):
        config = yaml.safe_load(os.path.expandvars((configs / f"{name}.yml").read_text()))
        outputs[name] = tmp_path / name
        run_in_process(scenario, config, outputs[name], seed=0)
    report = json.loads((outputs["sst"] / "sst_merge_report.json").read_text())
    assert report["summary"]["actions"]["projected"] == len(linear_names())
    assert (outputs["sst"] / "sst_adapter" / "adapter_model.safetensors").is_file()
    duals = {
        "sst_dual": fishers / "cost-refusal.safetensors",
        "sst_dual_kfac": kfac / "cost-kl.safetensors",
    }
    for name, cost in duals.items():
        dual = json.loads((outputs[name] / "sst_merge_report.json").read_text())
        assert dual["fisher_files"]["cost_fisher"]["sha256"] == file_sha256(cost)
        assert dual["summary"]["actions"]["safety_unprojected"] == len(linear_names())
        utility = dual["summary"]["utility"]
        assert sorted(utility) == [
            f"{scenario.base}+{adapters / skill}" for skill in ("reverse_letters", "uppercase")
        ]
        assert all(0 < u["safety_disturbance_removed"] < 1 for u in utility.values())
    for name in ("task_arithmetic", "ties", "dare_ties"):
        assert (outputs[name] / "model.safetensors").is_file()
        assert not (outputs[name] / "sst_merge_report.json").exists()


def test_stale_lora_merge_cache_fails_through_mergekit_yaml(scenario, tmp_path):
    """The safety adapter is retrained in place after mergekit's --lora-merge-cache (keyed by
    path) merged it: the Fishers match the new adapter file, the cached weights are the old
    adapter's, and nearly all of the patch lies outside the Fishers' subspace. The real
    mergekit-yaml refuses before writing; a fresh cache folder merges."""
    import shutil

    from mergekit.common import ModelPath, ModelReference
    from test_mergekit_support import SAFETY_TARGETS, save_adapter, tiny_llama

    adapter = tmp_path / "safety"
    shutil.copytree(scenario.safety, adapter)
    cache = tmp_path / "lora_cache"
    reference = ModelReference(
        model=ModelPath(path=str(scenario.base)), lora=ModelPath(path=str(adapter))
    )
    reference.merged(cache_dir=str(cache))  # an earlier merge cached the old adapter
    save_adapter(tiny_llama(), adapter, SAFETY_TARGETS, seed=7)  # retrained in place
    names = linear_names()
    write_lora(tmp_path / "h.safetensors", scenario, names, seed=1, adapter=adapter)
    write_lora(tmp_path / "b.safetensors", scenario, names, seed=2, objective="kl", adapter=adapter)
    parameters = {
        "harm_fisher": str(tmp_path / "h.safetensors"),
        "benign_fisher": str(tmp_path / "b.safetensors"),
        "select": "soft",
    }
    safety = {"model": f"{scenario.base}+{adapter}", "parameters": {"role": "safety"}}
    config = merge_config(
        scenario, "sst_merge", parameters, [safety, *models(scenario, with_safety=False)]
    )
    path = write_config(tmp_path / "config.yml", config)
    out = tmp_path / "out"
    result = mergekit_yaml(path, out, "--lora-merge-cache", str(cache))
    assert result.returncode != 0
    assert "of the safety patch lies outside the subspace" in result.stderr, result.stderr[-3000:]
    assert "stale --lora-merge-cache" in result.stderr
    assert not out.exists()
    fresh = mergekit_yaml(path, out, "--lora-merge-cache", str(tmp_path / "fresh_cache"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    residuals = [
        record["subspace_residual"]
        for record in json.loads((out / "sst_merge_report.json").read_text())["tensors"].values()
        if record["action"] == "projected"
    ]
    assert len(residuals) == len(names) and max(residuals) < 1e-5
