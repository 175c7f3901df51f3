"""The benchmark workspace: one folder, every stage's output keyed by the content of its inputs.

An interrupted run resumes and a changed input recomputes only what depends on it, because
each output's name carries :func:`content_key` of what it was made from. Layout (under the
workspace root):

* ``adapters/<name>-<key>/`` — trained LoRA adapters (:mod:`.adapters`);
* ``data/<label>-<key>.jsonl`` — prompt files the Fisher stage reads (:mod:`.prompts`);
* ``fishers/`` — Fisher files, through :mod:`sst_merge_plugin.fisher.cache` (:mod:`.fishers`);
* ``models/utility-merge-<key>/`` — kept merges the Fisher stage collects at (:mod:`.merges`);
* ``merges/<job key>/`` — a row's merged model while it is evaluated; ``lora_merge_cache/`` —
  mergekit's ``--lora-merge-cache`` (:mod:`.merges`);
* ``evals/<key>.json`` — evaluation records (:mod:`.scoring`).

Concurrent runs may share a workspace: every cached entry is made once under its lock
(:func:`~sst_merge_plugin.atomic.make_once`, lock file ``.<entry name>.lock`` next to it), so a
second run waits for an entry the first is making and then reuses it, and a run's
``merges/<job key>/`` is locked while it is merged, evaluated and removed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sst_merge_plugin.atomic import make_once, write_text


def content_key(payload: Any) -> str:
    """First 20 hex digits of the sha256 of ``payload`` as canonical JSON."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class Workspace:
    """The workspace folder (module doc); ``root`` is made absolute."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __truediv__(self, part: str) -> Path:
        return self.root / part

    def prompt_file(self, label: str, records: list[dict[str, str]]) -> Path:
        """``data/<label>-<content key>.jsonl`` holding ``records`` (written once)."""
        path = self.root / "data" / f"{label}-{content_key(records)}.jsonl"
        text = "".join(json.dumps(record) + "\n" for record in records)
        make_once(path, lambda entry: write_text(entry, text), Path.is_file)
        return path
