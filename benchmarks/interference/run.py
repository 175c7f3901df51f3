"""Many-expert interference: how merging N utility experts + one safety LoRA degrades each.

For N in ``--n-experts`` (default 2 4 8) the first N experts of :data:`SKILLS` (LoRAs on
SmolLM2-135M-Instruct, one programmatic skill each, all with :data:`EXPERT_TRAINING`) and the
safety LoRA (:data:`SAFETY_SPEC`) are merged by

* ``task_arithmetic``, ``ties``, ``dare_ties`` (mergekit; density 0.5, no normalisation) and
  ``tsv`` (FusionBench's task-singular-vector merging, :data:`~sst_merge_plugin.bench.
  fusion_merge.TSV`), each with the safety LoRA as one more ordinary input of weight
  ``--safety-weight`` (default 1) and every expert at weight ``--expert-weight`` (default 1,
  task arithmetic's λ; FusionBench's TSV gets the weights applied when its pool loads the
  models);
* ``sst_merge`` (task arithmetic of the experts + the safety patch projected with the ``lora``
  Fisher pair, ``select: soft``, ``rho: 1``, ``scale`` = ``--sst-scale``; the safety LoRA has
  ``role: safety``).

Each merged model is scored on the N skills' test items (exact match), HarmBench refusal and
benign-edgy over-refusal. *Normalised accuracy* = the merged model's accuracy on a skill ÷ that
expert's own accuracy on it (base + expert alone), averaged over the N skills (a skill whose
expert scores 0 has no ratio and is left out). References: the base model and base + safety
LoRA alone (refusal rates), each expert alone (its own skill).

Everything runs through :class:`~sst_merge_plugin.bench.pipeline.Pipeline` with one profile per
N sharing ONE workspace, so adapters, Fisher files and evaluations are cached across N and
across runs. Outputs in ``--out``: ``interference.json`` (rows), ``interference.md`` (tables)
and ``interference.png`` (normalised accuracy, harmful refusal, over-refusal vs N).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interference/run.py --threads 1 \\
        --out benchmarks/interference/results
    # the safety strength the full safety–utility benchmark needs to keep refusing
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interference/run.py --threads 1 \\
        --safety-weight 2 --sst-scale 3 --out benchmarks/interference/results-strong
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sst_merge_plugin.atomic import write_text
from sst_merge_plugin.bench.fusion_merge import TSV
from sst_merge_plugin.bench.merges import BASE_ROW, MergeJob
from sst_merge_plugin.bench.pipeline import Pipeline
from sst_merge_plugin.bench.profile import SAFETY, AdapterSpec, FisherSettings, Profile, Sweep
from sst_merge_plugin.bench.training import LoRATrainingConfig
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.report import save_png
from sst_merge_plugin.evaluation.suite import EvalConfig

#: the experts' skills; N experts are the first N
SKILLS = (
    "reverse_letters",
    "uppercase",
    "unit_conversion",
    "sort_digits",
    "acronym",
    "max_number",
    "count_word",
    "addition",
)
EXPERT_TRAINING = LoRATrainingConfig(steps=60, learning_rate=2e-3)
N_EXPERT_TRAIN = 400
#: the safety LoRA (AdvBench training goals → refusals, plus everyday retain pairs)
SAFETY_SPEC = AdapterSpec(SAFETY, None, 390, LoRATrainingConfig(steps=80, learning_rate=2e-3), 150)
#: default ``scale`` of the SST-Merge safety patch (``--sst-scale``)
SST_SCALE = 1.0
#: default weight of the safety LoRA in the baselines (``--safety-weight``)
SAFETY_WEIGHT = 1.0
#: default weight of every expert, all methods (``--expert-weight``)
EXPERT_WEIGHT = 1.0
FISHER = FisherSettings(
    kinds=("lora",), n_harm=64, n_benign_helpful=64, n_benign_edgy=48, n_benign_per_skill=16
)
#: the merged models' evaluation (``utility`` is set per N to its skills)
EVALUATION = EvalConfig(
    harmful="harmbench",
    benign="benign-edgy",
    truefalse=None,
    n_harmful=24,
    n_benign=24,
    n_utility=16,
    max_new_tokens=32,
)
METHODS = ("task_arithmetic", "ties", "dare_ties", "tsv", "sst_merge")
N_EXPERTS = (2, 4, 8)
SAFETY_ALONE = "safety alone"


def expert_spec(skill: str) -> AdapterSpec:
    """The expert LoRA of ``skill`` (same training for every expert)."""
    return AdapterSpec(skill, skill, N_EXPERT_TRAIN, EXPERT_TRAINING)


def method_sweeps(
    sst_scale: float, safety_weight: float = SAFETY_WEIGHT, expert_weight: float = EXPERT_WEIGHT
) -> dict[str, Sweep]:
    """One single-point sweep per method of :data:`METHODS`: the baselines at safety weight
    ``safety_weight`` (TIES / DARE-TIES at density 0.5), SST-Merge at patch scale
    ``sst_scale``; every expert at weight ``expert_weight``."""
    sparse = {"normalize": False, "density": 0.5}
    weight = (safety_weight,)
    return {
        "task_arithmetic": Sweep(
            "task_arithmetic",
            "task_arithmetic",
            "safety_weight",
            weight,
            utility_weight=expert_weight,
        ),
        "ties": Sweep(
            "ties", "ties", "safety_weight", weight, sparse, utility_weight=expert_weight
        ),
        "dare_ties": Sweep(
            "dare_ties", "dare_ties", "safety_weight", weight, sparse, utility_weight=expert_weight
        ),
        "tsv": Sweep("tsv", TSV, "safety_weight", weight, utility_weight=expert_weight),
        "sst_merge": Sweep(
            "sst_merge",
            "sst_merge",
            "scale",
            (sst_scale,),
            {"select": "soft", "rho": 1.0, "utility_merge": "task_arithmetic"},
            fisher_kind="lora",
            utility_weight=expert_weight,
        ),
    }


def interference_profile(n_experts: int, sweeps: Sequence[Sweep]) -> Profile:
    """The profile of ``n_experts``: the safety LoRA, the first ``n_experts`` experts, the
    sweeps, utility evaluated on those experts' skills."""
    skills = SKILLS[:n_experts]
    return Profile(
        name=f"interference-{n_experts}",
        adapters=(SAFETY_SPEC, *(expert_spec(skill) for skill in skills)),
        fisher=FISHER,
        evaluation=replace(EVALUATION, utility=skills),
        sweeps=tuple(sweeps),
        single_adapters=False,
    )


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


