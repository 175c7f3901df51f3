"""What an SST merge leaves in its output directory besides the weights (``docs/design.md`` §4.2).

* ``sst_merge_report.json`` (atomic, written after the weights): format tag, versions, the
  method, the merge configuration as given, every distinct set of validated shared settings,
  the Fisher files (path, sha256, kind, header metadata), the fingerprint checks, a summary
  (actions per tensor, kept gain/cost fractions) and one record per tensor
  (:class:`~.tensor_merge.MergedTensor` diagnostics; ``{"action": "utility_only"}`` where the
  tensor is the plain utility merge), plus the adapter written, if any.
* A section appended to mergekit's model card (``README.md``) with the same summary.
* ``sst_adapter/`` — the PEFT LoRA adapter when ``write_adapter`` is ``safety`` or
  ``merged`` (:mod:`.adapter`).
"""

from __future__ import annotations

import json
import math
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sst_merge_plugin import __version__
from sst_merge_plugin.atomic import write_text
from sst_merge_plugin.method.adapter import ADAPTER_DIR, write_peft_adapter
from sst_merge_plugin.method.session import MergeSession
from sst_merge_plugin.method.settings import AdapterMode

REPORT_NAME = "sst_merge_report.json"
REPORT_FORMAT = "sst-merge-report/1"


def _mergekit_version() -> str:
    try:
        return version("mergekit")
    except PackageNotFoundError:  # pragma: no cover - mergekit is a dependency
        return "unknown"


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats (e.g. ``lambda_min_kept`` when nothing was kept) as
    ``None``, so the report is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def build_report(session: MergeSession, config_yaml: str) -> dict[str, Any]:
    """The report's content (see the module doc)."""
    records = session.snapshot()
    report = {
        "format": REPORT_FORMAT,
        "sst_merge_version": __version__,
        "mergekit_version": _mergekit_version(),
        "method": session.method,
        "config_yaml": config_yaml,
        "settings": session.settings,
        "fisher_files": session.checks.get("fisher_files", {}),
        "fingerprint_checks": session.checks.get("fingerprints", {}),
        "summary": session.summary(),
        "tensors": {
            name: record if record is not None else {"action": "utility_only"}
            for name, record in records.items()
        },
    }
    return _json_safe(report)


def write_outputs(
    session: MergeSession, out_path: str | os.PathLike[str], config_yaml: str, base_model: str
) -> dict[str, Any]:
    """Write the adapter (if requested) and then the report into ``out_path``; return the report."""
    report = build_report(session, config_yaml)
    if session.adapter_mode != AdapterMode.NONE:
        adapter = {"mode": session.adapter_mode, "not_in_adapter": sorted(session.not_in_adapter)}
        if session.adapter_factors:
            adapter.update(
                write_peft_adapter(
                    Path(out_path) / ADAPTER_DIR, session.adapter_factors, base_model
                )
            )
        report["adapter"] = adapter
    write_text(Path(out_path) / REPORT_NAME, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def card_section(session: MergeSession) -> str:
    """Markdown appended to mergekit's model card."""
    summary = session.summary()
    lines = [
        "",
        f"## SST-Merge ({session.method})",
        "",
        f"Merged with the `{session.method}` method of the SST-Merge plugin "
        f"(sst-merge {__version__}). Per-tensor diagnostics: `{REPORT_NAME}`.",
        "",
        "| tensors | " + " | ".join(summary["actions"]) + " |",
        "|---|" + "---|" * len(summary["actions"]),
        f"| {summary['n_tensors']} | " + " | ".join(map(str, summary["actions"].values())) + " |",
    ]
    if "n_projected" in summary:
        lines += [
            "",
            f"Projected tensors: {summary['n_projected']}; kept gain fraction (mean over "
            f"tensors) {summary['mean_gain_kept_fraction']:.4f}, kept cost fraction "
            f"{summary['mean_cost_kept_fraction']:.4f}; kept coordinates "
            f"{summary['kept_coordinates']:.0f} of {summary['n_coordinates']}.",
        ]
    if summary.get("utility"):
        lines += [
            "",
            "Utility deltas projected with (gain Fisher G_i, cost Fisher C):",
            "",
            "| utility input | tensors | utility gain kept | safety disturbance removed |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {key} | {item.get('n_projected', 0)} | "
            f"{item.get('pooled_gain_kept_fraction', 0.0):.4f} | "
            f"{item.get('safety_disturbance_removed', 0.0):.4f} |"
            for key, item in summary["utility"].items()
        ]
    files = session.checks.get("fisher_files", {})
    if files:
        lines += ["", "| Fisher file | kind | sha256 |", "|---|---|---|"]
        lines += [
            f"| {label}: `{os.path.basename(info['path'])}` | {info['kind']} | `{info['sha256']}` |"
            for label, info in files.items()
        ]
    if session.adapter_mode != AdapterMode.NONE:
        lines += ["", f"PEFT LoRA adapter ({session.adapter_mode}): `{ADAPTER_DIR}/`."]
    return "\n".join(lines) + "\n"
