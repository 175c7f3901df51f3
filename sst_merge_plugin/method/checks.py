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
from collections.abc import Iterable, Mapping

from safetensors import safe_open

from sst_merge_plugin.core.errors import FisherValidationError, SSTError
from sst_merge_plugin.core.fisher import check_finite
from sst_merge_plugin.fisher.file import SEPARATOR, FisherFile
from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

#: at most this many problems are listed in one error message
MAX_PROBLEMS = 20
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


def fisher_entry_problems(label: str, opened: FisherFile, names: Iterable[str]) -> list[str]:
    """What is wrong with the entries of the weights ``names`` in ``opened`` (named ``label``):
    shapes that do not fit together (from the header) and NaN/Inf values.

    Every entry is read once through ``safe_open`` (one at a time); the containers' costlier
    checks (symmetry, PSD, orthonormal bases) stay with the per-tensor merge. Names without
    entries in the file are skipped.
    """
    container = opened.kind_spec.container
    suffixes = container.required_entries + container.optional_entries
    problems: list[str] = []
    with safe_open(str(opened.path), framework="pt") as handle:
        keys = set(handle.keys())
        for name in sorted(set(names)):
            present = {
                s: f"{name}{SEPARATOR}{s}" for s in suffixes if f"{name}{SEPARATOR}{s}" in keys
            }
            if not present:
                continue
            where = f"{name}: {label} {str(opened.path)!r}"
            shapes = {s: handle.get_slice(key).get_shape() for s, key in present.items()}
            shape_problem = container.entry_shape_problem(shapes)
            if shape_problem is not None:
                problems.append(f"{where}: {shape_problem}")
            for suffix, key in present.items():
                try:
                    check_finite(f"entry {suffix}", handle.get_tensor(key))
                except FisherValidationError as error:
                    problems.append(f"{where}: {error}")
    return problems


def cannot_run(method: str, problems: list[str]) -> SSTError:
    """The error listing (up to :data:`MAX_PROBLEMS` of) the problems that stop a merge."""
    more = len(problems) - MAX_PROBLEMS
    return SSTError(
        f"{method}: the merge cannot run:\n  "
        + "\n  ".join(problems[:MAX_PROBLEMS])
        + (f"\n  … and {more} more" if more > 0 else "")
    )
