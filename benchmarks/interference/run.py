"""Many-expert interference: N skill LoRAs + one safety LoRA, each method tuned per N on validation.

Each method's operating point is chosen on a validation split for each N and reported on a
disjoint test split (the main benchmark's protocol, ``docs/design.md`` §7).

For N in ``--n-experts`` (default 2 4 8 12) the first N experts of :data:`SKILLS` (LoRAs on
SmolLM2-135M-Instruct, one programmatic skill each, all trained alike: :func:`expert_spec`) and
the main benchmark's safety LoRA spec on all 604 harmful training pairs (:data:`SAFETY_SPEC`)
are merged by

* ``task_arithmetic``, ``ties``, ``dare_ties`` (mergekit; density 0.5, no normalisation) and
  ``tsv`` (FusionBench's task-singular-vector merging, :data:`~sst_merge_plugin.bench.
  fusion_merge.TSV`), the safety LoRA one more ordinary input of weight ``safety_weight``;
* ``sst_merge`` (task arithmetic of the experts + the safety patch projected with the ``lora``
  Fisher pair, ``select: soft``, ``rho: 1``, patch ``scale``);
* ``sst_dual`` (the dual, ``docs/design.md`` §1.6: each expert's delta projected with its own
  gain Fisher ``G_i`` against the safety model's KL cost Fisher ``C``, ``lora`` kind on the joint
  span of the N + 1 adapters, soft ρ = 1; the safety LoRA added unprojected at ``scale``);
* ``dual_single_fisher`` (its single-Fisher control: the same with ``G_i = I``, each expert
  shrunk along the cost Fisher's directions alone — ``sst_single_fisher``, ``project: utility``).

Every method has the same grid budget (:data:`SWEEPS`): the experts' λ (``utility_weight``) ∈
:data:`EXPERT_LAMBDAS` × the safety strength (``safety_weight`` ∈ :data:`SAFETY_WEIGHTS`, or the
SST ``scale`` ∈ :data:`SST_SCALES`; the dual's unprojected safety ``scale`` ∈
:data:`SAFETY_WEIGHTS`). For each N one :class:`~sst_merge_plugin.bench.profile.
Profile` (:func:`interference_profile`) runs through :meth:`~sst_merge_plugin.bench.pipeline.
Pipeline.run`: every grid point is scored on the validation split (:data:`VALIDATION`), the main
benchmark's rule (:data:`RULE`) picks each method's point, and only that point is scored on the
test split (:data:`TEST`).

*Normalised accuracy* = the merged model's exact match on a skill's test items ÷ that expert's
own (base + expert alone, same items), averaged over the N skills (a skill whose expert scores 0
has no ratio and is left out); its 95 % interval is a paired bootstrap over each skill's items
(:func:`normalized_interval`). References on the test split: the base model and base + safety
LoRA alone (refusal, over-refusal), each expert alone on its own skill.

Outputs in ``--out``, rewritten after each N: ``interference.json`` (``protocol``,
``references``, ``rows``: one per N and method, plus the reference rows), ``interference.md``,
``interference.png`` (normalised accuracy, refusal, over-refusal vs N with 95 % error bars),
``run.json`` and, per N, the main benchmark's report (``n<N>/results.{json,md}``,
``pareto.png``, ``sweeps.png``: every grid point on validation, the paired bootstrap).
Each N is its own protocol run, so the Ns can be run in separate sessions into one ``--out``:
``--keep-earlier`` keeps the rows an earlier run of the same protocol left there for the N this
run does not redo (``run.json`` nests the earlier run's ``run.json`` under ``earlier``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interference/run.py --threads 1 \\
        --out benchmarks/interference/results-protocol --no-progress
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sst_merge_plugin.atomic import write_text
from sst_merge_plugin.bench.fusion_merge import TSV
from sst_merge_plugin.bench.merges import BASE_ROW, MergeJob
from sst_merge_plugin.bench.pipeline import BenchmarkRun, Pipeline
from sst_merge_plugin.bench.profile import FULL, SAFETY, AdapterSpec, Profile, Sweep
from sst_merge_plugin.bench.prompts import TrainingPrompts
from sst_merge_plugin.bench.report import (
    error_bar,
    knob_text,
    paired_outcomes,
    rate_cell,
    summarise,
    write_outputs,
)
from sst_merge_plugin.bench.scoring import rate_intervals, result_row
from sst_merge_plugin.bench.training import LoRATrainingConfig
from sst_merge_plugin.bench.tuning import SAFETY_WEIGHT, UTILITY_WEIGHT
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.stats import Interval
from sst_merge_plugin.evaluation.suite import EvalConfig

#: the experts' skills (every skill of ``sst_merge_plugin.data.tasks``); N experts are the first N
SKILLS = (
    "reverse_letters",
    "uppercase",
    "unit_conversion",
    "sort_digits",
    "acronym",
    "max_number",
    "count_word",
    "addition",
    "last_word",
    "lowercase",
    "subtraction",
    "multiplication",
)
EXPERT_TRAINING = LoRATrainingConfig(steps=60, learning_rate=2e-3)
N_EXPERT_TRAIN = 400
#: the safety LoRA every N is measured with: the main benchmark's spec (harmful training
#: instructions → refusals, look-alike retain data) on all 604 harmful training pairs — the full
#: profile's adapter when N = 2, 4, 8 were run, before that profile moved to 302 pairs — so that
#: every N merges the same safety input
SAFETY_SPEC = replace(FULL.adapters[0], n_train=604)
#: the main benchmark's Fisher prompts (F_benign adds 16 training prompts per merged skill)
FISHER = FULL.fisher
#: the main benchmark's selection rule
RULE = FULL.rule

#: the split the operating points are chosen on (``utility`` is set per N to its skills)
VALIDATION = EvalConfig(
    harmful="harmbench-val",
    benign="overrefusal-val",
    n_harmful=41,
    n_benign=40,
    n_utility=16,
    skill_pool="validation",
    max_new_tokens=32,
)
#: the split the chosen points and the references are reported on
TEST = EvalConfig(
    harmful="harmbench-test",
    benign="overrefusal-test",
    n_harmful=159,
    n_benign=100,
    n_utility=32,
    skill_pool="test",
    max_new_tokens=32,
)

#: the grid budget, the same for every method: the experts' λ × two safety strengths
EXPERT_LAMBDAS = (0.25, 0.5, 1.0)
SAFETY_WEIGHTS = (1.0, 2.0)
SST_SCALES = (1.5, 3.0)
BASELINE_GRID = MappingProxyType({UTILITY_WEIGHT: EXPERT_LAMBDAS, SAFETY_WEIGHT: SAFETY_WEIGHTS})
SST_GRID = MappingProxyType({UTILITY_WEIGHT: EXPERT_LAMBDAS, "scale": SST_SCALES})
#: the dual adds the safety LoRA unprojected, so its scale is the baselines' safety weight
DUAL_GRID = MappingProxyType({UTILITY_WEIGHT: EXPERT_LAMBDAS, "scale": SAFETY_WEIGHTS})
_SPARSE = {"normalize": False, "density": 0.5}
#: both SST-Merge sweeps: soft selection ρ = 1, task arithmetic of the (projected) experts
_SST_SOFT = MappingProxyType({"select": "soft", "rho": 1.0, "utility_merge": "task_arithmetic"})
SWEEPS = (
    Sweep("task_arithmetic", "task_arithmetic", BASELINE_GRID),
    Sweep("ties", "ties", BASELINE_GRID, _SPARSE),
    Sweep("dare_ties", "dare_ties", BASELINE_GRID, _SPARSE),
    Sweep("tsv", TSV, BASELINE_GRID),
    Sweep("sst_merge", "sst_merge", SST_GRID, _SST_SOFT, fisher_kind="lora"),
    Sweep("sst_dual", "sst_merge", DUAL_GRID, _SST_SOFT, fisher_kind="lora", project="utility"),
    # the dual's single-Fisher control: the same cost Fisher, G_i = I (no gain Fishers)
    Sweep(
        "dual_single_fisher",
        "sst_single_fisher",
        DUAL_GRID,
        _SST_SOFT,
        fisher_kind="lora",
        project="utility",
    ),
)
METHODS = tuple(sweep.label for sweep in SWEEPS)
N_EXPERTS = (2, 4, 8, 12)
#: the pipeline's reference rows (``Merges.references``) and their line styles in the plot
SAFETY_ALONE = f"{SAFETY} alone"
REFERENCE_STYLES = MappingProxyType({BASE_ROW: ":", SAFETY_ALONE: "--"})
#: bootstrap resamples of the normalised accuracy's interval
N_RESAMPLES = 10_000


def expert_spec(skill: str) -> AdapterSpec:
    """The expert LoRA of ``skill`` (same training for every expert, and the same spec as the
    main benchmark's skill adapters, so a shared workspace shares them)."""
    return AdapterSpec(skill, skill, N_EXPERT_TRAIN, EXPERT_TRAINING)


def interference_profile(
    n_experts: int,
    sweeps: Sequence[Sweep] = SWEEPS,
    validation: EvalConfig = VALIDATION,
    test: EvalConfig = TEST,
) -> Profile:
    """The protocol profile of ``n_experts``: the safety LoRA and the first ``n_experts``
    experts, ``sweeps``, both splits scoring those experts' skills, the main benchmark's rule."""
    skills = SKILLS[:n_experts]
    return Profile(
        name=f"interference-{n_experts}",
        adapters=(SAFETY_SPEC, *(expert_spec(skill) for skill in skills)),
        fisher=FISHER,
        validation=replace(validation, utility=skills),
        test=replace(test, utility=skills),
        sweeps=tuple(sweeps),
        rule=RULE,
        single_adapters=False,
    )


def expert_config(test: EvalConfig, skill: str) -> EvalConfig:
    """An expert alone's evaluation: ``test``'s items of its own ``skill`` (the items every merged
    model answers), harmful and benign cut to one prompt each."""
    return replace(test, utility=(skill,), n_harmful=1, n_benign=1)


def normalized_accuracy(
    merged: Mapping[str, float], alone: Mapping[str, float]
) -> tuple[float | None, dict[str, float | None]]:
    """``(mean ratio, {skill: ratio})`` with ratio = ``merged[skill] / alone[skill]`` for each
    skill of ``merged``; ``None`` where the expert alone scores 0 (left out of the mean; the
    mean is ``None`` when no skill has a ratio)."""
    ratios = {
        skill: (accuracy / alone[skill] if alone[skill] > 0 else None)
        for skill, accuracy in merged.items()
    }
    defined = [ratio for ratio in ratios.values() if ratio is not None]
    return (sum(defined) / len(defined) if defined else None), ratios


def normalized_interval(
    merged: Mapping[str, Sequence[float]],
    alone: Mapping[str, Sequence[float]],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Interval | None:
    """:func:`normalized_accuracy` of per-item outcomes with a paired percentile bootstrap.

    ``merged[skill]`` and ``alone[skill]`` are the merged model's and the expert's outcomes on
    the SAME items in the same order. Each resample draws every skill's items with replacement
    once for both models and recomputes the mean ratio over the skills whose resampled expert
    accuracy is > 0. Skills whose expert scores 0 on all items are left out, as in the
    estimate; ``None`` when no skill is left.
    """
    import numpy as np

    skills = [skill for skill in merged if any(alone[skill])]
    if not skills:
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(n_resamples)
    count = np.zeros(n_resamples)
    for skill in skills:
        mine = np.asarray(merged[skill], dtype=float)
        theirs = np.asarray(alone[skill], dtype=float)
        if mine.shape != theirs.shape or mine.ndim != 1:
            raise SSTError(f"{skill}: merged and expert outcomes need one equal length")
        indices = rng.integers(0, mine.size, size=(n_resamples, mine.size))
        expert = theirs[indices].mean(axis=1)
        defined = expert > 0
        total += np.where(defined, mine[indices].mean(axis=1) / np.where(defined, expert, 1), 0)
        count += defined
    resampled = total[count > 0] / count[count > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    estimate, _ = normalized_accuracy(
        {skill: float(np.mean(merged[skill])) for skill in skills},
        {skill: float(np.mean(alone[skill])) for skill in skills},
    )
    return Interval(float(estimate), float(low), float(high))


def expert_reference(record: Mapping[str, Any], skill: str) -> dict[str, Any]:
    """An expert alone's entry of the references: its exact match on its own skill's test
    items, their number and the Wilson 95 % interval."""
    metrics = record["metrics"]
    return {
        "exact_match": metrics["utility"][skill],
        "n_items": metrics["n_utility"][skill],
        "intervals": {"exact_match": rate_intervals(metrics)["utility"]},
    }


def n_rows(
    n_experts: int, run: BenchmarkRun, experts: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The rows of one N: the pipeline's reference rows (the base model, the safety LoRA alone;
    ``feasible`` ``None``, a validation row for the base only), then each tuned method of
    ``run`` (:func:`~sst_merge_plugin.bench.report.summarise`'s entries: chosen knob, whether it
    met the rule and why, validation and test rows); each test row gains
    ``normalized_accuracy``, the per-skill ``normalized`` ratios and the ratio's interval.
    ``experts`` maps each of the N skills to its expert-alone record (:func:`expert_config`)."""
    summary = summarise(run)
    alone = {skill: record["metrics"]["utility"][skill] for skill, record in experts.items()}
    alone_items = {
        skill: paired_outcomes(record, "utility")[skill] for skill, record in experts.items()
    }

    def normalized(row: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
        mean, ratios = normalized_accuracy(row["utility"], alone)
        interval = normalized_interval(paired_outcomes(record, "utility"), alone_items)
        intervals = dict(row["intervals"])
        if interval is not None:
            intervals["normalized_accuracy"] = interval.as_dict()
        return {**row, "normalized_accuracy": mean, "normalized": ratios, "intervals": intervals}

    rows = [
        {
            "n_experts": n_experts,
            "method": record["method"],
            "merge_method": None,
            "knob": None,
            "feasible": None,
            "reason": "reference",
            "validation": summary["base_validation"] if record["method"] == BASE_ROW else None,
            "test": normalized(row, record),
        }
        for row, record in zip(summary["references"], run.references, strict=True)
    ]
    for entry, method in zip(summary["methods"], run.methods, strict=True):
        rows.append(
            {"n_experts": n_experts, **entry, "test": normalized(entry["test"], method.test)}
        )
    return rows


def protocol_summary(
    sweeps: Sequence[Sweep], validation: EvalConfig, test: EvalConfig
) -> dict[str, Any]:
    """The protocol of a run for ``interference.json``: the skills (N experts = the first N),
    the inputs (the safety LoRA's spec, the experts' training, the Fisher prompts), both splits'
    settings (their ``utility`` is set per N to the first N skills), the rule, each method's
    grid and fixed parameters."""
    return {
        "skills": list(SKILLS),
        "inputs": {
            "safety_adapter": asdict(SAFETY_SPEC),
            "experts": {"n_train": N_EXPERT_TRAIN, "training": asdict(EXPERT_TRAINING)},
            "fisher": asdict(FISHER),
        },
        "validation": asdict(validation),
        "test": asdict(test),
        "rule": RULE.as_dict(),
        "methods": {
            sweep.label: {
                "merge_method": sweep.merge_method,
                "grid": {knob: list(values) for knob, values in sweep.grid.items()},
                "parameters": dict(sweep.parameters),
            }
            for sweep in sweeps
        },
    }


def _grid_text(grid: Mapping[str, Sequence[Any]]) -> str:
    names = {UTILITY_WEIGHT: "λ"}
    return " × ".join(
        f"{names.get(knob, knob)} ∈ {{{', '.join(f'{v:g}' for v in values)}}}"
        for knob, values in grid.items()
    )


def _split_text(split: Mapping[str, Any]) -> str:
    return (
        f"{split['harmful']} ({split['n_harmful']} prompts), {split['benign']} "
        f"({split['n_benign']}), {split['n_utility']} {split['skill_pool']}-pool items per skill"
    )


def protocol_note(protocol: Mapping[str, Any]) -> str:
    """The Markdown paragraph describing ``protocol`` (:func:`protocol_summary`)."""
    grids = "; ".join(
        f"{label}: {_grid_text(method['grid'])}" for label, method in protocol["methods"].items()
    )
    rule = protocol["rule"]
    return (
        "Protocol: for each N, every grid point of every method is scored on the validation "
        f"split — {_split_text(protocol['validation'])}; the rule picks one point per method "
        f"(refusal ≥ {rule['min_refusal']} and over-refusal ≤ base + "
        f"{rule['over_refusal_margin']}, then the highest exact match; when no point qualifies, "
        "the highest refusal − over-refusal + exact match: `met the rule` = no), and only that "
        f"point is scored on the test split — {_split_text(protocol['test'])}. Grids (λ = every "
        f"expert's weight): {grids}. Normalised accuracy: exact match on each skill ÷ that "
        "expert alone on the same test items, averaged over the N skills; its interval is a "
        "paired bootstrap over the items, the rates' are Wilson 95 % intervals. `base` and "
        "`safety alone` (the unmerged model, base + safety LoRA) are reference rows, not tuned."
    )


def n_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown of one N's rows: chosen knob, whether it met the rule, the validation scores
    and the test rates with their 95 % intervals."""
    lines = [
        "| method | chosen knob | met the rule | validation refusal / over-refusal / exact match "
        "| normalised accuracy ↑ | harmful refusal ↑ | over-refusal ↓ | exact match ↑ | merge s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        val, test = row["validation"], row["test"]
        met = "–" if row["feasible"] is None else ("yes" if row["feasible"] else "no")
        scores = (
            "–"
            if val is None
            else (
                f"{val['harmful_refusal']:.2f} / {val['benign_over_refusal']:.2f} / "
                f"{val['utility_mean']:.2f}"
            )
        )
        seconds = test["merge_seconds"]
        cells = [
            row["method"],
            knob_text(row["knob"]),
            met,
            scores,
            rate_cell(test, "normalized_accuracy"),
            rate_cell(test, "harmful_refusal"),
            rate_cell(test, "benign_over_refusal"),
            rate_cell(test, "utility_mean", "utility"),
            "–" if seconds is None else f"{seconds:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def references_table(references: Mapping[str, Any]) -> str:
    """Markdown of the references (test split): refusal rates of base and base + safety alone,
    each expert's exact match on its own skill."""
    lines = [
        "| model | harmful refusal ↑ | over-refusal ↓ | own-skill exact match |",
        "|---|---:|---:|---:|",
    ]
    for name in (BASE_ROW, SAFETY_ALONE):
        row = references[name]
        lines.append(
            f"| {name} | {rate_cell(row, 'harmful_refusal')} "
            f"| {rate_cell(row, 'benign_over_refusal')} | – |"
        )
    for skill, entry in references["experts"].items():
        lines.append(
            f"| {skill} alone | – | – | {rate_cell(entry, 'exact_match')} "
            f"(n = {entry['n_items']}) |"
        )
    return "\n".join(lines) + "\n"


def markdown_report(
    rows: Sequence[Mapping[str, Any]], references: Mapping[str, Any], protocol: Mapping[str, Any]
) -> str:
    """The whole ``interference.md``: the protocol note, one table per N, the references."""
    sections = [
        "# Many-expert interference (SmolLM2-135M-Instruct), validation-chosen operating points\n",
        protocol_note(protocol) + "\n",
    ]
    for n_experts in sorted({row["n_experts"] for row in rows}):
        skills = ", ".join(protocol["skills"][:n_experts])
        sections.append(f"## N = {n_experts} ({skills}) — test split\n")
        sections.append(n_table([row for row in rows if row["n_experts"] == n_experts]))
    sections.append("## References (test split)\n")
    sections.append(references_table(references))
    return "\n".join(sections)


def plot_interference(
    rows: Sequence[Mapping[str, Any]], references: Mapping[str, Any], path: str | Path
) -> None:
    """Three panels vs N, one line per method at its chosen point (test split, 95 % error
    bars; hollow markers: no grid point met the rule): normalised accuracy (the base model and
    the safety LoRA alone in grey, the experts alone at 1), harmful refusal and over-refusal
    (base and safety alone as horizontal references); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import ScalarFormatter

    from sst_merge_plugin.evaluation.report import save_png

    panels = (
        ("normalized_accuracy", "normalised accuracy (test) ↑"),
        ("harmful_refusal", "harmful refusal (HarmBench test) ↑"),
        ("benign_over_refusal", "over-refusal on look-alikes (test) ↓"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 4.8), dpi=120)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for axis, (key, label) in zip(axes, panels, strict=True):
        for number, method in enumerate(methods):
            reference = method in REFERENCE_STYLES
            if reference and key != "normalized_accuracy":
                continue  # drawn as a horizontal reference line
            series = sorted(
                (r for r in rows if r["method"] == method and r["test"][key] is not None),
                key=lambda r: r["n_experts"],
            )
            if not series:
                continue
            shift = 2 ** (0.04 * (number - (len(methods) - 1) / 2))  # dodge on the log axis
            xs = [r["n_experts"] * shift for r in series]
            ys = [r["test"][key] for r in series]
            errors = np.hstack([error_bar(r["test"], key) for r in series])
            color = "grey" if reference else f"C{number % 10}"
            line = REFERENCE_STYLES.get(method, "-")
            marker = "osD^vP<>"[number % 8]
            axis.errorbar(
                xs, ys, errors, color=color, marker=marker, linestyle=line, capsize=3, label=method
            )
            missed = [
                (x, y) for x, y, r in zip(xs, ys, series, strict=True) if r["feasible"] is False
            ]
            if missed:
                axis.scatter(*zip(*missed, strict=True), s=22, color="white", zorder=3)
        if key == "normalized_accuracy":
            axis.axhline(1.0, color="grey", linestyle="-.", label="expert alone")
            highs = [r["test"]["intervals"].get(key, {}).get("high", 0.0) for r in rows]
            axis.set_ylim(0.0, max(1.1, 1.05 * max(highs, default=1.0)))
        else:
            for name, style in REFERENCE_STYLES.items():
                axis.axhline(references[name][key], color="grey", linestyle=style, label=name)
            axis.set_ylim(-0.03, 1.03)
        axis.set_xscale("log", base=2)
        numbers = sorted({r["n_experts"] for r in rows})
        axis.set_xlim(numbers[0] / 1.3, numbers[-1] * 1.3)
        axis.set_xticks(numbers)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("number of experts N")
        axis.set_title(label)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    figure.suptitle(
        "Many-expert interference: N skill LoRAs + safety LoRA, SmolLM2-135M, each method at its "
        "validation-chosen point (hollow: no grid point met the rule)"
    )
    save_png(figure, path)


def write_results(
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    references: Mapping[str, Any],
    protocol: Mapping[str, Any],
) -> str:
    """``interference.json``, ``interference.md`` and ``interference.png`` in ``out``
    (atomically); returns the Markdown report."""
    report = markdown_report(rows, references, protocol)
    payload = {"protocol": protocol, "references": references, "rows": list(rows)}
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    write_text(out / "interference.json", text)
    write_text(out / "interference.md", report)
    plot_interference(rows, references, out / "interference.png")
    return report


class Benchmark:
    """The runs of one workspace: one protocol run per N and its experts alone.

    ``model_dir`` and ``prompts`` default to SmolLM2 and :meth:`TrainingPrompts.from_assets`,
    ``validation`` and ``test`` to :data:`VALIDATION` and :data:`TEST`; tests pass a tiny model,
    their own prompts and splits.
    """

    def __init__(
        self,
        workspace: Path,
        sweeps: Sequence[Sweep] = SWEEPS,
        *,
        progress: bool = True,
        validation: EvalConfig = VALIDATION,
        test: EvalConfig = TEST,
        model_dir: Path | None = None,
        prompts: TrainingPrompts | None = None,
    ) -> None:
        if model_dir is None:
            from sst_merge_plugin.data.smollm2 import smollm2_model_dir

            model_dir = smollm2_model_dir()
        self.workspace = workspace
        self.sweeps = tuple(sweeps)
        self.progress = progress
        self.validation = validation
        self.test = test
        self.model_dir = Path(model_dir)
        self.prompts = TrainingPrompts.from_assets() if prompts is None else prompts

    def pipeline(self, n_experts: int) -> Pipeline:
        """The pipeline of :func:`interference_profile` with ``n_experts``."""
        profile = interference_profile(n_experts, self.sweeps, self.validation, self.test)
        return Pipeline(
            profile,
            self.workspace,
            progress=self.progress,
            model_dir=self.model_dir,
            prompts=self.prompts,
        )

    def experts(self, pipeline: Pipeline, skills: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each expert alone's record on its own skill's test items (:func:`expert_config`)."""
        records = {}
        for skill in skills:
            config = pipeline.merges.single_adapter_config(expert_spec(skill))
            job = MergeJob(f"{skill} alone", None, config)
            records[skill] = pipeline.scoring.record(job, expert_config(self.test, skill))
        return records

    def run(self, n_experts: int) -> tuple[BenchmarkRun, dict[str, dict[str, Any]]]:
        """The protocol run of ``n_experts`` and its experts' records."""
        pipeline = self.pipeline(n_experts)
        experts = self.experts(pipeline, SKILLS[:n_experts])
        return pipeline.run(), experts


#: what :func:`earlier_results` keeps when there is no earlier run (or it is not asked for)
NOTHING_EARLIER = MappingProxyType({"rows": (), "experts": MappingProxyType({}), "run": None})


def earlier_results(
    out: Path, protocol: Mapping[str, Any], n_experts: Sequence[int]
) -> Mapping[str, Any]:
    """What an earlier run left in ``out`` for ``--keep-earlier``: its rows of the N this run
    does not redo, its experts' references and its ``run.json`` (:data:`NOTHING_EARLIER` when
    ``out`` has none). Each N is a separate protocol run, so rows of another run of the *same*
    protocol (:func:`protocol_summary`) can sit in one table; another protocol is an error."""
    results = out / "interference.json"
    if not results.is_file():
        return NOTHING_EARLIER
    earlier = json.loads(results.read_text())
    if earlier.get("protocol") != json.loads(json.dumps(protocol)):  # tuples read as lists
        raise SSTError(
            f"--keep-earlier: {results} was written under another protocol (inputs, splits, "
            "rule, methods or grids differ); write this run to another --out"
        )
    run = out / "run.json"
    return {
        "rows": [row for row in earlier["rows"] if row["n_experts"] not in n_experts],
        "experts": earlier["references"]["experts"],
        "run": json.loads(run.read_text()) if run.is_file() else None,
    }


def run_benchmark(
    benchmark: Benchmark, n_experts: Sequence[int], out: Path, *, keep_earlier: bool = False
) -> str:
    """Each N in turn; every output in ``out`` is rewritten after each N (partial runs are
    useful). The references: the base model's and the safety LoRA's test rows (the pipeline's
    reference rows; the same prompts for every N), each expert alone. ``keep_earlier`` keeps
    the rows of the N an earlier run of the same protocol wrote to ``out`` and this run does
    not redo (:func:`earlier_results`; ``run.json`` nests the earlier one under ``earlier``).
    Returns the last Markdown report."""
    started = time.perf_counter()
    protocol = protocol_summary(benchmark.sweeps, benchmark.validation, benchmark.test)
    earlier = earlier_results(out, protocol, n_experts) if keep_earlier else NOTHING_EARLIER
    references: dict[str, Any] = {"experts": dict(earlier["experts"])}
    rows: list[dict[str, Any]] = list(earlier["rows"])
    report = ""
    for n in n_experts:
        run, experts = benchmark.run(n)
        references["experts"].update(
            {skill: expert_reference(record, skill) for skill, record in experts.items()}
        )
        rows = sorted([*rows, *n_rows(n, run, experts)], key=lambda row: row["n_experts"])
        references.update({r["method"]: result_row(r, run.base_test) for r in run.references})
        write_outputs(run, out / f"n{n}", f"Interference, N = {n} experts")
        report = write_results(out, rows, references, protocol)
        meta = {
            "workspace": str(benchmark.workspace),
            "base_model": str(benchmark.model_dir),
            "n_experts": list(n_experts),
            "n_experts_done": sorted({row["n_experts"] for row in rows}),
            "methods": [sweep.label for sweep in benchmark.sweeps],
            "seconds": round(time.perf_counter() - started, 1),
            **({"earlier": earlier["run"]} if earlier["run"] else {}),
        }
        write_text(out / "run.json", json.dumps(meta, indent=2) + "\n")
        print(f"N={n} done after {meta['seconds']:.0f} s", flush=True)
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (module doc); ``--n-experts`` sorted and deduplicated."""
    from sst_merge_plugin.data.assets import cache_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the results")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=cache_root() / "bench" / "interference",
        help="cache folder of the pipeline stages (default: <asset cache>/bench/interference)",
    )
    parser.add_argument(
        "--n-experts",
        type=int,
        nargs="+",
        default=list(N_EXPERTS),
        help=f"numbers of experts to merge, each 1..{len(SKILLS)} "
        f"(default: {' '.join(map(str, N_EXPERTS))})",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to run (default: all)",
    )
    parser.add_argument(
        "--keep-earlier",
        action="store_true",
        help="keep the rows of the N an earlier run of the same protocol left in --out "
        "(the N this run does not redo)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    bad = sorted({n for n in args.n_experts if not 1 <= n <= len(SKILLS)})
    if bad:
        parser.error(f"--n-experts: each must be between 1 and {len(SKILLS)}, got {bad}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    args.n_experts = sorted(set(args.n_experts))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    benchmark = Benchmark(
        args.workspace.expanduser().resolve(),
        [sweep for sweep in SWEEPS if sweep.label in args.methods],
        progress=not args.no_progress,
    )
    print(run_benchmark(benchmark, args.n_experts, Path(args.out), keep_earlier=args.keep_earlier))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SSTError as error:
        sys.exit(f"error: {error}")
