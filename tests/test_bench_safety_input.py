"""``benchmarks/safety_utility/safety_input.py``: variants of the safety LoRA scored alone.

The rule worked out by hand on synthetic rows; the variants' specs; an end-to-end run on the tiny
world (real training, merging and scoring through the pipeline) whose choice is the rule's pick
among the re-read validation rows, whose ``profile`` row is the benchmark's own ``safety alone``
job (same cache key), whose ``--sweeps`` merge the chosen variant's adapter, and whose bad
variant list or sweep name fails before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
from support import load_script
from test_bench_pipeline import PROMPTS, _profile
from test_fusion_bench_world import World
from test_fusion_bench_world import world as world  # the fixture

from sst_merge_plugin.bench.pipeline import Pipeline
from sst_merge_plugin.bench.scoring import eval_key
from sst_merge_plugin.core.errors import SSTError

SCRIPT = (
    Path(__file__).resolve().parent.parent / "benchmarks" / "safety_utility" / "safety_input.py"
)


@pytest.fixture(scope="module")
def safety_input() -> ModuleType:
    return load_script("benchmarks/safety_utility/safety_input.py", "safety_input")


def _row(refusal: float, over: float) -> dict:
    return {"harmful_refusal": refusal, "benign_over_refusal": over}


def test_the_rule_prefers_low_over_refusal_among_refusing_variants(safety_input) -> None:
    rows = {"a": _row(0.97, 0.10), "b": _row(0.95, 0.05), "c": _row(0.90, 0.00)}
    assert safety_input.choose(rows, 0.95) == "b"  # c refuses too little
    assert safety_input.choose(rows, 0.99) == "c"  # none meets it: refusal − over 0.90 is best
    tie = {"a": _row(0.96, 0.05), "b": _row(0.98, 0.05)}
    assert safety_input.choose(tie, 0.95) == "b"  # same over-refusal: the higher refusal


def test_variant_specs_override_the_profiles_adapter(safety_input, world: World) -> None:
    own = _profile(world).adapters[0]
    longer = safety_input.variant_spec(own, {"steps": 7})
    assert longer.training.steps == 7 and longer.training.rank == own.training.rank
    assert (longer.n_train, longer.name) == (own.n_train, own.name)
    assert safety_input.variant_spec(own, {"n_train": 1}).n_train == 1
    assert safety_input.variant_spec(own, {}) == own
    assert set(safety_input.VARIANTS) >= {"profile"} and safety_input.VARIANTS["profile"] == {}


def test_variants_end_to_end_on_the_tiny_world(
    safety_input, world: World, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    profile = _profile(world)
    variants = {"profile": {}, "one_harmful": {"n_train": 1}, "more_steps": {"steps": 6}}
    out = tmp_path / "out"
    summary = safety_input.run_variants(
        profile, tmp_path / "ws", out, variants, 0.5, sweeps=("task_arithmetic",),
        prompts=PROMPTS, model_dir=world.base, progress=False,
    )  # fmt: skip
    assert json.loads((out / "results.json").read_text()) == summary
    assert sorted(p.name for p in out.iterdir()) == [
        "merged", "results.json", "results.md", "safety_input.png",
    ]  # fmt: skip
    assert (out / "safety_input.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(set(summary["adapters"].values())) == 3  # three different trainings
    rows = summary["validation_rows"]
    assert list(rows) == list(variants)
    assert summary["chosen"] == safety_input.choose(rows, 0.5)
    assert list(summary["test_rows"]) == list(dict.fromkeys(("profile", summary["chosen"])))
    report = (out / "results.md").read_text()
    for name, row in rows.items():
        assert row["n_harmful"] == profile.validation.n_harmful
        assert name in report
    # the profile row is the benchmark's own "safety alone" job: its cached records are reused
    pipeline = Pipeline(profile, tmp_path / "ws", prompts=PROMPTS, model_dir=world.base,
                        progress=False)  # fmt: skip
    own = next(job for job in pipeline.merges.references() if job.method == "safety alone")
    assert summary["adapters"]["profile"] == pipeline.adapters.folder(profile.adapters[0]).name
    for split in (profile.validation, profile.test):
        assert (tmp_path / "ws" / "evals" / f"{eval_key(own.key, split)}.json").is_file()
    # --sweeps: the named sweep under the protocol, merging the chosen variant's adapter
    merged = json.loads((out / "merged" / "results.json").read_text())
    assert [m["method"] for m in merged["methods"]] == ["task_arithmetic"]
    chosen = safety_input.variant_spec(profile.adapters[0], variants[summary["chosen"]])
    with_chosen = replace(
        profile.with_sweeps(("task_arithmetic",)), adapters=(chosen, *profile.adapters[1:])
    )
    again = Pipeline(with_chosen, tmp_path / "ws", prompts=PROMPTS, model_dir=world.base,
                     progress=False)  # fmt: skip
    job = again.merges.job(with_chosen.sweeps[0], merged["methods"][0]["knob"])
    assert summary["adapters"][summary["chosen"]] in json.dumps(job.config)
    assert (tmp_path / "ws" / "evals" / f"{eval_key(job.key, profile.test)}.json").is_file()
    with pytest.raises(SSTError, match="unknown method"):
        safety_input.run_variants(
            profile, tmp_path / "ws", tmp_path / "none", variants, 0.5, sweeps=("nope",),
            prompts=PROMPTS, model_dir=world.base, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "none").exists()
    # without the profile's own adapter there is no reference row: refused before writing
    with pytest.raises(SSTError, match="'profile'"):
        safety_input.run_variants(
            profile, tmp_path / "ws", tmp_path / "none", {"one_harmful": {"n_train": 1}}, 0.5,
            prompts=PROMPTS, model_dir=world.base, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "none").exists()


def test_command_line_refuses_bad_input_before_writing(
    safety_input, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    for argv in (["--variants", "all_harmful"], ["--sweeps", "no_such_method"]):
        assert safety_input.main(["--out", str(out), "--workspace", str(tmp_path), *argv]) == 2
        assert "error:" in capsys.readouterr().err
    assert not out.exists()
