"""The real ``fusion_bench`` CLI, side by side: SST methods and built-ins on one tiny pool.

ONE multirun (CLI start-up is ~10 s) runs, in a subprocess from a clean temporary folder:

* ``sst_merge_tiny`` — a user config extending the shipped ``method/sst_merge`` with given
  K-FAC Fisher files, ``select: top_k``, TIES utility merge with per-model weights;
* ``sst_merge_collect`` — the shipped ``method/sst_merge`` collecting its (lora-kind) Fisher
  files from prompt files through ``fisher_collection``, into a test cache folder;
* the built-ins ``task_arithmetic``, ``ties_merging``, ``dare/ties_merging``;

all with the shipped pool ``CausalLMPool/sst_smollm2_lora`` (pointed at the tiny world) and the
shipped task pool ``sst_safety`` (pointed at small prompt files). The shipped configs are found
through the Hydra search-path plugin only (no ``--config-dir`` for them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_fusion_bench_world import World
from test_fusion_bench_world import world as world  # the fixture

SST_RUNS = ("sst_merge_tiny", "sst_merge_collect")
BUILTINS = ("task_arithmetic", "ties_merging", "dare/ties_merging")
METRICS = ("harmful_refusal", "benign_over_refusal", "utility_mean", "truefalse_accuracy")
TINY_SETTINGS = {"select": "top_k", "k": 6, "utility_merge": "ties"}


def _user_configs(world: World, root: Path) -> Path:
    """A user's config folder with two methods derived from the shipped ``sst_merge``."""
    folder = root / "user_configs" / "method"
    folder.mkdir(parents=True)
    settings = "\n".join(f"{key}: {value}" for key, value in TINY_SETTINGS.items())
    (folder / "sst_merge_tiny.yaml").write_text(
        "defaults:\n  - sst_merge\n  - _self_\n"
        f"harm_fisher: {world.harm_fisher}\nbenign_fisher: {world.benign_fisher}\n"
        f"{settings}\nweight: {{reverse_letters: 0.7, uppercase: 1.2}}\ndensity: 0.6\nfisher_collection: null\n"
    )
    (folder / "sst_merge_collect.yaml").write_text(
        "defaults:\n  - sst_merge\n  - _self_\n"
        "select: soft\n"
        "fisher_collection:\n"
        f"  harm_data: {world.data('harmful.txt')}\n"
        f"  benign_data: {world.data('benign.txt')}\n"
        "  max_examples: null\n  batch_size: 2\n  max_length: 32\n  response_tokens: 3\n"
        f"  split: all\n  cache_dir: {root / 'fisher_cache'}\n"
    )
    return folder.parent


