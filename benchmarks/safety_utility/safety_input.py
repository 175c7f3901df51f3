"""The safety input on its own: variants of the full profile's safety LoRA, scored alone.

No merge can be more selective than its safety input (issue 14, item 7): the full profile's
first safety LoRA (604 harmful pairs) alone over-refused 0.09 of the over-refusal test prompts
(base: 0.00); this script chose the 302-pair one the profile uses now (0.01). This script
trains variants of it in the benchmark's workspace (:class:`~sst_merge_plugin.bench.adapters.
Adapters`, cached by content like every adapter), scores each alone (weight 1) on the
validation split, picks one by a declared rule on validation only — the lowest over-refusal
among the variants refusing ≥ ``--min-refusal``, else the highest refusal − over-refusal —
and scores the chosen variant and the profile's own on the test split. It writes
``results.md``, ``results.json`` and ``safety_input.png`` (validation refusal vs over-refusal
with 95 % intervals) to ``--out``; ``--sweeps`` runs those sweeps of the profile under the
protocol with the chosen variant as the safety input (``--out/merged/``: the benchmark's own
results files), to see what the better input does to the merges.

    python benchmarks/safety_utility/safety_input.py --threads 1 --out /tmp/safety-input
    python benchmarks/safety_utility/safety_input.py --out /tmp/si --sweeps task_arithmetic
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

#: the variants: name → overrides of the profile's safety AdapterSpec (``steps`` goes to its
#: training configuration); ``profile`` is the benchmark's own adapter
#: (absolute sizes: the profile adopted the variant ``half_harmful`` — the first 302 harmful
#: pairs, AdvBench goals only since they precede temaq's probes — after this comparison, so
#: ``profile`` is that adapter now; the committed results-safety-input/ call the 604-pair
#: adapter ``profile`` and the 302-pair one ``half_harmful``)
VARIANTS: dict[str, dict[str, Any]] = {
    "profile": {},
    # as many pairs (302), drawn uniformly from both sources (seeded by the training seed)
    # instead of the first 302 (AdvBench's goals only): more varied harmful instructions
    "mixed_302": {"harmful_sample": "seeded"},
    # every harmful instruction (604): the retain pairs are ~41 % of the data instead of ~58 %
    "all_harmful": {"n_train": 604},
    # all of them for twice the steps (about two passes over the pairs instead of one)
    "steps_240": {"n_train": 604, "steps": 240},
}


def variant_spec(spec: Any, overrides: Mapping[str, Any]) -> Any:
    """``spec`` with ``overrides`` applied (``steps`` to its training configuration)."""
    overrides = dict(overrides)
    if "steps" in overrides:
        overrides["training"] = replace(spec.training, steps=overrides.pop("steps"))
    return replace(spec, **overrides)


def row_label(name: str) -> str:
    """A variant's row label: the profile's own adapter keeps the benchmark's ``safety alone``
    (so its cached records are reused)."""
    return "safety alone" if name == "profile" else f"safety alone [{name}]"


def choose(rows: Mapping[str, Mapping[str, Any]], min_refusal: float) -> str:
    """The rule (validation rows only): the lowest over-refusal among the variants refusing at
    least ``min_refusal`` (ties: the higher refusal, then the name), else the highest refusal −
    over-refusal."""
    met = [n for n, r in rows.items() if r["harmful_refusal"] >= min_refusal]
    if met:
        return min(
            met, key=lambda n: (rows[n]["benign_over_refusal"], -rows[n]["harmful_refusal"], n)
        )
    return max(rows, key=lambda n: (rows[n]["harmful_refusal"] - rows[n]["benign_over_refusal"], n))


def plot(rows: Mapping[str, Mapping[str, Any]], chosen: str, path: Path) -> None:
    """Validation refusal vs over-refusal of each variant, with 95 % error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sst_merge_plugin.bench.report import error_bar
    from sst_merge_plugin.evaluation.report import save_png

    figure, ax = plt.subplots(figsize=(6.5, 5))
    for index, (name, row) in enumerate(rows.items()):
        style = {"marker": "osD^v<>"[index % 7], "capsize": 3, "linestyle": "none", "label": name}
        if name == chosen:
            style.update(markersize=11, markeredgecolor="black")
        ax.errorbar(row["benign_over_refusal"], row["harmful_refusal"],
                    error_bar(row, "harmful_refusal"), error_bar(row, "benign_over_refusal"),
                    **style)  # fmt: skip
    ax.set_xlabel("over-refusal on benign look-alikes (validation) ↓")
    ax.set_ylabel("harmful refusal (validation) ↑")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    figure.suptitle("The safety LoRA alone: variants (validation)")
    save_png(figure, path)


