"""The safety–utility benchmark pipeline, cached at every stage.

Stages (all under one *workspace* folder, each output keyed by the content of its inputs, so an
interrupted run resumes and a changed input recomputes only what depends on it):

1. **model** — the SmolLM2-135M-Instruct float32 folder (:func:`~sst_merge_plugin.data.smollm2.
   smollm2_model_dir`, in the asset cache).
2. **adapters** — ``adapters/<name>-<key>/``: PEFT LoRAs trained by
   :func:`~.training.train_lora_adapter` (key: base fingerprint, training pairs, hyper-parameters).
3. **data files** — ``data/benign-<key>.jsonl`` (the benign Fisher prompts: everyday
   questions, the training part of the benign-edgy probes, each skill's training prompts).
4. **Fisher files** — ``fishers/…``: collected with exactly ``sst-merge fisher`` through the
   content-keyed :mod:`sst_merge_plugin.fisher.cache`: per kind, ``F_harm`` (``refusal`` on the
   AdvBench training split) and ``F_benign`` (``kl``); ``lora`` kind restricted to the safety
   adapter; for Fisher merging a ``diag`` Fisher per adapter on its own training data. A
   sweep with ``fisher_at="utility_merge"`` gets its pair collected at ``W0 + U``, the
   task-arithmetic merge of the utility adapters, kept in ``models/utility-merge-<key>/``.
5. **merges** — each (method, knob) row is a mergekit configuration run in-process with
   mergekit's ``run_merge`` (the same code path as ``mergekit-yaml``; LoRA inputs through
   ``base+adapter`` and a shared ``--lora-merge-cache``) into ``merges/<row key>/``; the merged
   folder is deleted after evaluation unless ``keep_models``.
6. **evaluation** — ``evals/<row key>.json``: :func:`~sst_merge_plugin.evaluation.suite.
   evaluate_model` of the merged model, plus the merge time.

Rows (:mod:`sst_merge_plugin.evaluation.report` format) add ``drift`` = true/false accuracy of
the base model minus that of the row's model (knowledge lost; negative = gained).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sst_merge_plugin.atomic import write_text
from sst_merge_plugin.bench.profile import SAFETY, UTILITY_ONLY, AdapterSpec, Profile, Sweep
from sst_merge_plugin.core.errors import SSTError

log = logging.getLogger(__name__)

#: the row method names of the rows that are not sweeps
BASE_ROW = "base"


def content_key(payload: Any) -> str:
    """First 20 hex digits of the sha256 of ``payload`` as canonical JSON."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class MergeJob:
    """One row to produce: a label, a knob value and the mergekit configuration (or ``None`` for
    the base model itself)."""

    method: str
    knob: Any
    config: Mapping[str, Any] | None

    @property
    def key(self) -> str:
        return content_key({"method": self.method, "knob": self.knob, "config": self.config})


@dataclass(frozen=True)
class TrainingPrompts:
    """The prompt data adapters and Fisher files are made from (never the evaluation's).

    ``harmful``: the safety adapter's and ``F_harm``'s harmful requests; ``helpful_pairs``:
    everyday (question, helpful answer) pairs (the safety adapter's retain data; their
    questions are benign Fisher prompts); ``edgy``: benign over-refusal probes for ``F_benign``.
    """

    harmful: tuple[str, ...]
    helpful_pairs: tuple[tuple[str, str], ...]
    edgy: tuple[str, ...]

    @classmethod
    def from_assets(cls, cache_dir: str | Path | None = None) -> TrainingPrompts:
        """The AdvBench and benign-edgy training parts (:func:`~sst_merge_plugin.data.prompts.
        held_out_split`) and the ``benign-helpful`` pairs, from the asset cache."""
        from sst_merge_plugin.data.prompts import held_out_split, load_helpful_pairs, load_prompts

        harmful, _ = held_out_split(load_prompts("advbench", cache_dir=cache_dir))
        edgy, _ = held_out_split(load_prompts("benign-edgy", cache_dir=cache_dir))
        return cls(
            tuple(harmful.prompts),
            tuple(load_helpful_pairs(cache_dir)),
            tuple(edgy.prompts),
        )


