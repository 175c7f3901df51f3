"""The safety–utility benchmark pipeline: the stages wired together, every output cached.

Stages (all under one :class:`~.workspace.Workspace`, each output keyed by the content of its
inputs, so an interrupted run resumes and a changed input recomputes only what depends on it;
runs sharing the workspace concurrently make each output once, under its lock):

1. **model** — the float32 folder of the profile's registered model
   (:attr:`.profile.Profile.model`, SmolLM2-135M-Instruct for ``quick``/``full``;
   :func:`~sst_merge_plugin.data.models.model_dir`, in the asset cache), unless the caller
   passes a folder.
   Everything model-specific follows from that folder: the LoRA targets (its block
   projections), the chat format (its template, with the template's default system prompt —
   no system message is ever passed, in training, Fisher collection and evaluation alike),
   the stop tokens and, with :class:`~.profile.SelfRefusals`, the refusal targets.
2. **adapters** (:mod:`.adapters`) — PEFT LoRAs trained by
   :func:`~.training.train_lora_adapter` (the safety adapter's refusals: seeded templates or
   the model's own, :mod:`.refusals`).
3. **prompt files** (:mod:`.prompts`) — the Fisher stage's harm and benign prompts.
4. **Fisher files** (:mod:`.fishers`) — the pairs and per-adapter Fishers the sweeps need,
   collected at the base model or at the utility merge ``W0 + U``.
5. **merges** (:mod:`.merges`) — one mergekit (or FusionBench) configuration per grid point.
6. **evaluation** (:mod:`.scoring`) — each merged model scored on a split, the record cached.

:meth:`Pipeline.run` follows the protocol (``docs/design.md`` §7): every grid point of every
method is scored on the validation split, the profile's rule picks each method's point
(:mod:`.tuning`), and only the chosen points and the reference rows are scored on the test
split. :class:`Pipeline` holds one object per stage (``adapters``, ``prompt_files``,
``fishers``, ``merges``, ``scoring``); :meth:`Pipeline.export_inputs` copies the merge inputs
for ``configs/mergekit``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sst_merge_plugin.bench.adapters import Adapters
from sst_merge_plugin.bench.fishers import Fishers
from sst_merge_plugin.bench.merges import Merges
from sst_merge_plugin.bench.profile import DualFisherPoint, Profile, Sweep
from sst_merge_plugin.bench.prompts import PromptFiles, TrainingPrompts
from sst_merge_plugin.bench.scoring import Scoring
from sst_merge_plugin.bench.tuning import Chosen, Scores
from sst_merge_plugin.bench.workspace import Workspace


def scores_of(record: Mapping[str, Any]) -> Scores:
    """The rule's view of an evaluation record: refusal, over-refusal, mean utility."""
    metrics = record["metrics"]
    return Scores(
        metrics["harmful_refusal"], metrics["benign_over_refusal"], metrics["utility_mean"] or 0.0
    )


@dataclass
class TunedMethod:
    """One method's grid records (validation, grid order), the rule's choice and the chosen
    point's test record."""

    sweep: Sweep
    validation: list[dict[str, Any]]
    chosen: Chosen
    test: dict[str, Any]


@dataclass
class BenchmarkRun:
    """What :meth:`Pipeline.run` produced: the base model's records on both splits, the
    reference rows' test records (base first) and every tuned method."""

    profile: Profile
    base_validation: dict[str, Any]
    base_test: dict[str, Any]
    references: list[dict[str, Any]] = field(default_factory=list)
    methods: list[TunedMethod] = field(default_factory=list)