def interference_row(
    n_experts: int, record: Mapping[str, Any], alone: Mapping[str, float]
) -> dict[str, Any]:
    """One result row from a :meth:`Pipeline.evaluate_job` record of an N-expert merge."""
    metrics = record["metrics"]
    mean, ratios = normalized_accuracy(metrics["utility"], alone)
    row = {
        "n_experts": n_experts,
        "method": record["method"],
        "knob": record["knob"],
        "normalized_accuracy": mean,
        "normalized": ratios,
        "utility": metrics["utility"],
        "expert_accuracy": {skill: alone[skill] for skill in metrics["utility"]},
        "utility_mean": metrics["utility_mean"],
        "harmful_refusal": metrics["harmful_refusal"],
        "benign_over_refusal": metrics["benign_over_refusal"],
        "merge_seconds": record["merge_seconds"],
    }
    if record.get("sst_summary"):
        row["sst_summary"] = record["sst_summary"]
    return row


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: N, method, safety strength (the row's knob: the safety LoRA's weight, or the
    SST patch scale), normalised accuracy, mean exact match, both refusal rates, merge seconds —
    one line per row, in the given order."""
    lines = [
        "| N | method | safety strength | normalised accuracy ↑ | mean exact match ↑ "
        "| harmful refusal ↑ | benign over-refusal ↓ | merge s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            str(row["n_experts"]),
            row["method"],
            "–" if row["knob"] is None else f"{row['knob']:g}",
            _number(row["normalized_accuracy"]),
            _number(row["utility_mean"]),
            _number(row["harmful_refusal"]),
            _number(row["benign_over_refusal"]),
            _number(row["merge_seconds"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def references_table(references: Mapping[str, Any]) -> str:
    """Markdown of the reference models: refusal rates of base and base + safety alone, each
    expert's exact match on its own skill."""
    lines = ["| model | harmful refusal | benign over-refusal | own-skill exact match |"]
    lines.append("|---|---|---|---|")
    for name in (BASE_ROW, SAFETY_ALONE):
        rates = references[name]
        lines.append(
            f"| {name} | {_number(rates['harmful_refusal'])} "
            f"| {_number(rates['benign_over_refusal'])} | – |"
        )
    for skill, accuracy in references["experts"].items():
        lines.append(f"| {skill} alone | – | – | {_number(accuracy)} |")
    return "\n".join(lines) + "\n"


