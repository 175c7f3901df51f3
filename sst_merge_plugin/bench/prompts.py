"""The prompt data adapters and Fisher files are made from (never the evaluation's), and the
prompt files the Fisher stage reads.

* :class:`TrainingPrompts` — the harmful requests (the safety adapter's and ``F_harm``'s), the
  everyday (question, helpful answer) pairs (the safety adapter's retain data; their questions
  are benign Fisher prompts), the training part of the over-refusal pool (``F_benign`` and
  retain data) and harmless look-alikes (retain data).
* :class:`PromptFiles` — ``data/harm-<key>.jsonl`` (the first ``n_harm`` harmful training
  prompts; ``data/harm-own-<key>.jsonl`` with each prompt's refusal target when the targets are
  the model's own) and ``data/benign-<key>.jsonl`` (everyday questions, the benign-edgy
  training probes, each skill's training prompts), written once into the workspace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sst_merge_plugin.bench.profile import FisherSettings
from sst_merge_plugin.bench.workspace import Workspace


@dataclass(frozen=True)
class TrainingPrompts:
    """The prompt data adapters and Fisher files are made from (never the evaluation's).

    ``harmful``: the safety adapter's and ``F_harm``'s harmful requests; ``helpful_pairs``:
    everyday (question, helpful answer) pairs (the safety adapter's retain data; their
    questions are benign Fisher prompts); ``edgy``: benign over-refusal probes for ``F_benign``
    and retain data; ``lookalikes``: harmless prompts that sound like harmful ones (retain
    data). Retain prompts without an answer get the base model's own (:mod:`.adapters`).
    """

    harmful: tuple[str, ...]
    helpful_pairs: tuple[tuple[str, str], ...]
    edgy: tuple[str, ...]
    lookalikes: tuple[str, ...] = ()

    @classmethod
    def from_assets(cls, cache_dir: str | Path | None = None) -> TrainingPrompts:
        """From the asset cache: the AdvBench training part
        (:func:`~sst_merge_plugin.data.prompts.held_out_split`) then temaq's 214 harmful probes;
        the ``benign-helpful`` pairs; ``overrefusal-train`` (the over-refusal pool's training
        part, disjoint from its validation and test parts); temaq's 209 harmless probes. None of
        them is a HarmBench behaviour (the harmful evaluation sets)."""
        from sst_merge_plugin.data.prompts import held_out_split, load_helpful_pairs, load_prompts

        advbench, _ = held_out_split(load_prompts("advbench", cache_dir=cache_dir))
        temaq = load_prompts("temaq-harmful", cache_dir=cache_dir)
        return cls(
            tuple(dict.fromkeys((*advbench.prompts, *temaq.prompts))),
            tuple(load_helpful_pairs(cache_dir)),
            load_prompts("overrefusal-train", cache_dir=cache_dir).prompts,
            load_prompts("temaq-harmless", cache_dir=cache_dir).prompts,
        )


class PromptFiles:
    """The Fisher stage's prompt files (module doc)."""

    def __init__(
        self,
        workspace: Workspace,
        prompts: TrainingPrompts,
        settings: FisherSettings,
        skills: tuple[str, ...],
    ) -> None:
        self.workspace = workspace
        self.prompts = prompts
        self.settings = settings
        self.skills = skills

    def harmful_prompts(self) -> tuple[str, ...]:
        """The ``F_harm`` prompts: the first ``n_harm`` harmful training prompts."""
        return self.prompts.harmful[: self.settings.n_harm]

    def harmful(self) -> Path:
        """JSONL of the ``F_harm`` prompts (:meth:`harmful_prompts`)."""
        return self.workspace.prompt_file("harm", [{"prompt": p} for p in self.harmful_prompts()])

    def harmful_with_targets(self, targets: Sequence[str | None]) -> Path:
        """JSONL of the ``F_harm`` prompts with their refusal targets (field ``refusal``; one
        per prompt of :meth:`harmful_prompts`, ``None`` leaves the prompt out) — the ``refusal``
        objective's data with the model's own refusals (``--target-field refusal``)."""
        records = [
            {"prompt": p, "refusal": t}
            for p, t in zip(self.harmful_prompts(), targets, strict=True)
            if t is not None
        ]
        return self.workspace.prompt_file("harm-own", records)

    def safety_behaviour(self) -> Path:
        """JSONL of the prompts the dual projection's cost Fisher is collected on: the ``F_harm``
        prompts (the safe model refuses them) and the over-refusal training probes (it answers
        them), so moving either side costs."""
        prompts = [*self.prompts.harmful[: self.settings.n_harm]]
        prompts += self.prompts.edgy[: self.settings.n_benign_edgy]
        return self.workspace.prompt_file("safety-behaviour", [{"prompt": p} for p in prompts])

    def benign(self) -> Path:
        """JSONL of the benign Fisher prompts: everyday questions, benign-edgy training
        probes, and each skill's training prompts."""
        from sst_merge_plugin.data.tasks import skill_splits

        settings = self.settings
        prompts = [q for q, _ in self.prompts.helpful_pairs[: settings.n_benign_helpful]]
        prompts += self.prompts.edgy[: settings.n_benign_edgy]
        for skill in self.skills:
            train, _ = skill_splits(skill, settings.n_benign_per_skill, 0, seed=settings.seed + 1)
            prompts += [item.prompt for item in train]
        return self.workspace.prompt_file("benign", [{"prompt": p} for p in prompts])
