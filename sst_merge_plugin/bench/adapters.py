"""The adapters stage: PEFT LoRAs trained once into ``adapters/<name>-<key>/``.

The key covers the base model's fingerprint, the training pairs and the hyper-parameters
(:func:`~sst_merge_plugin.bench.training.train_lora_adapter`; ``target_modules=None`` resolved
to the model's own block projections first, :meth:`~.training.LoRATrainingConfig.for_model`);
each is trained once, under its lock (:func:`~sst_merge_plugin.atomic.make_once`). The safety
adapter (``AdapterSpec.skill is None``) learns harmful training prompts → natural refusals
(seeded templates, or the base model's own refusals with ``Profile.refusals``,
:mod:`.refusals`) plus retain pairs: everyday questions with helpful answers and the first
``n_lookalikes`` benign look-alikes (the over-refusal pool's training part, harmless probes)
with the base model's own greedy answers (:meth:`Adapters.lookalike_pairs`; answers the refusal
judge calls refusals are left out), so the adapter learns which requests *not* to refuse. A
skill adapter learns its skill's training split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from sst_merge_plugin.atomic import make_once
from sst_merge_plugin.bench.profile import SAFETY, AdapterSpec, Profile
from sst_merge_plugin.bench.prompts import TrainingPrompts
from sst_merge_plugin.bench.workspace import Workspace, content_key

if TYPE_CHECKING:
    from sst_merge_plugin.bench.refusals import OwnRefusals

log = logging.getLogger(__name__)


#: greedy tokens of the base model's answer to a look-alike (retain data), and the generation
#: batch (decoding a 135M model on a CPU is memory-bound: wide batches amortise the weight reads)
LOOKALIKE_TOKENS = 64
LOOKALIKE_BATCH = 32


def training_pairs(
    spec: AdapterSpec,
    prompts: TrainingPrompts,
    lookalikes: list[tuple[str, str]] | None = None,
    refusals: Sequence[str | None] | None = None,
) -> list[tuple[str, str]]:
    """(prompt, response) pairs of an adapter: harmful training refusals (+ helpful retain
    pairs, + ``lookalikes`` pairs) for the safety adapter, the skill's training items otherwise.

    ``refusals`` are the targets of the adapter's harmful prompts (:func:`harmful_prompts`; the
    model's own, :meth:`.refusals.OwnRefusals.targets`; ``None`` entries leave a prompt out);
    without them each prompt gets its seeded template refusal."""
    from sst_merge_plugin.data.tasks import skill_splits

    if spec.skill is None:
        harmful = harmful_prompts(spec, prompts)
        if refusals is None:
            from sst_merge_plugin.data.refusals import refusal_targets

            refusals = refusal_targets(harmful, seed=spec.training.seed)
        pairs = [(p, r) for p, r in zip(harmful, refusals, strict=True) if r is not None]
        retain = list(prompts.helpful_pairs[: spec.n_retain]) + list(lookalikes or [])
        return pairs + retain
    train, _ = skill_splits(spec.skill, spec.n_train, 0, seed=spec.training.seed)
    return [(item.prompt, item.answer) for item in train]


def harmful_prompts(spec: AdapterSpec, prompts: TrainingPrompts) -> list[str]:
    """The harmful training prompts the safety adapter ``spec`` learns, in list order
    (:meth:`~.profile.AdapterSpec.harmful_indices`)."""
    return [prompts.harmful[i] for i in spec.harmful_indices(len(prompts.harmful))]


class Adapters:
    """The trained adapter folders of a profile (module doc)."""

    def __init__(
        self,
        workspace: Workspace,
        profile: Profile,
        model_dir: Path,
        prompts: TrainingPrompts,
        *,
        device: str,
        progress: bool,
        refusals: OwnRefusals | None = None,
    ) -> None:
        self.workspace = workspace
        self.profile = profile
        self.model_dir = model_dir
        self.prompts = prompts
        self.device = device
        self.progress = progress
        self.refusals = refusals
        self._folders: dict[str, Path] = {}

    def pairs(self, spec: AdapterSpec) -> list[tuple[str, str]]:
        """The training pairs of ``spec`` (:func:`training_pairs`; the safety adapter's
        refusals are the model's own when the profile asks for them)."""
        lookalikes = self.lookalike_pairs(spec.n_lookalikes) if spec.n_lookalikes else None
        refusals = None
        if spec.skill is None and self.refusals is not None:
            refusals = self.refusals.targets(harmful_prompts(spec, self.prompts))
        return training_pairs(spec, self.prompts, lookalikes, refusals)

    def lookalike_pairs(self, n: int) -> list[tuple[str, str]]:
        """``(prompt, base model's greedy answer)`` for the first ``n`` benign look-alikes (the
        prompts' ``edgy`` then ``lookalikes``), leaving out answers the judge calls refusals;
        generated once into ``data/lookalikes-<key>.jsonl`` (key: base fingerprint, prompts,
        tokens)."""
        import json

        from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

        prompts = list(dict.fromkeys((*self.prompts.edgy, *self.prompts.lookalikes)))[:n]
        key = content_key(
            {
                "model": checkpoint_fingerprint(self.model_dir),
                "prompts": prompts,
                "max_new_tokens": LOOKALIKE_TOKENS,
            }
        )
        path = self.workspace / "data" / f"lookalikes-{key}.jsonl"

        def answer(entry: Path) -> None:
            from sst_merge_plugin.atomic import write_text
            from sst_merge_plugin.bench.scoring import load_model
            from sst_merge_plugin.evaluation.generate import generate_responses
            from sst_merge_plugin.evaluation.judge import judge

            log.info("answering %d look-alikes with the base model", len(prompts))
            model, tokenizer = load_model(self.model_dir, self.device)
            answers = generate_responses(
                model,
                tokenizer,
                prompts,
                max_new_tokens=LOOKALIKE_TOKENS,
                batch_size=LOOKALIKE_BATCH,
                progress=self.progress,
                desc="look-alike answers",
            )
            records = [
                {"prompt": prompt, "response": answer, "refusal": judge(answer).is_refusal}
                for prompt, answer in zip(prompts, answers, strict=True)
            ]
            write_text(entry, "".join(json.dumps(r) + "\n" for r in records))

        make_once(path, answer, Path.is_file)
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [(r["prompt"], r["response"]) for r in records if not r["refusal"] and r["response"]]

    def folder(self, spec: AdapterSpec) -> Path:
        """The trained adapter folder of ``spec`` (trained now if not cached)."""
        if spec.name in self._folders:
            return self._folders[spec.name]
        from sst_merge_plugin.bench.training import examples_sha256, train_lora_adapter
        from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

        pairs = self.pairs(spec)
        training = spec.training.for_model(self.model_dir)
        key = content_key(
            {
                "model": checkpoint_fingerprint(self.model_dir),
                "pairs": examples_sha256(pairs),
                "training": asdict(training),
            }
        )
        folder = self.workspace / "adapters" / f"{spec.name}-{key}"

        def train(entry: Path) -> None:
            log.info("training adapter %s (%d pairs) into %s", spec.name, len(pairs), entry)
            train_lora_adapter(
                self.model_dir,
                pairs,
                entry,
                training,
                device=self.device,
                progress=self.progress,
                description=f"train {spec.name}",
            )

        make_once(folder, train, lambda entry: (entry / "adapter_model.safetensors").is_file())
        self._folders[spec.name] = folder
        return folder

    def all(self) -> dict[str, Path]:
        """Every adapter of the profile, by name (trained now where not cached)."""
        return {spec.name: self.folder(spec) for spec in self.profile.adapters}

    @property
    def safety(self) -> AdapterSpec:
        """The profile's safety adapter spec."""
        return next(spec for spec in self.profile.adapters if spec.name == SAFETY)

    def model_input(self, spec: AdapterSpec) -> str:
        """mergekit's ``base+adapter`` reference of ``spec``."""
        return f"{self.model_dir}+{self.folder(spec)}"
