"""Bad SST configurations fail with a specific message and leave no output directory.

Each case runs ``mergekit-yaml``'s own click command (``mergekit.scripts.run_yaml.main``)
in-process through click's test runner: the same code as the console script without its
~10 s start-up (one real subprocess run is in ``test_mergekit_merge.py``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_mergekit_support import (
    UTILITY_TARGETS,
    linear_names,
    merge_config,
    shared_scenario,
    write_config,
    write_kfac,
    write_lora,
)

from sst_merge_plugin.core import KFACFisher
from sst_merge_plugin.fisher.file import FisherMetadata, write_fisher_file
from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return shared_scenario(tmp_path_factory)


@pytest.fixture
def fishers(scenario, tmp_path):
    names = linear_names()
    shapes = {n: tuple(scenario.base_weights[n].shape) for n in names}
    write_kfac(tmp_path / "h.safetensors", names, shapes, seed=1)
    write_kfac(tmp_path / "b.safetensors", names, shapes, seed=2, objective="kl")
    return tmp_path / "h.safetensors", tmp_path / "b.safetensors"


def sst_models(scenario, safety=None, utility=None):
    return [
        {"model": scenario.ref(scenario.safety), "parameters": safety or {"role": "safety"}},
        {"model": scenario.ref(scenario.utility[0]), "parameters": utility or {"weight": 1.0}},
    ]


def shared(harm, benign, **extra):
    return {
        "harm_fisher": str(harm),
        "benign_fisher": str(benign),
        "select": "top_k",
        "k": 3,
        **extra,
    }


def run_cli(scenario, tmp_path, config):
    from mergekit.scripts.run_yaml import main

    path = write_config(tmp_path / "config.yml", config)
    out = tmp_path / "out"
    args = [
        str(path),
        str(out),
        "--no-copy-tokenizer",
        "--lora-merge-cache",
        str(scenario.lora_cache),
    ]
    result = CliRunner().invoke(main, args)
    return result, out


def assert_fails(scenario, tmp_path, config, *fragments):
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code != 0
    message = str(result.exception)
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()


def test_valid_config_runs(scenario, tmp_path, fishers):
    """The baseline the error cases perturb: it succeeds and writes the model and report."""
    result, out = run_cli(
        scenario,
        tmp_path,
        merge_config(scenario, "sst_merge", shared(*fishers), sst_models(scenario)),
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "sst_merge_report.json").is_file()


def test_misspelled_per_model_key(scenario, tmp_path, fishers):
    models = sst_models(scenario, safety={"rol": "safety"})
    config = merge_config(scenario, "sst_merge", shared(*fishers), models)
    assert_fails(scenario, tmp_path, config, "unknown parameter 'rol'", "did you mean 'role'")


def test_misspelled_shared_key_and_misplaced_shared_key(scenario, tmp_path, fishers):
    parameters = shared(*fishers)
    parameters["dampng"] = 0.1
    models = sst_models(scenario, safety={"role": "safety", "scale": 2.0})
    config = merge_config(scenario, "sst_merge", parameters, models)
    assert_fails(
        scenario,
        tmp_path,
        config,
        "'dampng'",
        "did you mean 'damping'",
        "'scale' is a shared parameter",
    )


def test_two_safety_inputs(scenario, tmp_path, fishers):
    models = sst_models(scenario, utility={"role": "safety"})
    config = merge_config(scenario, "sst_merge", shared(*fishers), models)
    assert_fails(scenario, tmp_path, config, "exactly one input with 'role: safety'", "got 2")


def test_missing_fisher_file(scenario, tmp_path, fishers):
    config = merge_config(
        scenario,
        "sst_merge",
        shared(tmp_path / "nope.safetensors", fishers[1]),
        sst_models(scenario),
    )
    assert_fails(
        scenario, tmp_path, config, "harm_fisher: cannot open Fisher file", "nope.safetensors"
    )


def test_corrupted_fisher_file(scenario, tmp_path, fishers):
    data = fishers[1].read_bytes()
    fishers[1].write_bytes(data[: len(data) // 2])
    config = merge_config(scenario, "sst_merge", shared(*fishers), sst_models(scenario))
    assert_fails(scenario, tmp_path, config, "benign_fisher", "not a readable safetensors file")


def test_kind_mismatch(scenario, tmp_path, fishers):
    write_lora(tmp_path / "lora.safetensors", scenario, linear_names(), seed=3)
    config = merge_config(
        scenario,
        "sst_merge",
        shared(tmp_path / "lora.safetensors", fishers[1]),
        sst_models(scenario),
    )
    assert_fails(scenario, tmp_path, config, "different Fisher kinds", "'lora'", "'kfac'")


def test_shape_mismatch(scenario, tmp_path, fishers):
    names = linear_names()
    wrong = {n: (8, 8) for n in names}  # the real weights are 16×16 (q) and 8×16 (v)
    write_kfac(tmp_path / "small.safetensors", names, wrong, seed=4, objective="kl")
    config = merge_config(
        scenario,
        "sst_merge",
        shared(fishers[0], tmp_path / "small.safetensors"),
        sst_models(scenario),
    )
    assert_fails(
        scenario, tmp_path, config, names[0], "shape (8, 8)", "model tensor has shape (16, 16)"
    )


def test_fingerprint_mismatch_with_base_and_between_files(scenario, tmp_path, fishers):
    names = linear_names()
    shapes = {n: tuple(scenario.base_weights[n].shape) for n in names}
    other = "f" * 64
    write_kfac(tmp_path / "fp.safetensors", names, shapes, seed=5, fingerprint=other)
    config = merge_config(
        scenario, "sst_merge", shared(tmp_path / "fp.safetensors", fishers[1]), sst_models(scenario)
    )
    assert_fails(scenario, tmp_path, config, "collected on another model", "ffffffffffff")

    right = checkpoint_fingerprint(scenario.base)
    write_kfac(
        tmp_path / "fp_b.safetensors", names, shapes, seed=6, objective="kl", fingerprint=right
    )
    pair = shared(tmp_path / "fp.safetensors", tmp_path / "fp_b.safetensors")
    config = merge_config(scenario, "sst_merge", pair, sst_models(scenario))
    assert_fails(scenario, tmp_path, config, "collected on different models")


def test_check_fingerprint_false_accepts_fishers_of_another_checkpoint(scenario, tmp_path, fishers):
    names = linear_names()
    shapes = {n: tuple(scenario.base_weights[n].shape) for n in names}
    other = "f" * 64
    write_kfac(tmp_path / "fp.safetensors", names, shapes, seed=5, fingerprint=other)
    write_kfac(
        tmp_path / "fp_b.safetensors", names, shapes, seed=6, objective="kl", fingerprint=other
    )
    pair = shared(tmp_path / "fp.safetensors", tmp_path / "fp_b.safetensors")
    unchecked = shared(
        tmp_path / "fp.safetensors", tmp_path / "fp_b.safetensors", check_fingerprint=False
    )
    config = merge_config(scenario, "sst_merge", unchecked, sst_models(scenario))
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sst_merge_report.json").read_text())
    assert set(report["fingerprint_checks"].values()) == {"not checked (check_fingerprint: false)"}
    # the same files with the default check are refused
    shutil.rmtree(out)
    config = merge_config(scenario, "sst_merge", pair, sst_models(scenario))
    assert_fails(scenario, tmp_path, config, "collected on another model", "ffffffffffff")
    # shapes are still checked
    write_kfac(tmp_path / "small.safetensors", names, {n: (8, 8) for n in names}, seed=4)
    bad = shared(tmp_path / "small.safetensors", fishers[1], check_fingerprint=False)
    config = merge_config(scenario, "sst_merge", bad, sst_models(scenario))
    assert_fails(scenario, tmp_path, config, "shape (8, 8)")


def test_matching_fingerprint_is_accepted_and_reported(scenario, tmp_path, fishers):
    names = linear_names()
    shapes = {n: tuple(scenario.base_weights[n].shape) for n in names}
    right = checkpoint_fingerprint(scenario.base)
    write_kfac(tmp_path / "fp.safetensors", names, shapes, seed=5, fingerprint=right)
    config = merge_config(
        scenario, "sst_merge", shared(tmp_path / "fp.safetensors", fishers[1]), sst_models(scenario)
    )
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output
    assert "matches" in (out / "sst_merge_report.json").read_text()


def test_missing_entries_with_nonzero_safety_delta(scenario, tmp_path):
    names = linear_names()
    shapes = {n: tuple(scenario.base_weights[n].shape) for n in names}
    only_q = [n for n in names if "q_proj" in n]
    write_kfac(tmp_path / "h.safetensors", only_q, shapes, seed=7)
    write_kfac(tmp_path / "b.safetensors", only_q, shapes, seed=8, objective="kl")
    config = merge_config(
        scenario,
        "sst_merge",
        shared(tmp_path / "h.safetensors", tmp_path / "b.safetensors"),
        sst_models(scenario),
    )
    v_proj = next(n for n in names if "v_proj" in n)
    assert_fails(scenario, tmp_path, config, v_proj, "no Fisher entries", "missing_fisher: error")


def test_fisher_named_for_another_model(scenario, tmp_path):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((4, 6)))
    fisher = KFACFisher(x @ x.T, x @ x.T)
    meta = FisherMetadata("kfac", "refusal", 1, 1, "0" * 64)
    for name in ("h", "b"):
        write_fisher_file(
            tmp_path / f"{name}.safetensors", {"transformer.h.0.attn.weight": fisher}, meta
        )
    models = sst_models(scenario)
    config = merge_config(
        scenario,
        "sst_merge",
        shared(tmp_path / "h.safetensors", tmp_path / "b.safetensors", missing_fisher="keep"),
        models,
    )
    assert_fails(scenario, tmp_path, config, "has Fisher entries for none of the merged tensors")


def test_bad_values(scenario, tmp_path, fishers):
    config = merge_config(
        scenario, "sst_merge", shared(*fishers, utility_merge="tie"), sst_models(scenario)
    )
    assert_fails(
        scenario, tmp_path, config, "utility_merge: unknown value 'tie'", "did you mean 'ties'"
    )
    parameters = shared(*fishers, energy=0.5)
    config = merge_config(scenario, "sst_merge", parameters, sst_models(scenario))
    assert_fails(scenario, tmp_path, config, "select 'top_k' does not take parameter(s) ['energy']")
    config = merge_config(
        scenario, "sst_merge", shared(*fishers, write_adapter="safety"), sst_models(scenario)
    )
    assert_fails(scenario, tmp_path, config, "write_adapter: safety needs lora-kind Fisher files")


def test_factor_error_during_merge_removes_the_new_output(scenario, tmp_path, fishers):
    """Factor values are checked per tensor; a failure there still leaves no output folder."""
    names = linear_names()
    a = np.eye(16)
    a[0, 1] = a[1, 0] = 2.0  # eigenvalue −1: passes the header checks, fails when loaded
    meta = FisherMetadata("kfac", "kl", 1, 1, "0" * 64)
    from safetensors.torch import save_file

    tensors = {}
    for n in names:
        tensors[f"{n}::A"] = torch.from_numpy(a).float()
        tensors[f"{n}::G"] = torch.eye(scenario.base_weights[n].shape[0])
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta.as_header())
    config = merge_config(
        scenario,
        "sst_merge",
        shared(fishers[0], tmp_path / "bad.safetensors"),
        sst_models(scenario),
    )
    assert_fails(scenario, tmp_path, config, "not positive semi-definite")


def test_report_is_strict_json_when_nothing_is_kept(scenario, tmp_path, fishers):
    """``k: 0`` keeps no coordinate (λ of the kept set undefined): the report stays strict JSON."""
    import json

    config = merge_config(scenario, "sst_merge", shared(*fishers, k=0), sst_models(scenario))
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output

    def reject(constant):
        raise ValueError(f"non-JSON constant {constant}")

    report = json.loads((out / "sst_merge_report.json").read_text(), parse_constant=reject)
    record = report["tensors"][linear_names()[0]]
    assert record["kept"] == 0 and record["lambda_min_kept"] is None
    assert record["gain_kept_fraction"] == 0.0


def test_configuration_errors_are_reported_as_such(scenario, tmp_path, fishers):
    """An error every tensor shares is a configuration error (not one of the first tensor);
    one that only a tensor's filtered parameters cause names that tensor."""
    models = sst_models(scenario, utility={"role": "safety"})
    config = merge_config(scenario, "sst_merge", shared(*fishers), models)
    result, out = run_cli(scenario, tmp_path, config)
    message = str(result.exception)
    assert message.startswith("sst_merge: invalid merge configuration: "), message
    assert "tensor" not in message and "embed_tokens" not in message
    assert not out.exists()

    v_proj = linear_names()[1]
    damping = [{"filter": v_proj.removesuffix(".weight"), "value": -1.0}, {"value": 0.01}]
    config = merge_config(
        scenario, "sst_merge", shared(*fishers, damping=damping), sst_models(scenario)
    )
    result, out = run_cli(scenario, tmp_path, config)
    message = str(result.exception)
    assert message.startswith(f"sst_merge: invalid parameters for tensor {v_proj} "), message
    assert "damping must be >= 0.0, got -1.0" in message
    assert not out.exists()