class Pipeline:
    """Runs a :class:`Profile` in ``workspace`` (see the module doc).

    ``model_dir`` and ``prompts`` default to SmolLM2 and :meth:`TrainingPrompts.from_assets`;
    tests pass a tiny model and their own prompts.
    """

    def __init__(
        self,
        profile: Profile,
        workspace: str | Path,
        *,
        cache_dir: str | Path | None = None,
        keep_models: bool = False,
        progress: bool = True,
        device: str = "cpu",
        model_dir: str | Path | None = None,
        prompts: TrainingPrompts | None = None,
    ) -> None:
        self.profile = profile
        self.workspace = Path(workspace).expanduser().resolve()
        self.cache_dir = cache_dir
        self.keep_models = keep_models
        self.progress = progress
        self.device = device
        self._model_dir = None if model_dir is None else Path(model_dir)
        self._prompts = prompts
        self._adapters: dict[str, Path] = {}
        self._fishers: dict[tuple[str, str], Path] = {}

    # ---- stage 1-2: model and adapters --------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        if self._model_dir is None:
            from sst_merge_plugin.data.smollm2 import smollm2_model_dir

            self._model_dir = smollm2_model_dir(self.cache_dir)
        return self._model_dir

    @property
    def prompts(self) -> TrainingPrompts:
        if self._prompts is None:
            self._prompts = TrainingPrompts.from_assets(self.cache_dir)
        return self._prompts

    def training_pairs(self, spec: AdapterSpec) -> list[tuple[str, str]]:
        """(prompt, response) pairs of an adapter: AdvBench training refusals (+ helpful retain
        pairs) for the safety adapter, the skill's training items otherwise."""
        from sst_merge_plugin.data.tasks import skill_splits

        if spec.skill is None:
            from sst_merge_plugin.data.refusals import refusal_targets

            prompts = list(self.prompts.harmful[: spec.n_train])
            refusals = refusal_targets(prompts, seed=spec.training.seed)
            retain = list(self.prompts.helpful_pairs[: spec.n_retain])
            return list(zip(prompts, refusals, strict=True)) + retain
        train, _ = skill_splits(spec.skill, spec.n_train, 0, seed=spec.training.seed)
        return [(item.prompt, item.answer) for item in train]

    def adapter(self, spec: AdapterSpec) -> Path:
        """The trained adapter folder of ``spec`` (trained now if not cached)."""
        if spec.name in self._adapters:
            return self._adapters[spec.name]
        from sst_merge_plugin.bench.training import examples_sha256, train_lora_adapter
        from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

        pairs = self.training_pairs(spec)
        key = content_key(
            {
                "model": checkpoint_fingerprint(self.model_dir),
                "pairs": examples_sha256(pairs),
                "training": asdict(spec.training),
            }
        )
        folder = self.workspace / "adapters" / f"{spec.name}-{key}"
        if not (folder / "adapter_model.safetensors").is_file():
            log.info("training adapter %s (%d pairs) into %s", spec.name, len(pairs), folder)
            train_lora_adapter(
                self.model_dir,
                pairs,
                folder,
                spec.training,
                device=self.device,
                progress=self.progress,
                description=f"train {spec.name}",
            )
        self._adapters[spec.name] = folder
        return folder

    def adapters(self) -> dict[str, Path]:
        return {spec.name: self.adapter(spec) for spec in self.profile.adapters}

    # ---- stage 3-4: Fisher files --------------------------------------------------------------
    def prompt_file(self, label: str, records: list[dict[str, str]]) -> Path:
        """``data/<label>-<content key>.jsonl`` holding ``records`` (written once)."""
        path = self.workspace / "data" / f"{label}-{content_key(records)}.jsonl"
        if not path.is_file():
            write_text(path, "".join(json.dumps(record) + "\n" for record in records))
        return path

    def harmful_prompt_file(self) -> Path:
        """JSONL of the ``F_harm`` prompts (the first ``n_harm`` harmful training prompts)."""
        prompts = self.prompts.harmful[: self.profile.fisher.n_harm]
        return self.prompt_file("harm", [{"prompt": p} for p in prompts])

    def benign_prompt_file(self) -> Path:
        """JSONL of the benign Fisher prompts: everyday questions, benign-edgy training
        probes, and each skill's training prompts."""
        from sst_merge_plugin.data.tasks import skill_splits

        settings = self.profile.fisher
        prompts = [q for q, _ in self.prompts.helpful_pairs[: settings.n_benign_helpful]]
        prompts += self.prompts.edgy[: settings.n_benign_edgy]
        for skill in self.profile.skills:
            train, _ = skill_splits(skill, settings.n_benign_per_skill, 0, seed=settings.seed + 1)
            prompts += [item.prompt for item in train]
        return self.prompt_file("benign", [{"prompt": p} for p in prompts])

    def utility_merge_dir(self) -> Path:
        """The kept model folder of the utility-only merge ``W0 + U`` (task arithmetic of the
        utility adapters), merged once into ``models/utility-merge-<config key>/``."""
        from sst_merge_plugin.atomic import atomic_path

        config = self.merge_config(UTILITY_ONLY, None)
        folder = self.workspace / "models" / f"utility-merge-{content_key(config)}"
        if not (folder / "config.json").is_file():
            with atomic_path(folder, directory=True) as temporary:
                self.run_merge(MergeJob(UTILITY_ONLY.label, None, config), temporary)
        return folder

    def _fisher(
        self,
        label: str,
        data: str,
        objective: str,
        kind: str,
        model_dir: Path,
        **extra: Any,
    ) -> Path:
        """The cached Fisher file of ``sst-merge fisher`` on the model folder ``model_dir``."""
        from sst_merge_plugin.fisher.cache import FisherRequest, cached_fisher_file

        settings = self.profile.fisher
        options = {
            "batch_size": settings.batch_size,
            "max_length": settings.max_length,
            "seed": settings.seed,
            "device": self.device,
            **extra.pop("options", {}),
        }
        request = FisherRequest(
            label, str(model_dir), data, objective, kind, options=options, **extra
        )
        return cached_fisher_file(request, self.workspace / "fishers")

    def fisher_pair(self, kind: str, at: str = "base") -> tuple[Path, Path]:
        """``(harm_fisher, benign_fisher)`` files of ``kind``, collected at the base model
        (``at="base"``) or at the utility-only merge ``W0 + U`` (``at="utility_merge"``)."""
        slot = "pair" if at == "base" else f"pair@{at}"
        if (kind, slot) not in self._fishers:
            settings = self.profile.fisher
            model_dir = self.model_dir if at == "base" else self.utility_merge_dir()
            restrict = (
                {"restrict_to": str(self.adapter(self._safety_spec))} if kind == "lora" else {}
            )
            harm = self._fisher(
                "harm",
                str(self.harmful_prompt_file()),
                "refusal",
                kind,
                model_dir,
                options={"split": "all", "field": "prompt"},
                **restrict,
            )
            benign = self._fisher(
                "benign",
                str(self.benign_prompt_file()),
                settings.benign_objective,
                kind,
                model_dir,
                options={
                    "split": "all",
                    "field": "prompt",
                    "response_tokens": settings.response_tokens,
                },
                **restrict,
            )
            self._fishers[(kind, slot)] = (harm, benign)
        return self._fishers[(kind, slot)]

    def adapter_fisher(self, spec: AdapterSpec) -> Path:
        """A ``diag`` Fisher of base+adapter on the adapter's own training data (Fisher merging)."""
        if (spec.name, "diag") not in self._fishers:
            pairs = self.training_pairs(spec)[: self.profile.fisher.n_benign_per_skill * 2]
            path = self.prompt_file(spec.name, [{"prompt": p, "response": r} for p, r in pairs])
            self._fishers[(spec.name, "diag")] = self._fisher(
                spec.name,
                str(path),
                "lm",
                "diag",
                self.model_dir,
                adapter=str(self.adapter(spec)),
                options={"split": "all"},
            )
        return self._fishers[(spec.name, "diag")]

    @property
    def _safety_spec(self) -> AdapterSpec:
        return next(spec for spec in self.profile.adapters if spec.name == SAFETY)

    def export_inputs(self, out_dir: str | Path) -> Path:
        """The merge inputs under ``out_dir/inputs``, named for ``configs/mergekit/*.yml``:
        ``adapters/<adapter name>/`` and ``fishers/<kind>/{harm,benign}.safetensors`` for the
        Fisher pairs this run collected at the base model (hard links where possible, else
        copies; the folder is replaced atomically). Returns the ``inputs`` folder."""
        from sst_merge_plugin.atomic import atomic_path

        target = Path(out_dir) / "inputs"
        with atomic_path(target, directory=True) as temporary:
            for name, folder in self.adapters().items():
                shutil.copytree(folder, temporary / "adapters" / name, copy_function=_link_or_copy)
            for (kind, what), files in self._fishers.items():
                if what != "pair":
                    continue
                (temporary / "fishers" / kind).mkdir(parents=True)
                for role, path in zip(("harm", "benign"), files, strict=True):
                    _link_or_copy(path, temporary / "fishers" / kind / f"{role}.safetensors")
        return target

    # ---- stage 5: merge configurations --------------------------------------------------------
    def _input(self, spec: AdapterSpec) -> str:
        return f"{self.model_dir}+{self.adapter(spec)}"

    def merge_config(self, sweep: Sweep, value: Any) -> dict[str, Any]:
        """The mergekit configuration of one point of ``sweep`` (``knob = value``); for a
        ``fusion_bench:<class path>`` method the FusionBench job configuration
        (:func:`~.fusion_merge.fusion_bench_config`)."""
        from sst_merge_plugin.bench.fusion_merge import fusion_bench_config, is_fusion_bench_method

        inputs = [
            spec
            for spec in self.profile.adapters
            if not (spec.name == SAFETY and sweep.utilities_only)
        ]
        if is_fusion_bench_method(sweep.merge_method):
            adapters = {spec.name: self.adapter(spec) for spec in inputs}
            return fusion_bench_config(sweep, value, self.model_dir, adapters)
        shared: dict[str, Any] = dict(sweep.parameters)
        roles = sweep.merge_method.startswith("sst_") and sweep.merge_method != "sst_fisher_merge"
        safety_weight = 1.0
        density = None
        if sweep.knob == "safety_weight":
            safety_weight = float(value)
        elif sweep.knob == "density":
            density = float(value)
        elif sweep.knob is not None:
            shared[sweep.knob] = value
        if sweep.fisher_kind is not None:
            harm, benign = self.fisher_pair(sweep.fisher_kind, sweep.fisher_at)
            shared["harm_fisher"] = str(harm)
            if sweep.merge_method == "sst_merge":
                shared["benign_fisher"] = str(benign)
            if sweep.fisher_at != "base":  # collected at W0 + U on purpose, not at the base
                shared["check_fingerprint"] = False
        models = []
        for spec in inputs:
            weight = safety_weight if spec.name == SAFETY else sweep.utility_weight
            params: dict[str, Any] = {"weight": weight}
            if density is not None:
                params["density"] = density
            elif sweep.merge_method == "dare_linear":  # RESTA: DARE on utilities only
                params["density"] = 1.0 if spec.name == SAFETY else 0.5
            if roles and spec.name == SAFETY:
                params["role"] = "safety"
            if sweep.per_model_fisher:
                params["fisher"] = str(self.adapter_fisher(spec))
            models.append({"model": self._input(spec), "parameters": params})
        return {
            "merge_method": sweep.merge_method,
            "base_model": str(self.model_dir),
            "dtype": "float32",
            "parameters": shared,
            "models": models,
        }

    def single_adapter_config(self, spec: AdapterSpec) -> dict[str, Any]:
        """``base + adapter`` alone (task arithmetic with one input of weight 1)."""
        return {
            "merge_method": "task_arithmetic",
            "base_model": str(self.model_dir),
            "dtype": "float32",
            "models": [{"model": self._input(spec), "parameters": {"weight": 1.0}}],
        }

    def jobs(self) -> Iterator[MergeJob]:
        """Every row of the profile: base, single adapters, then each sweep point."""
        yield MergeJob(BASE_ROW, None, None)
        if self.profile.single_adapters:
            for spec in self.profile.adapters:
                yield MergeJob(f"{spec.name} alone", None, self.single_adapter_config(spec))
        for sweep in self.profile.sweeps:
            for value in sweep.values:
                yield MergeJob(sweep.label, value, self.merge_config(sweep, value))

    def run_merge(self, job: MergeJob, out_dir: Path) -> float:
        """Run ``job``'s configuration in-process with mergekit (or FusionBench for a
        configuration with ``"host": "fusion_bench"``); returns the wall time."""
        from sst_merge_plugin.bench.fusion_merge import HOST, run_fusion_merge

        if job.config.get("host") == HOST:
            return run_fusion_merge(job.config, out_dir, self.device, quiet=not self.progress)
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        from sst_merge_plugin.mergekit.registration import install

        install()
        config = MergeConfiguration.model_validate(job.config)
        options = MergeOptions(
            lora_merge_cache=str(self.workspace / "lora_merge_cache"),
            random_seed=0,
            quiet=not self.progress,
            copy_tokenizer=True,
            device=self.device,
        )
        started = time.perf_counter()
        run_merge(config, str(out_dir), options=options)
        return time.perf_counter() - started

    # ---- stage 6: evaluation ------------------------------------------------------------------
    def evaluate_job(self, job: MergeJob) -> dict[str, Any]:
        """The cached evaluation record of ``job`` (merged and evaluated now if needed)."""
        from sst_merge_plugin.evaluation.suite import evaluate_model

        eval_key = content_key({"job": job.key, "eval": asdict(self.profile.evaluation)})
        record_path = self.workspace / "evals" / f"{eval_key}.json"
        if record_path.is_file():
            return json.loads(record_path.read_text(encoding="utf-8"))
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
        metrics = evaluate_model(model, tokenizer, self.profile.evaluation, progress=self.progress)
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
        write_text(record_path, json.dumps(record, indent=2))
        return record

    def run(self, on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Produce every row (cached stages are reused); ``on_row`` sees each finished row."""
        from tqdm.auto import tqdm

        self.workspace.mkdir(parents=True, exist_ok=True)
        self.adapters()
        jobs = list(self.jobs())  # collects the Fisher files the sweeps need
        rows: list[dict[str, Any]] = []
        base_accuracy: float | None = None
        for job in tqdm(jobs, desc="merge + evaluate", disable=not self.progress):
            record = self.evaluate_job(job)
            if job.method == BASE_ROW:
                base_accuracy = record["metrics"].get("truefalse_accuracy")
            rows.append(result_row(record, base_accuracy))
            if on_row is not None:
                on_row(rows[-1])
        return rows


def _link_or_copy(source: str | Path, destination: str | Path) -> None:
    """Hard-link ``source`` to ``destination`` (same file system), else copy it."""
    try:
        Path(destination).hardlink_to(source)
    except OSError:
        shutil.copy2(source, destination)


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
