"""The evaluation stage: each row's merged model scored once, and the report rows.

:class:`Scoring` merges a :class:`~.merges.MergeJob` into ``merges/<job key>/`` (removed after
scoring unless ``keep_models``), scores it with
:func:`~sst_merge_plugin.evaluation.suite.evaluate_model` and caches the record as
``evals/<key>.json`` (key: the job and the evaluation settings). :func:`result_row` turns a
record into a report row (:mod:`sst_merge_plugin.evaluation.report`), adding ``drift`` = the
base model's true/false accuracy minus the row's (knowledge lost; negative = gained);
:func:`write_outputs` writes ``results.json``, ``results.md`` and ``pareto.png``.

Concurrent runs on one workspace score a record once: it is checked and, if missing, made under
its lock (:func:`~sst_merge_plugin.atomic.make_once`), and ``merges/<job key>/`` is used only
under its own lock (:func:`~sst_merge_plugin.atomic.entry_lock`; two evaluation settings share
a job's folder), so no run removes a folder another is merging into or evaluating.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sst_merge_plugin.atomic import entry_lock, make_once, write_text
from sst_merge_plugin.bench.merges import MergeJob, Merges
from sst_merge_plugin.bench.workspace import Workspace, content_key
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.suite import EvalConfig


class Scoring:
    """Cached evaluation records of merge jobs (module doc)."""

    def __init__(
        self,
        workspace: Workspace,
        evaluation: EvalConfig,
        model_dir: Path,
        merges: Merges,
        *,
        keep_models: bool,
        device: str,
        progress: bool,
    ) -> None:
        self.workspace = workspace
        self.evaluation = evaluation
        self.model_dir = model_dir
        self.merges = merges
        self.keep_models = keep_models
        self.device = device
        self.progress = progress

    def record(self, job: MergeJob) -> dict[str, Any]:
        """The cached evaluation record of ``job`` (merged and evaluated now if needed)."""
        eval_key = content_key({"job": job.key, "eval": asdict(self.evaluation)})
        record_path = self.workspace / "evals" / f"{eval_key}.json"

        def evaluate(entry: Path) -> None:
            with entry_lock(self.workspace / "merges" / job.key):
                record = self._evaluate(job)
            write_text(entry, json.dumps(record, indent=2))

        make_once(record_path, evaluate, Path.is_file)
        return json.loads(record_path.read_text(encoding="utf-8"))

    def _evaluate(self, job: MergeJob) -> dict[str, Any]:
        """Merge ``job`` into ``merges/<job key>/`` (the caller holds its lock), score it and
        return the record; the folder is removed afterwards unless ``keep_models``."""
        from sst_merge_plugin.evaluation.suite import evaluate_model

        merge_seconds = None
        model_dir = self.model_dir
        merged = self.workspace / "merges" / job.key
        if job.config is not None:
            if merged.exists():
                shutil.rmtree(merged)
            merged.parent.mkdir(parents=True, exist_ok=True)
            try:
                merge_seconds = self.merges.run(job, merged)
            except BaseException:
                shutil.rmtree(merged, ignore_errors=True)
                raise
            model_dir = merged
        model, tokenizer = load_model(model_dir, self.device)
        metrics = evaluate_model(model, tokenizer, self.evaluation, progress=self.progress)
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
    """The kept gain/cost fractions of an ``sst_merge_report.json`` (its ``summary``)."""
    summary = json.loads(path.read_text(encoding="utf-8")).get("summary", {})
    keys = (
        "pooled_gain_kept_fraction",
        "pooled_cost_kept_fraction",
        "kept_coordinates",
        "n_coordinates",
    )
    return {key: summary[key] for key in keys if key in summary}


def result_row(record: Mapping[str, Any], base_accuracy: float | None) -> dict[str, Any]:
    """A report row (:mod:`sst_merge_plugin.evaluation.report`) from an evaluation record."""
    metrics = record["metrics"]
    accuracy = metrics.get("truefalse_accuracy")
    drift = None if accuracy is None or base_accuracy is None else base_accuracy - accuracy
    row = {
        "method": record["method"],
        "knob": record["knob"],
        "harmful_refusal": metrics["harmful_refusal"],
        "benign_over_refusal": metrics["benign_over_refusal"],
        "utility": metrics["utility"],
        "utility_mean": metrics["utility_mean"],
        "truefalse_accuracy": accuracy,
        "drift": drift,
        "merge_seconds": record["merge_seconds"],
    }
    if record.get("sst_summary"):
        row.update(record["sst_summary"])
    return row


def write_outputs(rows: list[dict[str, Any]], out_dir: str | Path, title: str) -> dict[str, Path]:
    """``results.json``, ``results.md`` and ``pareto.png`` in ``out_dir`` (atomic)."""
    from sst_merge_plugin.evaluation.report import write_report

    out = Path(out_dir)
    paths = {
        "json": out / "results.json",
        "markdown": out / "results.md",
        "plot": out / "pareto.png",
    }
    write_report(
        rows,
        json_path=paths["json"],
        markdown_path=paths["markdown"],
        plot_path=paths["plot"],
        title=title,
    )
    return paths