@pytest.mark.parametrize(
    ("where", "key", "hint"),
    [
        ("top", "paramters", "parameters"),
        ("top", "dtyp", "dtype"),
        ("model", "paramters", "parameters"),
        ("condition", "filtr", "filter"),
    ],
)
def test_misspelled_section_keys_fail_through_the_cli(
    scenario, tmp_path, fishers, where, key, hint
):
    """mergekit's pydantic models drop unknown keys; for an SST method the raw YAML is checked."""
    config = merge_config(scenario, "sst_merge", shared(*fishers), sst_models(scenario))
    if where == "top" and key == "paramters":
        config[key] = config.pop("parameters")
    elif where == "top":
        config[key] = config.pop("dtype")
    elif where == "model":
        config["models"][1][key] = config["models"][1].pop("parameters")
    else:
        config["parameters"]["damping"] = [{"value": 0.5, key: "v_proj"}]
    assert_fails(scenario, tmp_path, config, f"'{key}'", f"did you mean '{hint}'")


def test_misspelled_section_key_fails_in_a_programmatic_run_merge(scenario, tmp_path, fishers):
    """run_merge without config_source: the configuration object itself keeps the unknown keys."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from sst_merge_plugin.core import SSTError

    config = merge_config(scenario, "sst_merge", shared(*fishers), sst_models(scenario))
    config["models"][0]["paramters"] = config["models"][0].pop("parameters")
    options = MergeOptions(lora_merge_cache=str(scenario.lora_cache), copy_tokenizer=False)
    with pytest.raises(
        SSTError,
        match=r"models\[0\] \(.*\): unknown key 'paramters' \(did you mean 'parameters'\?\)",
    ):
        run_merge(MergeConfiguration.model_validate(config), str(tmp_path / "out"), options=options)
    assert not (tmp_path / "out").exists()


def test_unknown_keys_stay_ignored_for_other_methods(scenario, tmp_path):
    """Only configurations naming an SST method are checked; mergekit's own methods behave as
    before (unknown keys ignored)."""
    models = [{"model": scenario.ref(scenario.utility[0]), "parameters": {"weight": 1.0}}]
    config = merge_config(scenario, "task_arithmetic", {}, models)
    config["dtyp"] = "float16"
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()


def folder_digest(folder):
    """Every file under ``folder`` (relative path → bytes' sha256)."""
    import hashlib

    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def corrupted_copy(source, target, name, entry, change):
    """``source`` (a Fisher file) saved as ``target`` with ``change(tensor)`` applied to the
    entry ``name::entry`` — bypassing the writer's validation."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    key = f"{name}::{entry}"
    tensors[key] = change(tensors[key].clone())
    save_file(tensors, str(target), metadata=metadata)
    return target


def lora_pair(scenario, folder):
    names = linear_names()
    write_lora(folder / "h.safetensors", scenario, names, seed=1)
    write_lora(folder / "b.safetensors", scenario, names, seed=2, objective="kl")
    return folder / "h.safetensors", folder / "b.safetensors"


def with_nan(tensor):
    tensor.view(-1)[1] = float("nan")
    return tensor


@pytest.mark.parametrize(
    ("entry", "change", "message"),
    [
        ("G_r", with_nan, "entry G_r: contains 1 NaN/Inf value(s)"),
        ("U", lambda t: torch.cat([t, t[:, :1]], dim=1), "do not fit together: U (8, 5)"),
        ("A_r", lambda t: torch.eye(5, dtype=t.dtype), "A_r (5, 5), G_r (4, 4)"),
    ],
)
def test_bad_fisher_entries_fail_before_anything_is_written(
    scenario, tmp_path, entry, change, message
):
    """Every entry of every tensor the merge uses is checked (finite, consistent shapes) up
    front, not when the merge reaches it; the last tensor is the bad one."""
    harm, benign = lora_pair(scenario, tmp_path)
    name = linear_names()[-1]
    corrupted_copy(benign, tmp_path / "bad.safetensors", name, entry, change)
    config = merge_config(
        scenario, "sst_merge", shared(harm, tmp_path / "bad.safetensors"), sst_models(scenario)
    )
    assert_fails(scenario, tmp_path, config, "the merge cannot run", name, message)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_failed_merge_leaves_an_existing_output_untouched(scenario, tmp_path, fishers):
    """A failure found only while merging (a factor that is not PSD) into an existing output
    folder: the folder keeps exactly its previous files, and no partial shards appear."""
    result, out = run_cli(
        scenario,
        tmp_path,
        merge_config(scenario, "sst_merge", shared(*fishers), sst_models(scenario)),
    )
    assert result.exit_code == 0, result.output
    before = folder_digest(out)
    name = linear_names()[-1]

    def not_psd(tensor):
        tensor[0, 1] = tensor[1, 0] = 10 * float(tensor.abs().max())
        return tensor

    corrupted_copy(fishers[1], tmp_path / "bad.safetensors", name, "A", not_psd)
    config = merge_config(
        scenario,
        "sst_merge",
        shared(fishers[0], tmp_path / "bad.safetensors"),
        sst_models(scenario),
    )
    from mergekit.scripts.run_yaml import main

    path = write_config(tmp_path / "config.yml", config)
    args = [str(path), str(out), "--no-copy-tokenizer", "--lora-merge-cache",
            str(scenario.lora_cache), "--out-shard-size", "100"]  # fmt: skip
    failed = CliRunner().invoke(main, args)
    assert failed.exit_code != 0 and "not positive semi-definite" in str(failed.exception)
    assert folder_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_rerun_replaces_the_whole_output_folder(scenario, tmp_path):
    """A rerun without write_adapter does not leave the previous run's sst_adapter/ (or any
    other stale file) next to the new model."""
    harm, benign = lora_pair(scenario, tmp_path)
    config = merge_config(
        scenario, "sst_merge", shared(harm, benign, write_adapter="safety"), sst_models(scenario)
    )
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output
    assert (out / "sst_adapter" / "adapter_model.safetensors").is_file()
    (out / "notes.txt").write_text("stale")
    config = merge_config(scenario, "sst_merge", shared(harm, benign), sst_models(scenario))
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output
    assert not (out / "sst_adapter").exists() and not (out / "notes.txt").exists()
    assert "adapter" not in json.loads((out / "sst_merge_report.json").read_text())
    assert (out / "model.safetensors").is_file()


def test_fisher_restricted_to_another_adapter_fails(scenario, tmp_path):
    """lora Fishers collected with the wrong --restrict-to: the recorded adapter digest differs
    and the safety adapter's update lies outside their subspace."""
    names = linear_names()
    other = scenario.utility[0]
    write_lora(tmp_path / "h.safetensors", scenario, names, seed=1, adapter=other)
    write_lora(tmp_path / "b.safetensors", scenario, names, seed=2, objective="kl", adapter=other)
    pair = shared(tmp_path / "h.safetensors", tmp_path / "b.safetensors")
    config = merge_config(scenario, "sst_merge", pair, sst_models(scenario))
    assert_fails(
        scenario,
        tmp_path,
        config,
        f"harm_fisher '{tmp_path / 'h.safetensors'}' was collected with --restrict-to '{other}'",
        f"benign_fisher '{tmp_path / 'b.safetensors'}' was collected with --restrict-to",
        f"recollect it with --restrict-to {scenario.safety}",
    )