def markdown(summary: Mapping[str, Any]) -> str:
    """The report: each variant's overrides and validation rates, the rule's choice, the test
    rows."""
    from sst_merge_plugin.bench.report import rate_cell

    lines = [
        "# The safety LoRA alone: variants",
        "",
        f"Validation: {summary['validation']}; test: {summary['test']}. Rule (validation only): "
        f"the lowest over-refusal among the variants refusing ≥ {summary['min_refusal']}, else "
        "the highest refusal − over-refusal. Base model over-refusal (test): "
        f"{summary['base_test_over_refusal']:.2f}.",
        "",
        "| variant | overrides | adapter | validation refusal ↑ | validation over-refusal ↓ |",
        "|---|---|---|---:|---:|",
    ]
    for name, row in summary["validation_rows"].items():
        mark = f"**{name}**" if name == summary["chosen"] else name
        lines.append(
            f"| {mark} | `{json.dumps(summary['variants'][name])}` | `{summary['adapters'][name]}` | "
            f"{rate_cell(row, 'harmful_refusal')} | {rate_cell(row, 'benign_over_refusal')} |"
        )
    lines += ["", "| variant (test) | harmful refusal ↑ | over-refusal ↓ | MMLU drift (points) ↓ |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for name, row in summary["test_rows"].items():
        drift = row.get("mmlu_drift")
        lines.append(
            f"| {name} | {rate_cell(row, 'harmful_refusal')} | "
            f"{rate_cell(row, 'benign_over_refusal')} | "
            f"{'–' if drift is None else f'{100 * drift:+.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def run_variants(
    profile: Any,
    workspace: Path,
    out: Path,
    variants: Mapping[str, Mapping[str, Any]],
    min_refusal: float,
    *,
    sweeps: Sequence[str] = (),
    prompts: Any = None,
    model_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and score each variant of ``profile``'s safety adapter (module doc), write the
    outputs to ``out`` (atomically, after everything is scored) and return the summary.
    ``variants`` maps a name to its overrides (:func:`variant_spec`) and holds ``profile``;
    ``sweeps`` names sweeps of ``profile`` run under the protocol with the chosen variant as
    the safety input (``out/merged/``, the benchmark's results files)."""
    from sst_merge_plugin.atomic import atomic_path, write_text
    from sst_merge_plugin.bench.merges import BASE_ROW, MergeJob
    from sst_merge_plugin.bench.pipeline import Pipeline
    from sst_merge_plugin.bench.profile import SAFETY
    from sst_merge_plugin.bench.prompts import TrainingPrompts
    from sst_merge_plugin.bench.report import write_outputs
    from sst_merge_plugin.bench.scoring import result_row
    from sst_merge_plugin.core.errors import SSTError

    if variants.get("profile") != {}:
        raise SSTError("variants: 'profile' (the benchmark's own adapter, no overrides) is needed")
    merged_profile = profile.with_sweeps(tuple(sweeps))  # unknown names fail here, first
    prompts = TrainingPrompts.from_assets() if prompts is None else prompts
    own = next(spec for spec in profile.adapters if spec.name == SAFETY)
    skills = tuple(spec for spec in profile.adapters if spec.name != SAFETY)
    jobs: dict[str, tuple[Any, MergeJob]] = {}
    adapters: dict[str, str] = {}
    for name, overrides in variants.items():  # every spec checked before anything is trained
        spec = variant_spec(own, overrides)
        pipeline = Pipeline(
            replace(profile, adapters=(spec, *skills), sweeps=()),
            workspace,
            prompts=prompts,
            model_dir=model_dir,
            progress=progress,
        )
        job = MergeJob(row_label(name), None, pipeline.merges.single_adapter_config(spec))
        jobs[name] = (pipeline, job)
        adapters[name] = pipeline.adapters.folder(spec).name
    validation: dict[str, dict[str, Any]] = {}
    for name, (pipeline, job) in jobs.items():
        validation[name] = result_row(pipeline.scoring.record(job, profile.validation), None)
        print(f"{name}: validation refusal {validation[name]['harmful_refusal']:.2f}, "
              f"over-refusal {validation[name]['benign_over_refusal']:.2f}", flush=True)  # fmt: skip
    chosen = choose(validation, min_refusal)
    scoring = jobs["profile"][0].scoring
    base_test = scoring.record(MergeJob(BASE_ROW, None, None), profile.test)
    test = {
        name: result_row(jobs[name][0].scoring.record(jobs[name][1], profile.test), base_test)
        for name in dict.fromkeys(("profile", chosen))
    }
    run = None
    if sweeps:
        spec = variant_spec(own, variants[chosen])
        merged_profile = replace(merged_profile, adapters=(spec, *skills))
        run = Pipeline(
            merged_profile, workspace, prompts=prompts, model_dir=model_dir, progress=progress
        ).run()
    summary = {
        "variants": {name: dict(overrides) for name, overrides in variants.items()},
        "validation": f"{profile.validation.harmful} ({profile.validation.n_harmful}) / "
        f"{profile.validation.benign} ({profile.validation.n_benign})",
        "test": f"{profile.test.harmful} ({profile.test.n_harmful}) / "
        f"{profile.test.benign} ({profile.test.n_benign}), MMLU {profile.test.mmlu}",
        "min_refusal": min_refusal,
        "base_test_over_refusal": base_test["metrics"]["benign_over_refusal"],
        "adapters": adapters,
        "validation_rows": validation,
        "chosen": chosen,
        "test_rows": test,
        "merged_sweeps": list(sweeps),
    }
    with atomic_path(out, directory=True) as temporary:
        write_text(temporary / "results.json", json.dumps(summary, indent=2) + "\n")
        write_text(temporary / "results.md", markdown(summary))
        plot(validation, chosen, temporary / "safety_input.png")
        if run is not None:
            title = f"Merges with the safety input {chosen!r} ({profile.name} profile)"
            write_outputs(run, temporary / "merged", title)
    return summary


def main(argv: list[str] | None = None) -> int:
    from sst_merge_plugin.bench.profile import FULL
    from sst_merge_plugin.core.errors import SSTError
    from sst_merge_plugin.data.assets import cache_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--workspace", type=Path, help="default: <asset cache>/bench/full")
    parser.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
        help="variants to run, 'profile' among them (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--sweeps", nargs="+", default=[], metavar="METHOD",
        help="sweeps of the profile to run with the chosen variant (OUT/merged/)",
    )  # fmt: skip
    parser.add_argument("--min-refusal", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:  # run_variants checks the variants and sweeps before anything is trained
        summary = run_variants(
            FULL,
            args.workspace or cache_root() / "bench" / FULL.name,
            args.out,
            {name: VARIANTS[name] for name in args.variants},
            args.min_refusal,
            sweeps=args.sweeps,
            progress=not args.no_progress,
        )
    except SSTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