def markdown_report(rows: Sequence[Mapping[str, Any]], references: Mapping[str, Any]) -> str:
    """The whole ``interference.md``: summary, references and the per-skill table
    (:func:`~sst_merge_plugin.evaluation.report.markdown_table`, one line per N and method)."""
    from sst_merge_plugin.evaluation.report import markdown_table

    detail = [{**row, "method": f"{row['method']} (N={row['n_experts']})"} for row in rows]
    return (
        "# Many-expert interference (SmolLM2-135M-Instruct)\n\n"
        "Normalised accuracy: merged exact match on each skill ÷ that expert alone on it, "
        "averaged over the N skills. Safety strength: the safety LoRA's weight (task "
        "arithmetic, TIES, DARE-TIES, TSV) or the SST-Merge patch scale; the experts' weight "
        "is `expert_weight` in run.json.\n\n"
        f"{summary_table(rows)}\n## References\n\n{references_table(references)}\n"
        "## Per-skill exact match\n\n"
        "(front: Pareto front of harmful refusal vs over-refusal over all rows)\n\n"
        f"{markdown_table(detail)}"
    )


def plot_interference(
    rows: Sequence[Mapping[str, Any]],
    references: Mapping[str, Any],
    path: str | Path,
) -> None:
    """Three panels vs N, one line per method: normalised accuracy, harmful refusal and benign
    over-refusal (base and safety-alone rates as horizontal references); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    panels = (
        ("normalized_accuracy", "normalised accuracy ↑"),
        ("harmful_refusal", "harmful refusal (HarmBench) ↑"),
        ("benign_over_refusal", "benign over-refusal ↓"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(14, 4.4), dpi=120)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for axis, (key, label) in zip(axes, panels, strict=True):
        for number, method in enumerate(methods):
            series = sorted(
                (row for row in rows if row["method"] == method and row[key] is not None),
                key=lambda row: row["n_experts"],
            )
            axis.plot(
                [row["n_experts"] for row in series],
                [row[key] for row in series],
                marker="osD^v"[number % 5],
                label=method,
            )
        if key == "normalized_accuracy":
            axis.axhline(1.0, color="grey", linestyle="--", label="expert alone")
            top = max((row[key] for row in rows if row[key] is not None), default=1.0)
            axis.set_ylim(0.0, max(1.05, 1.05 * top))
        else:
            for name, style in ((BASE_ROW, ":"), (SAFETY_ALONE, "--")):
                axis.axhline(references[name][key], color="grey", linestyle=style, label=name)
            axis.set_ylim(-0.03, 1.03)
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({row["n_experts"] for row in rows}))
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlabel("number of experts N")
        axis.set_title(label)
        axis.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.suptitle("Many-expert interference: N skill LoRAs + safety LoRA, SmolLM2-135M")
    save_png(figure, path)


def write_results(
    out: Path, rows: Sequence[Mapping[str, Any]], references: Mapping[str, Any]
) -> str:
    """``interference.json``, ``interference.md`` and ``interference.png`` in ``out``
    (atomically); returns the Markdown report."""
    report = markdown_report(rows, references)
    write_text(out / "interference.json", json.dumps(rows, indent=2) + "\n")
    write_text(out / "interference.md", report)
    plot_interference(rows, references, out / "interference.png")
    return report


class Benchmark:
    """The runs of one ``--workspace``: references, expert-alone scores and N-expert merges."""

    def __init__(self, workspace: Path, sweeps: Sequence[Sweep], progress: bool) -> None:
        self.workspace = workspace
        self.sweeps = tuple(sweeps)
        self.progress = progress

    def pipeline(self, profile: Profile) -> Pipeline:
        return Pipeline(profile, self.workspace, progress=self.progress)

    def _alone(self, spec: AdapterSpec, evaluation: EvalConfig) -> dict[str, Any]:
        """The cached evaluation record of base + ``spec`` alone under ``evaluation``."""
        profile = replace(interference_profile(0, ()), adapters=(spec,), evaluation=evaluation)
        pipeline = self.pipeline(profile)
        job = MergeJob(f"{spec.name} alone", None, pipeline.merges.single_adapter_config(spec))
        return pipeline.scoring.record(job)

    def references(self, n_max: int) -> dict[str, Any]:
        """Refusal rates of base and base + safety alone; each of the first ``n_max`` experts'
        exact match on its own skill (harmful/benign cut to one prompt each)."""
        pipeline = self.pipeline(interference_profile(0, ()))
        rates = ("harmful_refusal", "benign_over_refusal")
        base = pipeline.scoring.record(MergeJob(BASE_ROW, None, None))["metrics"]
        safety = self._alone(SAFETY_SPEC, EVALUATION)["metrics"]
        experts = {}
        for skill in SKILLS[:n_max]:
            own = replace(EVALUATION, utility=(skill,), n_harmful=1, n_benign=1)
            experts[skill] = self._alone(expert_spec(skill), own)["metrics"]["utility"][skill]
        return {
            BASE_ROW: {key: base[key] for key in rates},
            SAFETY_ALONE: {key: safety[key] for key in rates},
            "experts": experts,
        }

    def rows(self, n_experts: int, alone: Mapping[str, float]) -> list[dict[str, Any]]:
        """The rows of every sweep merged with the first ``n_experts`` experts."""
        pipeline = self.pipeline(interference_profile(n_experts, self.sweeps))
        pipeline.adapters.all()
        return [
            interference_row(n_experts, pipeline.scoring.record(job), alone)
            for job in pipeline.merges.jobs()
            if job.method != BASE_ROW
        ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
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
        help=f"numbers of experts to merge, each 1..{len(SKILLS)} (default: 2 4 8)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to run (default: all)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a busy machine)")
    parser.add_argument(
        "--sst-scale",
        type=float,
        default=SST_SCALE,
        help=f"scale of the SST-Merge safety patch (default {SST_SCALE})",
    )
    parser.add_argument(
        "--safety-weight",
        type=float,
        default=SAFETY_WEIGHT,
        help="weight of the safety LoRA in task arithmetic, TIES, DARE-TIES and TSV "
        f"(default {SAFETY_WEIGHT})",
    )
    parser.add_argument(
        "--expert-weight",
        type=float,
        default=EXPERT_WEIGHT,
        help=f"weight of every expert, all methods (task arithmetic's λ; default {EXPERT_WEIGHT})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    bad = sorted({n for n in args.n_experts if not 1 <= n <= len(SKILLS)})
    if bad:
        parser.error(f"--n-experts: each must be between 1 and {len(SKILLS)}, got {bad}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    for option in ("sst_scale", "safety_weight", "expert_weight"):
        value = getattr(args, option)
        if not (math.isfinite(value) and value >= 0):
            flag = "--" + option.replace("_", "-")
            parser.error(f"{flag} must be a finite number >= 0, got {value}")
    args.n_experts = sorted(set(args.n_experts))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    sweeps = method_sweeps(args.sst_scale, args.safety_weight, args.expert_weight)
    benchmark = Benchmark(
        args.workspace.expanduser().resolve(),
        [sweeps[method] for method in METHODS if method in args.methods],
        progress=not args.no_progress,
    )
    references = benchmark.references(max(args.n_experts))
    rows: list[dict[str, Any]] = []
    for n_experts in args.n_experts:  # the outputs are rewritten after each N (partial runs)
        rows += benchmark.rows(n_experts, references["experts"])
        report = write_results(Path(args.out), rows, references)
        meta = {
            "workspace": str(benchmark.workspace),
            "n_experts_done": sorted({row["n_experts"] for row in rows}),
            "n_experts": args.n_experts,
            "methods": args.methods,
            "sst_scale": args.sst_scale,
            "safety_weight": args.safety_weight,
            "expert_weight": args.expert_weight,
            "references": references,
            "seconds": round(time.perf_counter() - started, 1),
        }
        write_text(Path(args.out) / "run.json", json.dumps(meta, indent=2) + "\n")
        print(f"N={n_experts} done after {meta['seconds']:.0f} s", flush=True)
    print(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SSTError as error:
        sys.exit(f"error: {error}")
