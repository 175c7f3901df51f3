"""The evaluation stage: each row's merged model scored once per split, and the report rows.

:class:`Scoring` merges a :class:`~.merges.MergeJob` (with the ``run_merge`` callable it is
given, e.g. :meth:`.merges.Merges.run`) into ``merges/<job key>/`` (removed after
scoring unless ``keep_models``), scores it with
:func:`~sst_merge_plugin.evaluation.suite.evaluate_model` on the given split's
:class:`~sst_merge_plugin.evaluation.suite.EvalConfig` and caches the record as
``evals/<key>.json`` (key: the job and the evaluation settings, so a model's validation and
test records are separate). :func:`result_row` turns a record into a report row: the rates with
their Wilson 95 % intervals (utility pooled over the skills' items) and the drifts — the base
model's MMLU accuracy (and true/false accuracy, where scored) minus the row's.

Concurrent runs on one workspace score a record once: it is checked and, if missing, made under
its lock (:func:`~sst_merge_plugin.atomic.make_once`), and ``merges/<job key>/`` is used only
under its own lock (:func:`~sst_merge_plugin.atomic.entry_lock`; two evaluation settings share
a job's folder), so no run removes a folder another is merging into or evaluating.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sst_merge_plugin.atomic import entry_lock, make_once, write_text
from sst_merge_plugin.bench.merges import MergeJob
from sst_merge_plugin.bench.workspace import Workspace, content_key
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.suite import EvalConfig


def eval_key(job_key: str, evaluation: EvalConfig) -> str:
    """The cache key of merge job ``job_key`` scored on ``evaluation``, under the refusal
    judge's current rules (:data:`~sst_merge_plugin.evaluation.judge.RULES_DIGEST`)."""
    from sst_merge_plugin.evaluation.judge import RULES_DIGEST

    return content_key({"job": job_key, "eval": asdict(evaluation), "judge": RULES_DIGEST})


class Scoring:
    """Cached evaluation records of merge jobs (module doc)."""

    def __init__(
        self,
        workspace: Workspace,
        model_dir: Path,
        run_merge: Callable[[MergeJob, Path], float],
        *,
        keep_models: bool,
        device: str,
        progress: bool,
    ) -> None:
        self.workspace = workspace
        self.model_dir = model_dir
        self.run_merge = run_merge
        self.keep_models = keep_models
        self.device = device
        self.progress = progress

    def record(self, job: MergeJob, evaluation: EvalConfig) -> dict[str, Any]:
        """The cached record of ``job`` scored on ``evaluation`` (merged and scored now if
        needed)."""
        record_path = self.workspace / "evals" / f"{eval_key(job.key, evaluation)}.json"

        def evaluate(entry: Path) -> None:
            with entry_lock(self.workspace / "merges" / job.key):
                record = self._evaluate(job, evaluation)
            write_text(entry, json.dumps(record, indent=2))

        make_once(record_path, evaluate, Path.is_file)
        return json.loads(record_path.read_text(encoding="utf-8"))

    def _evaluate(self, job: MergeJob, evaluation: EvalConfig) -> dict[str, Any]:
        """Merge ``job`` into ``merges/<job key>/`` (the caller holds its lock), score it on
        ``evaluation`` and return the record; the folder is removed afterwards unless
        ``keep_models``."""
        from sst_merge_plugin.evaluation.suite import evaluate_model

        merge_seconds = None
        model_dir = self.model_dir
        merged = self.workspace / "merges" / job.key
        if job.config is not None:
            if merged.exists():
                shutil.rmtree(merged)
            merged.parent.mkdir(parents=True, exist_ok=True)
            try:
                merge_seconds = self.run_merge(job, merged)
            except BaseException:
                shutil.rmtree(merged, ignore_errors=True)
                raise
            model_dir = merged
        model, tokenizer = load_model(model_dir, self.device)
        metrics = evaluate_model(model, tokenizer, evaluation, progress=self.progress)
        del model
        sst_report = merged / "sst_merge_report.json"
        record = {
            "method": job.method,
            "knob": job.knob,
            "config": job.config,
            "merge_seconds": merge_seconds,
            "metrics": metrics,
            "sst_summary": summarise_sst_report(sst_report) if sst_report.is_file() else None,
        }
        if job.config is not None and not self.keep_models:
            shutil.rmtree(merged, ignore_errors=True)
        return record


