"""The merge stage: one mergekit (or FusionBench) configuration per benchmark row, run in-process.

* :class:`MergeJob` — a row: a label, a knob value and the configuration (``None`` for the base
  model itself); its :attr:`~MergeJob.key` is the content key of all three.
* :class:`Merges` — the configurations of a profile's sweeps at their grid points
  (:meth:`~Merges.config`; LoRA inputs as mergekit's ``base+adapter``), the reference rows
  (:meth:`~Merges.references`) and each sweep's grid jobs (:meth:`~Merges.sweep_jobs`), and
  :meth:`~Merges.run` — mergekit's ``run_merge`` (the code path of ``mergekit-yaml``, with a
  shared ``--lora-merge-cache``), or :func:`~.fusion_merge.run_fusion_merge` for a
  ``fusion_bench:<class path>`` method. :meth:`~Merges.utility_merge_dir` keeps the utility-only
  merge ``W0 + U`` (task arithmetic of the utility adapters) in ``models/`` as a Fisher
  collection point.

Concurrent runs on one workspace: the kept utility merge and each entry of the LoRA merge cache
(``base+adapter`` merged into a full model, which mergekit itself makes by creating the folder
and then writing into it) are made once, atomically, under their locks
(:func:`~sst_merge_plugin.atomic.make_once`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst_merge_plugin.atomic import atomic_path, make_once
from sst_merge_plugin.bench.adapters import Adapters
from sst_merge_plugin.bench.fishers import Fishers
from sst_merge_plugin.bench.profile import (
    SAFETY,
    UTILITY_ONLY,
    AdapterSpec,
    FisherPoint,
    Profile,
    Sweep,
    SweepInputs,
)
from sst_merge_plugin.bench.tuning import UTILITY_WEIGHT, apply_knobs
from sst_merge_plugin.bench.workspace import Workspace, content_key
from sst_merge_plugin.method.settings import ProjectSide

if TYPE_CHECKING:
    from mergekit.common import ModelReference
    from mergekit.options import MergeOptions

#: the row method name of the base model itself
BASE_ROW = "base"


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


class Merges:
    """The merge configurations and runs of a profile (module doc)."""

    def __init__(
        self,
        workspace: Workspace,
        profile: Profile,
        model_dir: Path,
        adapters: Adapters,
        fishers: Fishers,
        *,
        device: str,
        progress: bool,
    ) -> None:
        self.workspace = workspace
        self.profile = profile
        self.model_dir = model_dir
        self.adapters = adapters
        self.fishers = fishers
        self.device = device
        self.progress = progress

    def config(self, sweep: Sweep, point: Mapping[str, Any]) -> dict[str, Any]:
        """The mergekit configuration of ``sweep`` at the grid ``point`` (knob → value,
        :func:`~.tuning.apply_knobs`); for a ``fusion_bench:<class path>`` method the FusionBench
        job configuration (:func:`~.fusion_merge.fusion_bench_config`)."""
        from sst_merge_plugin.bench.fusion_merge import fusion_bench_config, is_fusion_bench_method

        inputs = [
            spec
            for spec in self.profile.adapters
            if sweep.inputs == SweepInputs.ALL
            or (spec.name == SAFETY) == (sweep.inputs == SweepInputs.SAFETY)
        ]
        if is_fusion_bench_method(sweep.merge_method):
            folders = {spec.name: self.adapters.folder(spec) for spec in inputs}
            return fusion_bench_config(sweep, point, self.model_dir, folders)
        shared: dict[str, Any] = dict(sweep.parameters)
        roles = sweep.merge_method.startswith("sst_") and sweep.merge_method != "sst_fisher_merge"
        side = ProjectSide.parse(f"sweep {sweep.label}: project", sweep.project)
        if sweep.fisher_kind is not None and side.safety:
            harm, benign = self.fishers.pair(sweep.fisher_kind, sweep.fisher_at)
            shared["harm_fisher"] = str(harm)
            if sweep.merge_method == "sst_merge":
                shared["benign_fisher"] = str(benign)
            if sweep.fisher_at != FisherPoint.BASE:  # collected at W0 + U on purpose
                shared["check_fingerprint"] = False
        dual = sweep.fisher_kind is not None and side.utility
        if dual:
            shared["project"] = str(side)
            cost = self.fishers.cost(sweep.fisher_kind, sweep.cost_objective, sweep.dual_at)
            shared["cost_fisher"] = str(cost)
        models = []
        for spec in inputs:
            params: dict[str, Any] = {"weight": 1.0}
            if sweep.merge_method == "dare_linear":  # RESTA: DARE on utilities only
                params["density"] = 1.0 if spec.name == SAFETY else 0.5
            if roles and spec.name == SAFETY:
                params["role"] = "safety"
            if sweep.per_model_fisher:
                params["fisher"] = str(self.fishers.adapter_fisher(spec))
            if dual and sweep.merge_method == "sst_merge" and spec.name != SAFETY:
                gain = self.fishers.adapter_fisher(spec, sweep.fisher_kind, sweep.dual_at)
                params["gain_fisher"] = str(gain)
            models.append({"model": self.adapters.model_input(spec), "parameters": params})
        config = {
            "merge_method": sweep.merge_method,
            "base_model": str(self.model_dir),
            "dtype": "float32",
            "parameters": shared,
            "models": models,
        }
        safety = self.adapters.model_input(self.adapters.safety)
        return apply_knobs(config, point, lambda entry: entry["model"] == safety)

    def job(self, sweep: Sweep, point: Mapping[str, Any]) -> MergeJob:
        """The row of ``sweep`` at ``point`` (its knob values are the row's ``knob``)."""
        return MergeJob(sweep.label, dict(point) or None, self.config(sweep, point))

    def single_adapter_config(self, spec: AdapterSpec) -> dict[str, Any]:
        """``base + adapter`` alone (task arithmetic with one input of weight 1)."""
        return {
            "merge_method": "task_arithmetic",
            "base_model": str(self.model_dir),
            "dtype": "float32",
            "models": [{"model": self.adapters.model_input(spec), "parameters": {"weight": 1.0}}],
        }

    def references(self) -> Iterator[MergeJob]:
        """The reference rows: the base model, the safety adapter alone (the ceiling a merge can
        reach), each skill adapter alone (``single_adapters``), the utility-only merge at each
        of the profile's ``reference_lambdas``."""
        yield MergeJob(BASE_ROW, None, None)
        for spec in self.profile.adapters:
            if spec.name == SAFETY or self.profile.single_adapters:
                yield MergeJob(f"{spec.name} alone", None, self.single_adapter_config(spec))
        for value in self.profile.reference_lambdas:
            yield self.job(UTILITY_ONLY, {UTILITY_WEIGHT: value})

    def sweep_jobs(self, sweep: Sweep) -> list[MergeJob]:
        """Every grid point of ``sweep``, in grid order."""
        return [self.job(sweep, point) for point in sweep.points()]

    def utility_merge_dir(self) -> Path:
        """The kept model folder of the utility-only merge ``W0 + U`` (task arithmetic of the
        utility adapters), merged once into ``models/utility-merge-<config key>/``."""
        config = self.config(UTILITY_ONLY, {})
        folder = self.workspace / "models" / f"utility-merge-{content_key(config)}"

        def merge(entry: Path) -> None:
            with atomic_path(entry, directory=True) as temporary:
                self.run(MergeJob(UTILITY_ONLY.label, None, config), temporary)

        make_once(folder, merge, lambda entry: (entry / "config.json").is_file())
        return folder

    def run(self, job: MergeJob, out_dir: Path) -> float:
        """Merge ``job`` into ``out_dir`` (:func:`run_merge_job`); returns the wall time."""
        assert job.config is not None, "the base row has nothing to merge"
        return run_merge_job(
            job.config,
            out_dir,
            lora_merge_cache=self.workspace / "lora_merge_cache",
            device=self.device,
            progress=self.progress,
        )


def run_merge_job(
    config: Mapping[str, Any],
    out_dir: Path,
    *,
    lora_merge_cache: Path,
    device: str,
    progress: bool,
) -> float:
    """Run a merge configuration in-process — mergekit's ``run_merge`` (the code path of
    ``mergekit-yaml``, LoRA inputs merged through ``lora_merge_cache``), or FusionBench for a
    configuration with ``"host": "fusion_bench"`` — into ``out_dir``; returns the wall time."""
    from sst_merge_plugin.bench.fusion_merge import HOST, run_fusion_merge

    if config.get("host") == HOST:
        return run_fusion_merge(config, out_dir, device, quiet=not progress)
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from sst_merge_plugin.mergekit.registration import install

    install()
    options = MergeOptions(
        lora_merge_cache=str(lora_merge_cache),
        random_seed=0,
        quiet=not progress,
        copy_tokenizer=True,
        device=device,
    )
    merge_config = MergeConfiguration.model_validate(config)
    started = time.perf_counter()
    for reference in merge_config.referenced_models():
        if reference.lora is not None:
            _cached_lora_merge(reference, options)
    run_merge(merge_config, str(out_dir), options=options)
    return time.perf_counter() - started


def _cached_lora_merge(reference: ModelReference, options: MergeOptions) -> None:
    """Put mergekit's LoRA merge cache entry of ``reference`` (a ``base+adapter``
    ``ModelReference``) in place once, atomically, under its lock, so that ``run_merge`` only
    reads it (``options``: cache folder, dtype, remote code as ``run_merge`` uses them)."""
    cache = Path(options.lora_merge_cache)
    # mergekit 0.1.5's entry name (mergekit.common.ModelReference.merged)
    entry = cache / f"{reference.model._unique_id()}_{reference.lora._unique_id()}"

    def merge(final: Path) -> None:
        with atomic_path(final, directory=True) as temporary:
            merged = reference.merged(
                cache_dir=str(temporary),
                trust_remote_code=options.trust_remote_code,
                lora_merge_dtype=options.lora_merge_dtype,
            )
            written = Path(merged.model.path)  # temporary/<entry name>/
            for item in written.iterdir():
                item.rename(temporary / item.name)
            written.rmdir()

    make_once(entry, merge)
