"""Checks both hosts run before a merge writes anything: does each Fisher file belong to the
model being merged?

A Fisher file records the ``model_fingerprint`` of the checkpoint it was collected on
(:mod:`sst_merge_plugin.fisher.fingerprint`). :func:`fingerprint_outcome` compares it with the
folders the file may belong to (the base model's; for ``sst_fisher_merge`` also that input's)
and returns the outcome the merge report records, plus a problem text on a mismatch; the hosts
collect (mergekit) or raise (FusionBench) the problems. ``check_fingerprint: false`` skips the
comparison for files collected on purpose at another checkpoint of the same architecture
(:data:`~sst_merge_plugin.method.settings.FINGERPRINT_NOT_CHECKED`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

from sst_merge_plugin.fisher.file import FisherFile
from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

NOT_RECORDED = "not recorded in the Fisher file"
NOT_LOCAL = "not checked (the model is not a local folder)"
MISMATCH = "mismatch"


@functools.lru_cache(maxsize=16)
def folder_fingerprint(path: str) -> str | None:
    """The fingerprint of a local model folder, ``None`` when ``path`` is not a folder."""
    return checkpoint_fingerprint(path) if os.path.isdir(path) else None


def fingerprint_outcome(
    label: str, opened: FisherFile, candidates: Mapping[str, str]
) -> tuple[str, str | None]:
    """``(outcome, problem)`` for the file ``opened`` (named ``label`` in messages) against the
    model folders ``candidates`` (display name → folder path).

    Outcomes: :data:`NOT_RECORDED`, :data:`NOT_LOCAL` (no candidate is a local folder),
    ``"matches <name>"`` or :data:`MISMATCH` (then ``problem`` says which fingerprints differ).
    """
    recorded = opened.model_fingerprint
    if not recorded:
        return NOT_RECORDED, None
    known = {
        name: fingerprint
        for name, folder in candidates.items()
        if (fingerprint := folder_fingerprint(str(folder))) is not None
    }
    if not known:
        return NOT_LOCAL, None
    if recorded in known.values():
        return "matches " + next(name for name, fp in known.items() if fp == recorded), None
    others = ", ".join(f"{name} ({fp[:12]}…)" for name, fp in known.items())
    return MISMATCH, (
        f"{label} {str(opened.path)!r} was collected on another model: its model_fingerprint "
        f"{recorded[:12]}… does not match {others}"
    )
