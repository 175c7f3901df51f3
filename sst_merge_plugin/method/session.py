"""State of one merge shared by all its tensors: GEVP cache, records, adapter factors.

Both hosts merge tensor by tensor (mergekit possibly from several threads with ``--multi-gpu``);
a :class:`MergeSession` collects what the report (:mod:`.report`) and the adapter output
(:mod:`.adapter`) need. The FusionBench algorithm owns one per ``run``; for mergekit, which
calls a method with no handle on the run, :mod:`sst_merge_plugin.mergekit.sessions` keeps the
active one.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import torch
from torch import Tensor

from sst_merge_plugin.core.gevp import GEVPCache
from sst_merge_plugin.method.adapter import exact_factors
from sst_merge_plugin.method.settings import AdapterMode, SharedSettings
from sst_merge_plugin.method.tensor_merge import MergedTensor


class MergeSession:
    """Everything one merge run accumulates (thread-safe).

    ``records[name]`` — the :class:`~.tensor_merge.MergedTensor` diagnostics of each tensor
    (``None``: plain utility merge); ``adapter_factors[name]`` — ``(B, A)`` with ``B @ A`` the
    tensor's adapter delta when ``write_adapter`` is set; ``not_in_adapter`` — tensors whose
    contribution a LoRA adapter cannot hold. ``checks`` — what the up-front validation found
    (Fisher file descriptions, fingerprint checks), filled by the host's up-front validation.
    """

    def __init__(self, method: str) -> None:
        self.method = method
        self.cache = GEVPCache()
        self.records: dict[str, dict[str, Any] | None] = {}
        self.settings: list[dict[str, Any]] = []
        self.adapter_mode = AdapterMode.NONE
        self.adapter_factors: dict[str, tuple[Tensor, Tensor]] = {}
        self.not_in_adapter: list[str] = []
        self.checks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def record(
        self, name: str, base: Tensor, merged: MergedTensor, settings: SharedSettings
    ) -> None:
        """Store ``merged``'s diagnostics and, when an adapter is requested, its factors."""
        mode = settings.write_adapter or AdapterMode.NONE
        factors: tuple[Tensor, Tensor] | None = None
        unrepresentable = False
        if mode == AdapterMode.SAFETY and merged.diagnostics is not None:
            if merged.safety_factors is not None:
                factors = merged.safety_factors
            else:
                unrepresentable = merged.diagnostics["action"] in (
                    "raw_delta_not_2d",
                    "missing_fisher_keep",
                )
        elif mode == AdapterMode.MERGED:
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
            if mode != AdapterMode.NONE:
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
        """Counts per action; the kept gain/cost fractions over the tensors whose safety patch
        was projected (:func:`projection_summary`); with the dual projection, the same per
        utility input under ``utility`` plus ``safety_disturbance_removed`` (``1 −`` its pooled
        kept fraction of the cost Fisher ``C``)."""
        records = self.snapshot()
        actions = Counter(
            "utility_only" if record is None else record["action"] for record in records.values()
        )
        out: dict[str, Any] = {"n_tensors": len(records), "actions": dict(sorted(actions.items()))}
        out.update(projection_summary([r for r in records.values() if r is not None]))
        per_input: dict[str, list[dict[str, Any]]] = {}
        for record in records.values():
            for key, diagnostics in ((record or {}).get("utility") or {}).items():
                per_input.setdefault(key, []).append(diagnostics)
        if per_input:
            out["utility"] = {}
            for key, diagnostics in sorted(per_input.items()):
                summary = projection_summary(diagnostics)
                if summary:
                    summary["safety_disturbance_removed"] = 1 - summary["pooled_cost_kept_fraction"]
                out["utility"][key] = summary
        return out


def projection_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the records whose ``action`` is ``projected``: their count, the mean of the
    per-tensor kept gain/cost fractions, the pooled fractions (summed kept ÷ summed totals,
    each tensor in its own Fishers' units), kept coordinates and the largest λ; ``{}`` when
    none was projected."""
    projected = [r for r in records if r.get("action") == "projected"]
    if not projected:
        return {}

    def total(key: str) -> float:
        return sum(float(r[key]) for r in projected)

    return {
        "n_projected": len(projected),
        "mean_gain_kept_fraction": total("gain_kept_fraction") / len(projected),
        "mean_cost_kept_fraction": total("cost_kept_fraction") / len(projected),
        "pooled_gain_kept_fraction": total("gain_kept") / max(total("gain_total"), 1e-300),
        "pooled_cost_kept_fraction": total("cost_kept") / max(total("cost_total"), 1e-300),
        "kept_coordinates": total("kept"),
        "n_coordinates": int(total("n_coordinates")),
        "lambda_max": max(float(r["lambda_max"]) for r in projected),
    }