def load_model(model_dir: Path, device: str) -> tuple[Any, Any]:
    """A merged (or base) folder as ``(model, tokenizer)`` in float32 eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise SSTError(f"{model_dir} is not a model folder")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def summarise_sst_report(path: Path) -> dict[str, Any]:
    """The kept gain/cost fractions of an ``sst_merge_report.json`` (its ``summary``); with the
    dual projection also ``utility_projection``: per utility input (the report's model name),
    the pooled fraction of its gain Fisher ``G_i`` kept and of its safety disturbance (cost
    Fisher ``C``) removed."""
    summary = json.loads(path.read_text(encoding="utf-8")).get("summary", {})
    keys = (
        "pooled_gain_kept_fraction",
        "pooled_cost_kept_fraction",
        "kept_coordinates",
        "n_coordinates",
    )
    out = {key: summary[key] for key in keys if key in summary}
    per_input = {
        name: {
            "utility_gain_kept": item["pooled_gain_kept_fraction"],
            "safety_disturbance_removed": item["safety_disturbance_removed"],
        }
        for name, item in summary.get("utility", {}).items()
        if "pooled_gain_kept_fraction" in item
    }
    if per_input:
        out["utility_projection"] = per_input
    return out


def result_row(record: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """A report row from an evaluation record; ``base`` is the base model's record on the same
    split (for the drifts; ``None`` leaves them out)."""
    metrics = record["metrics"]
    row: dict[str, Any] = {
        "method": record["method"],
        "knob": record["knob"],
        "harmful_refusal": metrics["harmful_refusal"],
        "benign_over_refusal": metrics["benign_over_refusal"],
        "utility": metrics["utility"],
        "utility_mean": metrics["utility_mean"],
        "n_harmful": metrics["n_harmful"],
        "n_benign": metrics["n_benign"],
        "n_utility": metrics["n_utility"],
        "merge_seconds": record["merge_seconds"],
    }
    row["intervals"] = rate_intervals(metrics)
    for key, drift in (("mmlu_accuracy", "mmlu_drift"), ("truefalse_accuracy", "drift")):
        value = metrics.get(key)
        if value is None:
            continue
        row[key] = value
        reference = None if base is None else base["metrics"].get(key)
        row[drift] = None if reference is None else reference - value
    if metrics.get("n_mmlu"):
        row["n_mmlu"] = metrics["n_mmlu"]
    if record.get("sst_summary"):
        row.update(record["sst_summary"])
    return row


def rate_intervals(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Wilson 95 % intervals of a record's rates: refusal, over-refusal, utility (every skill
    item pooled; the skills have equal item counts, so the pooled rate is ``utility_mean``),
    MMLU accuracy where scored."""
    from sst_merge_plugin.evaluation.stats import wilson_interval

    def counted(rate: float, n: int) -> dict[str, float]:
        return wilson_interval(round(rate * n), n).as_dict()

    intervals = {
        "harmful_refusal": counted(metrics["harmful_refusal"], metrics["n_harmful"]),
        "benign_over_refusal": counted(metrics["benign_over_refusal"], metrics["n_benign"]),
    }
    if metrics["utility"]:
        n = sum(metrics["n_utility"].values())
        correct = sum(
            round(acc * metrics["n_utility"][name]) for name, acc in metrics["utility"].items()
        )
        intervals["utility"] = wilson_interval(correct, n).as_dict()
    if metrics.get("n_mmlu"):
        intervals["mmlu_accuracy"] = counted(metrics["mmlu_accuracy"], metrics["n_mmlu"])
    return intervals