def test_resaved_adapter_with_the_same_subspaces_is_accepted(scenario, tmp_path):
    """Another adapter file (digest) with the same factors is not an error: the check compares
    the adapter's update with the Fisher's subspace when the digests differ."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "safety_copy"
    shutil.copytree(scenario.safety, copy)
    weights = copy / "adapter_model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"format": "pt", "resaved": "1"})
    lora_pair(scenario, tmp_path)  # restricted to (and with the digest of) the original file
    models = sst_models(scenario)
    models[0]["model"] = scenario.ref(copy)
    config = merge_config(
        scenario,
        "sst_merge",
        shared(tmp_path / "h.safetensors", tmp_path / "b.safetensors"),
        models,
    )
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()


def test_certainly_wrong_fisher_pairs_and_safety_factors_fail(scenario, tmp_path, fishers):
    """One file (or one content) as both Fishers, harm/benign swapped (objectives kl/refusal),
    a negative scale or safety weight: errors before anything is written."""
    harm, benign = fishers
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(harm, copy)
    cases = [
        (shared(harm, harm), {}, "harm_fisher and benign_fisher are the same file"),
        (shared(harm, copy), {}, "have the same content (sha256"),
        (shared(benign, harm), {}, "are swapped: harm_fisher"),
        (shared(harm, benign, scale=-1.0), {}, "scale is -1.0"),
        (shared(harm, benign), {"role": "safety", "weight": -0.5}, "safety input's weight is -0.5"),
    ]
    for parameters, safety, message in cases:
        config = merge_config(scenario, "sst_merge", parameters, sst_models(scenario, safety))
        assert_fails(scenario, tmp_path, config, message)


def test_suspicious_settings_merge_with_a_named_warning(scenario, tmp_path, fishers):
    """A zero safety factor and unexpected Fisher objectives merge (exit 0), each with a
    warning that names its check."""
    from sst_merge_plugin.method.checks import SSTCheckWarning

    harm, benign = fishers
    config = merge_config(
        scenario, "sst_merge", shared(harm, benign, scale=0.0), sst_models(scenario)
    )
    with pytest.warns(SSTCheckWarning, match=r"^\[zero_safety_patch\] scale · weight"):
        result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output
    names = linear_names()
    shapes = {n: tuple(scenario.base_weights[n].shape) for n in names}
    write_kfac(tmp_path / "lm.safetensors", names, shapes, seed=9, objective="lm")
    shutil.rmtree(out)
    config = merge_config(
        scenario, "sst_merge", shared(tmp_path / "lm.safetensors", benign), sst_models(scenario)
    )
    with pytest.warns(SSTCheckWarning, match=r"^\[fisher_objectives\] harm_fisher .* 'lm'"):
        result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output


def dual(scenario, tmp_path, cost, gain, **extra):
    """``project: utility`` on the safety input and utility adapter 0."""
    parameters = {"project": "utility", "cost_fisher": str(cost), "select": "soft", **extra}
    models = sst_models(scenario, utility={"gain_fisher": str(gain)})
    return merge_config(scenario, "sst_merge", parameters, models)


def test_dual_files_are_checked_up_front(scenario, tmp_path):
    """``project: utility``: a cost Fisher without entries for tensors the utility adapter
    changes, one file as gain and cost, and lora-kind files restricted to the safety adapter
    (the utility delta lies outside them) fail before anything is written; files restricted to
    the utility adapter merge."""
    safety_names, utility_names = linear_names(), linear_names(UTILITY_TARGETS)
    shapes = {n: tuple(scenario.base_weights[n].shape) for n in utility_names}
    write_kfac(tmp_path / "c.safetensors", utility_names, shapes, seed=3)
    write_kfac(tmp_path / "g.safetensors", utility_names, shapes, seed=4, objective="lm")
    write_kfac(tmp_path / "c_qv.safetensors", safety_names, shapes, seed=3)
    up = "model.layers.0.mlp.up_proj.weight"
    assert_fails(
        scenario,
        tmp_path,
        dual(scenario, tmp_path, tmp_path / "c_qv.safetensors", tmp_path / "g.safetensors"),
        f"{up}: cost_fisher '{tmp_path / 'c_qv.safetensors'}' has no Fisher entries for this "
        "tensor, but its delta is non-zero",
    )
    assert_fails(
        scenario,
        tmp_path,
        dual(scenario, tmp_path, tmp_path / "c.safetensors", tmp_path / "c.safetensors"),
        "gain_fisher and cost_fisher are the same file",
    )
    utility, other = scenario.utility
    # gain files record the adapter applied while collecting: another skill's gain is refused
    for name, adapter in (("g_other", other), ("g_own", utility)):
        write_kfac(tmp_path / f"{name}.safetensors", utility_names, shapes, seed=4,
                   objective="lm", applied=adapter)  # fmt: skip
    assert_fails(
        scenario,
        tmp_path,
        dual(scenario, tmp_path, tmp_path / "c.safetensors", tmp_path / "g_other.safetensors"),
        f"gain_fisher '{tmp_path / 'g_other.safetensors'}' was collected with the adapter "
        f"'{other}' applied",
        f"but the utility input {scenario.ref(utility)}'s adapter",
    )
    config = dual(scenario, tmp_path, tmp_path / "c.safetensors", tmp_path / "g_own.safetensors")
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output
    shutil.rmtree(out)
    for role, seed in (("c", 5), ("g", 6)):  # restricted to each adapter's own modules
        write_lora(tmp_path / f"{role}_safety.safetensors", scenario, safety_names, seed)
        write_lora(tmp_path / f"{role}_utility.safetensors", scenario, utility_names, seed,
                   adapter=utility)  # fmt: skip
    keep = {"missing_fisher": "keep"}  # up/down have no entries in the safety-restricted files
    files = (tmp_path / "c_safety.safetensors", tmp_path / "g_safety.safetensors")
    assert_fails(
        scenario,
        tmp_path,
        dual(scenario, tmp_path, *files, **keep),
        f"cost_fisher '{files[0]}' was collected with --restrict-to '{scenario.safety}'",
        f"but the utility input {scenario.ref(utility)}'s adapter",
    )
    config = dual(scenario, tmp_path, tmp_path / "c_utility.safetensors",
                  tmp_path / "g_utility.safetensors")  # fmt: skip
    result, out = run_cli(scenario, tmp_path, config)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sst_merge_report.json").read_text())
    assert list(report["summary"]["utility"]) == [scenario.ref(utility)]
