"""Refusal targets in the model's own words: the self-distilled refusals of a natively aligned
model (the profile option :class:`~.profile.SelfRefusals`, ``docs/design.md`` §7).

By default the safety adapter and the ``refusal`` Fisher learn seeded template refusals
(:mod:`sst_merge_plugin.data.refusals`), which suit a model that hardly refuses by itself
(SmolLM2). A model that already refuses has its own way of saying no; training or measuring it
on someone else's sentences moves its style as well as its safety. With
``Profile.refusals = SelfRefusals(...)`` the targets come from the base model itself:

1. **answers** — the base model's greedy answers (its modal response, the same generation as
   the evaluation: chat template with the model's default system prompt,
   :func:`~sst_merge_plugin.evaluation.generate.generate_turns`) to the harmful training
   prompts the profile uses (the safety adapter's ``n_train`` and the Fisher's ``n_harm``, one
   pass over the longer prefix), written once into ``data/own-refusals-<key>.jsonl`` (key:
   the base model's fingerprint, the prompts, ``max_new_tokens``) with the judge's verdict and
   whether the answer ended by itself;
2. **own refusals** — an answer the refusal judge calls a refusal (not its ``empty`` rule),
   whole when the model ended it, else cut after its last complete sentence (and still a
   refusal), so no target teaches the model to stop mid-sentence;
3. **targets** (:meth:`OwnRefusals.targets`) — a prompt the model refused keeps its own
   refusal; a prompt it answered gets (``unrefused="borrow"``) one of the model's own refusals
   *to other prompts*, drawn by ``sha256(f"{seed}\\0{prompt}")`` from the list of own refusals
   (in prompt order, so frequent phrasings are drawn as often as the model uses them), or is
   left out (``"drop"``: only the base model's own refusal behaviour is learnt and measured).

Everything is deterministic given the model and the prompts; the targets are recomputed from
the cached answers, so changing ``unrefused``/``seed`` regenerates nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sst_merge_plugin.atomic import make_once
from sst_merge_plugin.bench.profile import SelfRefusals, Unrefused
from sst_merge_plugin.bench.workspace import Workspace, content_key
from sst_merge_plugin.core.errors import SSTError

log = logging.getLogger(__name__)

#: generation batch of the answers (as for the look-alike answers)
ANSWER_BATCH = 32
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def usable_refusal(response: str, finished: bool) -> str | None:
    """The refusal target an answer gives (module doc, step 2), or ``None``."""
    from sst_merge_plugin.evaluation.judge import judge

    text = response.strip()
    if not finished:
        ends = [match.end() for match in _SENTENCE_END.finditer(text)]
        text = text[: ends[-1]].strip() if ends else ""
    verdict = judge(text) if text else None
    if verdict is None or not verdict.is_refusal or verdict.rule == "empty":
        return None
    return text


def borrowed(prompt: str, pool: Sequence[str], seed: int) -> str:
    """The own refusal a prompt the model answered is given (module doc, step 3)."""
    index = int(hashlib.sha256(f"{seed}\0{prompt}".encode()).hexdigest(), 16) % len(pool)
    return pool[index]


class OwnRefusals:
    """The base model's own refusals to the harmful training prompts ``prompts`` (module doc)."""

    def __init__(
        self,
        workspace: Workspace,
        model_dir: Path,
        settings: SelfRefusals,
        prompts: Sequence[str],
        *,
        device: str,
        progress: bool,
    ) -> None:
        self.workspace = workspace
        self.model_dir = model_dir
        self.settings = settings
        self.prompts = list(dict.fromkeys(prompts))
        self.device = device
        self.progress = progress
        self._records: list[dict[str, Any]] | None = None

    def path(self) -> Path:
        """``data/own-refusals-<key>.jsonl`` (key: model fingerprint, prompts, tokens)."""
        from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

        key = content_key(
            {
                "model": checkpoint_fingerprint(self.model_dir),
                "prompts": self.prompts,
                "max_new_tokens": self.settings.max_new_tokens,
            }
        )
        return self.workspace / "data" / f"own-refusals-{key}.jsonl"

    def records(self) -> list[dict[str, Any]]:
        """One record per prompt: ``prompt``, ``response``, ``finished``, ``refusal`` (the
        judge's verdict on the whole answer) and ``target`` (the usable own refusal or
        ``None``); generated once."""
        if self._records is None:
            path = self.path()
            make_once(path, self._answer, Path.is_file)
            lines = path.read_text(encoding="utf-8").splitlines()
            self._records = [json.loads(line) for line in lines]
        return self._records

    def _answer(self, entry: Path) -> None:
        from sst_merge_plugin.atomic import write_text
        from sst_merge_plugin.bench.scoring import load_model
        from sst_merge_plugin.evaluation.generate import generate_turns
        from sst_merge_plugin.evaluation.judge import judge

        log.info("answering %d harmful prompts with the base model", len(self.prompts))
        model, tokenizer = load_model(self.model_dir, self.device)
        turns = generate_turns(
            model,
            tokenizer,
            self.prompts,
            max_new_tokens=self.settings.max_new_tokens,
            batch_size=ANSWER_BATCH,
            progress=self.progress,
            desc="own refusals",
        )
        records = [
            {
                "prompt": prompt,
                "response": turn.text,
                "finished": turn.finished,
                "refusal": judge(turn.text).is_refusal,
                "target": usable_refusal(turn.text, turn.finished),
            }
            for prompt, turn in zip(self.prompts, turns, strict=True)
        ]
        write_text(entry, "".join(json.dumps(r) + "\n" for r in records))

    def pool(self) -> list[str]:
        """The model's usable own refusals, in prompt order (duplicates kept)."""
        return [r["target"] for r in self.records() if r["target"] is not None]

    def targets(self, prompts: Sequence[str]) -> list[str | None]:
        """The refusal target of each of ``prompts`` (module doc, step 3); ``None`` marks a
        prompt left out (``unrefused="drop"``). Every prompt must be one of the answered
        ones."""
        by_prompt = {r["prompt"]: r["target"] for r in self.records()}
        missing = [p for p in prompts if p not in by_prompt]
        if missing:
            raise SSTError(
                f"{len(missing)} prompt(s) were not answered for the own refusals, e.g. "
                f"{missing[0][:60]!r}"
            )
        pool = self.pool()
        if not pool:
            raise SSTError(
                f"the base model {str(self.model_dir)!r} refused none of the "
                f"{len(self.prompts)} harmful training prompts: self-distilled refusal targets "
                "need a model that refuses by itself (use the template targets: "
                "Profile.refusals = None)"
            )
        seed, borrow = self.settings.seed, self.settings.unrefused == Unrefused.BORROW
        return [
            by_prompt[p]
            if by_prompt[p] is not None
            else borrowed(p, pool, seed)
            if borrow
            else None
            for p in prompts
        ]

    def summary(self) -> dict[str, Any]:
        """Counts for the run's metadata: answered prompts, refusals, usable own refusals."""
        records = self.records()
        return {
            "n_prompts": len(records),
            "n_refused": sum(r["refusal"] for r in records),
            "n_own_targets": sum(r["target"] is not None for r in records),
            "n_distinct_targets": len(set(self.pool())),
            "unrefused": str(self.settings.unrefused),
            "file": self.path().name,
        }
