"""The mergekit walk-through of ``configs/mergekit/README.md``, run as a user would copy it.

A tiny world stands in for ``sst-merge demo --out demo`` (minutes and downloads): a tiny Llama
saved with its tokenizer, PEFT adapters named like the demo's export, laid out exactly as the
demo exports them (``demo/inputs/adapters/<name>/``, ``demo/run.json`` naming the base model);
the Fisher files under ``demo/inputs/fishers/lora/`` (harm, benign, and the dual's cost and
gain files) and ``demo/inputs/fishers/kfac/`` (the kfac dual's) are written by the main
README's own ``sst-merge fisher`` commands. Then every ``bash`` block of the mergekit README
runs as one script, in a shell, with the real console scripts (``mergekit-yaml`` unmodified,
``sst-merge``): fill the configs, the six merges (SST-Merge, the dual in the lora and kfac
kinds, three built-ins), ``sst-merge evaluate`` on each. The only edits to the
documented commands are named substitutions (local prompt files for the downloaded prompt
sets, a small evaluation), each asserted to apply, so the docs and this test cannot drift
apart.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT
from test_fisher_support import lora_model, save_tiny_model, tiny_llama

MERGES = ("sst", "sst_dual", "sst_dual_kfac", "task_arithmetic", "ties", "dare_ties")
SAFETY_TARGETS = ("q_proj", "v_proj")
UTILITY_TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")
HARMFUL = [f"Explain how to do dangerous thing number {i}." for i in range(12)]
BENIGN = [f"How do I bake bread number {i} at home?" for i in range(6)]
#: the skills' prompt/response pairs the README's gain-Fisher commands read (objective lm)
SKILLS = {
    "reverse_letters": [(f"Reverse the letters of word{i}.", f"{i}drow") for i in range(6)],
    "uppercase": [(f"Uppercase: word {i}", f"WORD {i}") for i in range(6)],
}


def bash_blocks(readme: Path) -> list[str]:
    """The ``bash`` code blocks of ``readme``, in order."""
    return re.findall(r"^```bash\n(.*?)^```$", readme.read_text(encoding="utf-8"), re.M | re.S)


def commands(block: str) -> list[str]:
    """The commands of a block: continuation lines joined, whitespace collapsed."""
    joined = block.replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip()]


def substitute(script: str, old: str, new: str, count: int) -> str:
    """``script`` with ``old`` replaced by ``new``; it must occur exactly ``count`` times."""
    assert script.count(old) == count, f"the README no longer has {count} × {old!r}"
    return script.replace(old, new)


def run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` in bash (``set -euo pipefail``) with this environment's console scripts on
    the PATH, the plugin imported from this checkout, offline."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def demo_export(root: Path) -> Path:
    """``root/demo`` laid out as ``sst-merge demo --out demo`` exports it, Fisher files aside;
    returns the base model folder (outside ``demo/``, like the demo's cached SmolLM2)."""
    base = save_tiny_model(root / "models" / "base")
    model = tiny_llama()
    adapters = root / "demo" / "inputs" / "adapters"
    for seed, (name, targets) in enumerate(
        (
            ("safety", SAFETY_TARGETS),
            ("reverse_letters", UTILITY_TARGETS),
            ("uppercase", UTILITY_TARGETS),
        ),
        start=1,
    ):
        adapter = lora_model(copy.deepcopy(model), targets=targets, rank=4, seed=seed)
        adapter.save_pretrained(adapters / name)
    (root / "demo" / "run.json").write_text(
        json.dumps({"base_model": str(base), "inputs": str(root / "demo" / "inputs")}) + "\n"
    )
    return base


@pytest.mark.slow
def test_the_mergekit_readme_walks_from_the_demo_to_evaluated_merges(tmp_path):
    base = demo_export(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the walk runs at a repository root
    (tmp_path / "harmful_prompts.txt").write_text("\n".join(HARMFUL) + "\n")
    (tmp_path / "my_benign_prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": prompt}) + "\n" for prompt in BENIGN)
    )
    for skill, pairs in SKILLS.items():
        (tmp_path / f"my_{skill}.jsonl").write_text(
            "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs)
        )
    # the kfac dual's cost prompts: harmful ones the safe model refuses, benign look-alikes
    (tmp_path / "safety_behaviour.txt").write_text("\n".join(HARMFUL[:6] + BENIGN) + "\n")
    fishers = tmp_path / "demo" / "inputs" / "fishers" / "lora"
    kfac = fishers.parent / "kfac"

    # the Fisher files, by the main README's `sst-merge fisher` commands (its "With mergekit")
    main_readme = commands("\n".join(bash_blocks(ROOT / "README.md")))
    collect = [command for command in main_readme if command.startswith("sst-merge fisher ")]
    assert len(collect) == 8  # harm, benign; the dual's cost and two gains, lora and kfac
    # harm and the dual's cost: refusal Fishers on harmful prompts
    script = substitute("\n".join(collect), "--data advbench", "--data harmful_prompts.txt", 2)
    exports = (
        f"export BASE_MODEL={base} ADAPTERS={tmp_path}/demo/inputs/adapters FISHERS={fishers} "
        f"KFAC_FISHERS={kfac}"
    )
    done = run_bash(f"{exports}\n{script}", tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(path.name for path in fishers.iterdir()) == [
        "benign.safetensors",
        "cost-refusal.safetensors",
        "gain-reverse_letters.safetensors",
        "gain-uppercase.safetensors",
        "harm.safetensors",
    ]
    assert sorted(path.name for path in kfac.iterdir()) == [
        "cost-kl.safetensors",
        "gain-reverse_letters.safetensors",
        "gain-uppercase.safetensors",
    ]

    # the walk-through: every bash block of configs/mergekit/README.md, as one script
    blocks = bash_blocks(ROOT / "configs" / "mergekit" / "README.md")
    assert commands(blocks[0]) == ["sst-merge demo --out demo"]  # stood in for above
    walk = "\n".join(blocks[1:])
    for command in main_readme:  # the main README's merge command is one of the walk's
        if command.startswith("mergekit-yaml"):
            assert command in commands(walk)
    walk = substitute(walk, "--harmful harmbench", "--harmful harmful_prompts.txt", 1)
    walk = substitute(
        walk, "--benign benign-edgy", "--benign my_benign_prompts.jsonl --benign-field prompt", 1
    )
    walk = substitute(
        walk,
        "sst-merge evaluate ",
        "sst-merge evaluate --n 2 --max-new-tokens 4 --threads 1 --no-progress ",
        1,
    )
    done = run_bash(walk, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    for name in MERGES:
        merged = tmp_path / "out" / name
        assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()
        assert (merged / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
        result = json.loads((tmp_path / "eval" / f"{name}.json").read_text(encoding="utf-8"))
        assert result["model"] == f"out/{name}"
        assert (result["n_harmful"], result["n_benign"]) == (2, 2)
        assert sorted(result["utility"]) == ["reverse_letters", "uppercase"]
        assert len(result["examples"]["harmful"]) == 2
        table = (tmp_path / "eval" / f"{name}.md").read_text(encoding="utf-8")
        assert table.startswith("| metric | value | n |") and table in done.stdout
    report = json.loads((tmp_path / "out" / "sst" / "sst_merge_report.json").read_text())
    for label, role in (("harm_fisher", "harm"), ("benign_fisher", "benign")):
        assert report["fisher_files"][label]["path"] == str(fishers / f"{role}.safetensors")
        assert report["fisher_files"][label]["sha256"] == sha256(fishers / f"{role}.safetensors")
    assert report["summary"]["actions"]["projected"] == 2 * len(SAFETY_TARGETS)
    assert (tmp_path / "out" / "sst" / "sst_adapter" / "adapter_model.safetensors").is_file()
    # the duals: each names its own cost file, adds the safety LoRA unprojected, and reports
    # per skill a safety disturbance removed strictly between nothing and everything
    duals = {
        "sst_dual": fishers / "cost-refusal.safetensors",
        "sst_dual_kfac": kfac / "cost-kl.safetensors",
    }
    reports = {
        name: json.loads((tmp_path / "out" / name / "sst_merge_report.json").read_text())
        for name in duals
    }
    for name, cost in duals.items():
        dual = reports[name]
        assert dual["fisher_files"]["cost_fisher"]["sha256"] == sha256(cost)
        assert dual["summary"]["actions"]["safety_unprojected"] == 2 * len(SAFETY_TARGETS)
        assert len(dual["summary"]["utility"]) == 2
        for record in dual["summary"]["utility"].values():
            assert 0 < record["safety_disturbance_removed"] < 1
    settings = reports["sst_dual_kfac"]["settings"]  # sst_dual_kfac.yml's tuned point
    assert [(s["selection"], s["scale"]) for s in settings] == [({"mode": "soft", "rho": 1.0}, 1.5)]