@pytest.fixture(scope="module")
def multirun(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the multirun once; return the folder holding one log folder per method."""
    root = tmp_path_factory.mktemp("fusion_bench_cli")
    runs = root / "runs"
    command = [
        str(Path(sys.executable).parent / "fusion_bench"),
        "--config-dir",
        str(_user_configs(world, root)),
        "-m",
        f"method={','.join(SST_RUNS + BUILTINS)}",
        "modelpool=CausalLMPool/sst_smollm2_lora",
        f"modelpool.base_model={world.base}",
        f"modelpool.adapters_dir={world.root}",
        "taskpool=sst_safety",
        f"taskpool.evaluation.harmful={world.data('harmful.txt')}",
        f"taskpool.evaluation.benign={world.data('benign.txt')}",
        f"taskpool.evaluation.utility=[{world.data('add.jsonl')}]",
        f"taskpool.evaluation.truefalse={world.data('truefalse.json')}",
        "taskpool.evaluation.max_new_tokens=3",
        f"path.log_dir={runs}/${{hydra:runtime.choices.method}}",
        "merged_model_save_path=${path.log_dir}/merged",
        f"hydra.sweep.dir={root / 'sweep'}",
        "print_config=false",
        "seed=0",
    ]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return runs


@pytest.mark.parametrize("method", SST_RUNS + BUILTINS)
def test_every_run_writes_its_report_markdown_row_and_merged_model(
    multirun: Path, method: str
) -> None:
    run = multirun / method
    report = json.loads((run / "program_report.json").read_text())
    assert report["name"] == method
    for key in METRICS:
        assert 0.0 <= report[key] <= 1.0, key
    assert report["n_harmful"] == 2 and report["n_benign"] == 2 and report["n_truefalse"] == 2
    assert report["n_utility"] == {"add": 2}
    assert sum(report["harmful_rules"].values()) == 2
    assert len(report["examples"]["harmful"]) == 2
    markdown = (run / "sst_safety.md").read_text().splitlines()
    assert markdown[0].startswith("| method | knob | harmful refusal")
    assert len(markdown) == 3 and markdown[2].startswith(f"| {method} |")
    assert f"{report['harmful_refusal']:.3f}" in markdown[2]
    assert (run / "merged" / "model.safetensors").is_file()


def _merged(multirun: Path, method: str) -> dict[str, torch.Tensor]:
    return load_file(multirun / method / "merged" / "model.safetensors")


def test_sst_weights_equal_the_mergekit_path(multirun: Path, world: World, tmp_path: Path) -> None:
    """The FusionBench SST run and mergekit's run_merge give bit-identical weights."""
    import mergekit.merge
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    from sst_merge_plugin.mergekit import registration

    registration.install()  # idempotent; the installed .pth hook normally did it already

    weights = {"reverse_letters": 0.7, "uppercase": 1.2}
    config = {
        "merge_method": "sst_merge",
        "base_model": str(world.base),
        "dtype": "float32",
        "parameters": {
            "harm_fisher": str(world.harm_fisher),
            "benign_fisher": str(world.benign_fisher),
            "density": 0.6,
            **TINY_SETTINGS,
        },
        "models": [
            {
                "model": f"{world.base}+{world.adapter(name)}",
                "parameters": {"role": "safety"} if name == "safety" else {"weight": weights[name]},
            }
            for name in ("safety", "reverse_letters", "uppercase")
        ],
    }
    out = tmp_path / "mergekit_out"
    options = MergeOptions(
        lora_merge_cache=str(tmp_path / "lora_cache"), copy_tokenizer=False, write_model_card=False
    )
    mergekit.merge.run_merge(MergeConfiguration.model_validate(config), str(out), options=options)
    expected = load_file(out / "model.safetensors")
    merged = _merged(multirun, "sst_merge_tiny")
    assert set(merged) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(merged[name], tensor), name
    # and the projection did something: not the plain TIES merge of all adapters, not the base
    base = load_file(world.base / "model.safetensors")
    projected = [n for n in base if n.endswith("_proj.weight")]
    assert len(projected) == 14
    assert all(not torch.equal(merged[n], base[n]) for n in projected)
    ties = _merged(multirun, "ties_merging")
    assert all(not torch.equal(merged[n], ties[n]) for n in projected)


def test_sst_report_records_projection_and_fingerprint(multirun: Path) -> None:
    report = json.loads((multirun / "sst_merge_tiny" / "sst_merge_report.json").read_text())
    assert report["method"] == "sst_merge"
    assert report["summary"]["actions"] == {"projected": 14, "utility_only": 7}
    assert report["summary"]["kept_coordinates"] == 14 * 6
    assert set(report["fisher_files"]) == {"harm_fisher", "benign_fisher"}
    assert all(v.startswith("matches _pretrained_") for v in report["fingerprint_checks"].values())
    settings = report["settings"][0]
    assert settings["selection"] == {"mode": "top_k", "k": 6}
    assert settings["utility_merge"] == "ties"


def test_shipped_sst_merge_collects_lora_fishers_into_the_cache(
    multirun: Path, world: World
) -> None:
    from sst_merge_plugin.fisher.file import FisherFile
    from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

    report = json.loads((multirun / "sst_merge_collect" / "sst_merge_report.json").read_text())
    cache = multirun.parent / "fisher_cache"
    files = sorted(cache.glob("*.safetensors"))
    assert [f.name.split("-")[:3] for f in files] == [
        ["benign", "kl", "lora"],
        ["harm", "refusal", "lora"],
    ]
    described = {label: Path(info["path"]) for label, info in report["fisher_files"].items()}
    assert described == {"benign_fisher": files[0], "harm_fisher": files[1]}
    fingerprint = checkpoint_fingerprint(world.base)
    for path in files:
        opened = FisherFile(path)
        assert opened.kind == "lora" and opened.model_fingerprint == fingerprint
        assert opened.metadata["restrict_to"] == str(world.adapter("safety"))
        assert len(opened.weight_names()) == 14
    assert report["summary"]["actions"] == {"projected": 14, "utility_only": 7}
    assert report["settings"][0]["selection"] == {"mode": "soft", "rho": 1.0}


def test_dare_sees_the_lora_task_vectors(multirun: Path, world: World) -> None:
    """The pool loader leaves merged parameters trainable, so FusionBench's DARE (which skips
    frozen ones) changes every adapted weight."""
    base = load_file(world.base / "model.safetensors")
    dare = _merged(multirun, "dare/ties_merging")
    changed = [n for n in base if not torch.equal(dare[n], base[n])]
    assert sorted(changed) == sorted(n for n in base if n.endswith("_proj.weight"))