class Pipeline:
    """Runs a :class:`Profile` in ``workspace`` (see the module doc).

    ``model_dir`` defaults to the converted folder of the profile's registered model
    (:attr:`Profile.model`; :func:`.profile.profile_for` moves a profile to another) and
    ``prompts`` to
    :meth:`TrainingPrompts.from_assets`; tests pass a tiny model folder and their own prompts.
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
        self.workspace = Workspace(workspace)
        self.model = profile.model
        if model_dir is None:
            from sst_merge_plugin.data.models import model_dir as registered_model_dir

            model_dir = registered_model_dir(self.model, cache_dir)
        self.model_dir = Path(model_dir)
        prompts = TrainingPrompts.from_assets(cache_dir) if prompts is None else prompts
        self.prompts = prompts
        self.refusals = None
        if profile.refusals is not None:
            from sst_merge_plugin.bench.refusals import OwnRefusals

            self.refusals = OwnRefusals(
                self.workspace,
                self.model_dir,
                profile.refusals,
                self.refusal_prompts(),
                device=device,
                progress=progress,
            )
        self.adapters = Adapters(
            self.workspace,
            profile,
            self.model_dir,
            prompts,
            device=device,
            progress=progress,
            refusals=self.refusals,
        )
        self.prompt_files = PromptFiles(self.workspace, prompts, profile.fisher, profile.skills)
        self.fishers = Fishers(
            self.workspace,
            profile.fisher,
            self.adapters,
            self.prompt_files,
            self.collection_point,
            device=device,
            refusals=self.refusals,
            progress=progress,
        )
        self.merges = Merges(
            self.workspace,
            profile,
            self.model_dir,
            self.adapters,
            self.fishers,
            device=device,
            progress=progress,
        )
        self.scoring = Scoring(
            self.workspace,
            self.model_dir,
            self.merges.run,
            keep_models=keep_models,
            device=device,
            progress=progress,
        )
        self.progress = progress

    def refusal_prompts(self) -> tuple[str, ...]:
        """The harmful training prompts that get refusal targets, in list order: the safety
        adapters' (:meth:`~.profile.AdapterSpec.harmful_indices`) and the Fishers' first
        ``n_harm`` (with first-``n_train`` adapters, the longer of the two prefixes)."""
        harmful = self.prompts.harmful
        indices = set(range(min(self.profile.fisher.n_harm, len(harmful))))
        for spec in self.profile.adapters:
            if spec.skill is None:
                indices.update(spec.harmful_indices(len(harmful)))
        return tuple(harmful[i] for i in sorted(indices))

    def collection_point(self, at: str) -> Path:
        """The model folder a Fisher pair is collected at: the base model (``"base"``) or the
        utility-only merge ``W0 + U`` (``"utility_merge"``)."""
        return self.model_dir if at == "base" else self.merges.utility_merge_dir()

    def run(self) -> BenchmarkRun:
        """Every reference row on test, every grid point on validation, each method's chosen
        point on test (cached stages are reused)."""
        from tqdm.auto import tqdm

        profile = self.profile
        self.workspace.root.mkdir(parents=True, exist_ok=True)
        self.adapters.all()
        references = list(self.merges.references())
        base_validation = self.scoring.record(references[0], profile.validation)
        base_test = self.scoring.record(references[0], profile.test)
        run = BenchmarkRun(profile, base_validation, base_test)
        for job in tqdm(references, desc="references (test)", disable=not self.progress):
            run.references.append(self.scoring.record(job, profile.test))
        base_over = base_validation["metrics"]["benign_over_refusal"]
        base_refusal = base_validation["metrics"]["harmful_refusal"]
        for sweep in tqdm(profile.sweeps, desc="methods", disable=not self.progress):
            jobs = self.merges.sweep_jobs(sweep)
            records = [self.scoring.record(job, profile.validation) for job in jobs]
            chosen = profile.rule.choose([scores_of(r) for r in records], base_over, base_refusal)
            run.methods.append(
                TunedMethod(
                    sweep,
                    records,
                    chosen,
                    self.scoring.record(jobs[chosen.index], profile.test),
                )
            )
        return run

    def export_inputs(self, out_dir: str | Path) -> Path:
        """The merge inputs under ``out_dir/inputs``, named for ``configs/mergekit/*.yml``:
        ``adapters/<adapter name>/``, ``fishers/<kind>/{harm,benign}.safetensors`` for the
        Fisher pairs this run collected at the base model, and the dual's files it collected:
        ``fishers/<kind>/cost-<objective>.safetensors`` and ``gain-<adapter name>.safetensors``
        (collected at their own models; ``…-at-base`` where collected at ``W0``). Hard links
        where possible, else copies; the folder is replaced atomically. Returns the ``inputs``
        folder."""
        from sst_merge_plugin.atomic import atomic_path

        target = Path(out_dir) / "inputs"
        with atomic_path(target, directory=True) as temporary:
            for name, folder in self.adapters.all().items():
                shutil.copytree(folder, temporary / "adapters" / name, copy_function=_link_or_copy)
            files: dict[Path, Path] = {}
            for (kind, at), pair in self.fishers.pairs.items():
                if at == "base":
                    files.update(zip((Path(kind, "harm"), Path(kind, "benign")), pair, strict=True))
            for (kind, objective, at), path in self.fishers.costs.items():
                files[Path(kind, f"cost-{objective}{_point_suffix(at)}")] = path
            for (name, kind, at), path in self.fishers.adapter_fishers.items():
                files[Path(kind, f"gain-{name}{_point_suffix(at)}")] = path
            for name, path in files.items():
                destination = temporary / "fishers" / name.with_suffix(".safetensors")
                destination.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(path, destination)
        return target


def _point_suffix(at: str) -> str:
    """The file-name suffix of a dual Fisher collected at ``at``: none at its own model."""
    return "" if at == DualFisherPoint.OWN else f"-at-{at}"


def _link_or_copy(source: str | Path, destination: str | Path) -> None:
    """Hard-link ``source`` to ``destination`` (same file system), else copy it."""
    try:
        Path(destination).hardlink_to(source)
    except OSError:
        shutil.copy2(source, destination)
