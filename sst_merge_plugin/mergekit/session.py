"""State of one mergekit merge shared by all its tensors: GEVP cache, records, adapter factors.

mergekit calls a merge method once per output tensor (possibly from several threads with
``--multi-gpu``) with no handle on the run it belongs to. The planner hook
(:mod:`.registration`) validates the planned merge and *activates* a :class:`MergeSession`;
the method's ``merge_group`` records into the active session; the ``run_merge`` hook writes
the report and adapter from it and releases it. mergekit runs one merge at a time per process;
a method called outside a planned merge (``mergekit.merge_methods.merge_tensors``) gets a
per-method default session that is never reported.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import torch
from torch import Tensor

from sst_merge_plugin.core import GEVPCache
from sst_merge_plugin.mergekit.adapter import exact_factors
from sst_merge_plugin.mergekit.params import SharedSettings
from sst_merge_plugin.mergekit.tensor_merge import MergedTensor


class MergeSession:
    """Everything one merge run accumulates (thread-safe).

    ``records[name]`` — the :class:`~.tensor_merge.MergedTensor` diagnostics of each tensor
    (``None``: plain utility merge); ``adapter_factors[name]`` — ``(B, A)`` with ``B @ A`` the
    tensor's adapter delta when ``write_adapter`` is set; ``not_in_adapter`` — tensors whose
    contribution a LoRA adapter cannot hold. ``checks`` — what the up-front validation found
    (Fisher file descriptions, fingerprint checks), filled by :mod:`.validation`.
    """

    def __init__(self, method: str) -> None:
        self.method = method
        self.cache = GEVPCache()
        self.records: dict[str, dict[str, Any] | None] = {}
        self.settings: list[dict[str, Any]] = []
        self.adapter_mode = "none"
        self.adapter_factors: dict[str, tuple[Tensor, Tensor]] = {}
        self.not_in_adapter: list[str] = []
        self.checks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def record(
        self, name: str, base: Tensor, merged: MergedTensor, settings: SharedSettings
    ) -> None:
        """Store ``merged``'s diagnostics and, when an adapter is requested, its factors."""
        mode = settings.write_adapter or "none"
        factors: tuple[Tensor, Tensor] | None = None
        unrepresentable = False
        if mode == "safety" and merged.diagnostics is not None:
            if merged.safety_factors is not None:
                factors = merged.safety_factors
            else:
                unrepresentable = merged.diagnostics["action"] in (
                    "raw_delta_not_2d",
                    "missing_fisher_keep",
                )
        elif mode == "merged":
            delta = merged.tensor.double() - base.double()
            if bool(delta.any()):
                if delta.ndim == 2 and name.endswith(".weight"):
                    factors = exact_factors(delta)
                else:
                    unrepresentable = True
        if factors is not None:
            factors = tuple(f.detach().to("cpu", torch.float32) for f in factors)
        with self._lock:
            self.records[name] = merged.diagnostics
            summary = settings.as_dict()
            if summary not in self.settings:
                self.settings.append(summary)
            if mode != "none":
                self.adapter_mode = mode
            if factors is not None:
                self.adapter_factors[name] = factors
            if unrepresentable:
                self.not_in_adapter.append(name)

    def snapshot(self) -> dict[str, dict[str, Any] | None]:
        """A copy of the per-tensor records, sorted by tensor name."""
        with self._lock:
            return dict(sorted(self.records.items()))

    def summary(self) -> dict[str, Any]:
        """Counts per action and the kept gain/cost fractions over the projected tensors.

        ``mean_*`` average the per-tensor fractions; ``pooled_*`` divide the summed kept
        gain/cost by the summed totals (each tensor in its own Fishers' units).
        """
        records = self.snapshot()
        actions = Counter(
            "utility_only" if record is None else record["action"] for record in records.values()
        )
        projected = [r for r in records.values() if r is not None and r["action"] == "projected"]
        out: dict[str, Any] = {"n_tensors": len(records), "actions": dict(sorted(actions.items()))}
        if projected:

            def total(key: str) -> float:
                return sum(float(r[key]) for r in projected)

            out.update(
                n_projected=len(projected),
                mean_gain_kept_fraction=total("gain_kept_fraction") / len(projected),
                mean_cost_kept_fraction=total("cost_kept_fraction") / len(projected),
                pooled_gain_kept_fraction=total("gain_kept") / max(total("gain_total"), 1e-300),
                pooled_cost_kept_fraction=total("cost_kept") / max(total("cost_total"), 1e-300),
                kept_coordinates=total("kept"),
                n_coordinates=int(total("n_coordinates")),
                lambda_max=max(float(r["lambda_max"]) for r in projected),
            )
        return out


_ACTIVE: MergeSession | None = None
_DEFAULTS: dict[str, MergeSession] = {}
_LOCK = threading.Lock()


def activate(session: MergeSession) -> None:
    """Make ``session`` the one the methods record into (replacing any previous one)."""
    global _ACTIVE
    with _LOCK:
        _ACTIVE = session


def active() -> MergeSession | None:
    """The session of the merge being run, if a planned merge activated one."""
    return _ACTIVE


def release() -> MergeSession | None:
    """Deactivate and return the active session."""
    global _ACTIVE
    with _LOCK:
        session, _ACTIVE = _ACTIVE, None
    return session


def current(method: str) -> MergeSession:
    """The active session if it is ``method``'s, else ``method``'s default session."""
    session = _ACTIVE
    if session is not None and session.method == method:
        return session
    with _LOCK:
        return _DEFAULTS.setdefault(method, MergeSession(method))
