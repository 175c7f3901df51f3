"""``sst-merge tune`` on the tiny world: every grid point merged and scored on the validation
files, the rule's choice (checked against the rule applied to the reported scores), a tuned
configuration that the unmodified ``mergekit-yaml`` merges, and bad input rejected before any
merge."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from test_fusion_bench_world import World
from test_fusion_bench_world import world as world  # the fixture

from sst_merge_plugin import cli
from sst_merge_plugin.bench.tuning import Scores, SelectionRule, apply_knobs


def _config(world: World, path: Path) -> dict:
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(world.base),
        "dtype": "float32",
        "models": [
            {"model": f"{world.base}+{world.adapter(name)}", "parameters": {"weight": 1.0}}
            for name in ("safety", "uppercase")
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return config


def _args(world: World, config: Path, out: Path, *extra: str) -> list[str]:
    return [
        "tune", str(config), "--out", str(out), "--safety-input", "/safety",
        "--harmful", str(world.data("harmful.txt")), "--benign", str(world.data("benign.txt")),
        "--utility", str(world.data("add.jsonl")), "--n-utility", "2", "--max-new-tokens", "3",
        "--workspace", str(out.parent / "ws"), "--no-progress", *extra,
    ]  # fmt: skip


def test_tune_chooses_by_the_rule_and_writes_a_runnable_config(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_file = tmp_path / "ta.yml"
    config = _config(world, config_file)
    out = tmp_path / "tuned"
    argv = _args(world, config_file, out, "--knob", "safety_weight=0.5,2",
                 "--knob", "utility_weight=1", "--min-refusal", "0.5")  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "tuning.json").read_text())
    knobs = [point["knob"] for point in report["points"]]
    assert knobs == [
        {"safety_weight": 0.5, "utility_weight": 1.0},
        {"safety_weight": 2.0, "utility_weight": 1.0},
    ]
    scores = [
        Scores(p["harmful_refusal"], p["benign_over_refusal"], p["utility_mean"])
        for p in report["points"]
    ]
    chosen = SelectionRule(0.5, 0.05).choose(scores, report["base"]["benign_over_refusal"])
    assert report["chosen"]["index"] == chosen.index
    assert report["chosen"]["feasible"] == chosen.feasible
    tuned_text = (out / "tuned.yml").read_text()
    assert tuned_text.startswith("# Tuned by `sst-merge tune` on the validation split")
    tuned = yaml.safe_load(tuned_text)
    expected = apply_knobs(config, report["chosen"]["knob"], lambda e: "/safety" in e["model"])
    assert tuned == expected
    for name in ("tuning.md", "tuning.png"):
        assert (out / name).stat().st_size > 0
    merged = tmp_path / "merged"
    result = subprocess.run(
        ["mergekit-yaml", str(out / "tuned.yml"), str(merged), "--lora-merge-cache",
         str(tmp_path / "cache"), "--copy-tokenizer"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(merged.glob("*.safetensors"))


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        (["--knob", "scale"], "expected NAME=V1,V2"),
        (["--knob", "scale=big"], "must be numbers"),
        (["--knob", "safety_weight=1", "--safety-input", "/nowhere"], "exactly one safety input"),
    ],
)
def test_tune_rejects_bad_input_before_merging(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture, knobs: list, message: str
) -> None:
    config_file = tmp_path / "ta.yml"
    _config(world, config_file)
    out = tmp_path / "tuned"
    assert cli.main(_args(world, config_file, out) + knobs) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "ws").exists()
    assert cli.main(_args(world, tmp_path / "missing.yml", out, "--knob", "scale=1")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_tuning_without_skills_shows_no_utility_rather_than_zero() -> None:
    """Without ``--utility`` no skill is scored: the table says ``–``, not a utility of 0.00
    that reads like a merge that lost every skill."""
    from sst_merge_plugin.bench.tune import tuning_markdown

    point = {"knob": {"rho": 0.3}, "harmful_refusal": 1.0, "benign_over_refusal": 0.1}
    report = {
        "points": [{**point, "utility_mean": None}, {**point, "utility_mean": 0.5}],
        "chosen": {"index": 0, "reason": "a reason"},
        "base": {"harmful_refusal": 0.0, "benign_over_refusal": 0.0, "utility_mean": None},
    }
    rows = tuning_markdown(report).splitlines()
    assert rows[2] == "| rho=0.3 | 1.00 | 0.10 | – | **yes** |"
    assert rows[3] == "| rho=0.3 | 1.00 | 0.10 | 0.50 |  |"
    assert rows[4] == "| base model | 0.00 | 0.00 | – | |"
