"""The prompt data adapters and Fisher files are made from (never the evaluation's), and the
prompt files the Fisher stage reads.

* :class:`TrainingPrompts` — the harmful requests (the safety adapter's and ``F_harm``'s), the
  everyday (question, helpful answer) pairs (the safety adapter's retain data; their questions
  are benign Fisher prompts) and the benign over-refusal probes (``F_benign``).
* :class:`PromptFiles` — ``data/harm-<key>.jsonl`` (the first ``n_harm`` harmful training
  prompts) and ``data/benign-<key>.jsonl`` (everyday questions, the benign-edgy training
  probes, each skill's training prompts), written once into the workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sst_merge_plugin.bench.profile import FisherSettings
from sst_merge_plugin.bench.workspace import Workspace


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

    def harmful(self) -> Path:
        """JSONL of the ``F_harm`` prompts (the first ``n_harm`` harmful training prompts)."""
        prompts = self.prompts.harmful[: self.settings.n_harm]
        return self.workspace.prompt_file("harm", [{"prompt": p} for p in prompts])

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
