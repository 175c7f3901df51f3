"""The protocol's results: what a :class:`~.pipeline.BenchmarkRun` writes and prints.

* ``results.json`` — :func:`summarise`: the protocol (both splits' settings, the rule), the
  reference rows and each method's chosen point (knob values, whether it met the rule's
  constraints and why it was chosen, its validation row, its test row — rates with Wilson 95 %
  intervals, MMLU drift), every grid point's validation row (the sweeps), and the paired
  bootstrap of the headline comparison (:func:`bootstrap_rows`) and of any method named with
  ``compare`` (``comparisons``).
* ``results.md`` — :func:`markdown`: the reference and method tables on the test split, the
  bootstrap table, the validation sweeps.
* ``pareto.png`` — test split: refusal against over-refusal and against utility, each chosen
  point with its intervals as error bars; ``sweeps.png`` — every grid point on validation.

The *headline* SST variant is chosen like an operating point: the profile's rule applied to
the SST-Merge methods' chosen validation scores. Its test outcomes are compared with every other
method's, item by item (:func:`~sst_merge_plugin.evaluation.stats.paired_bootstrap`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sst_merge_plugin.atomic import write_text
from sst_merge_plugin.bench.pipeline import BenchmarkRun, TunedMethod, scores_of
from sst_merge_plugin.bench.profile import SweepInputs
from sst_merge_plugin.bench.scoring import result_row
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.stats import paired_bootstrap

#: the merge method of the variants the headline comparison is about
HEADLINE_METHOD = "sst_merge"
#: outcome lists of a record compared in pairs: metric name → how to read them
PAIRED = ("refusal", "over_refusal", "utility", "mmlu")


def knob_text(knob: Mapping[str, Any] | None) -> str:
    """``λ=0.5, safety_weight=1.5`` — the knob values of a row as people write them."""
    if not knob:
        return "–"
    names = {"utility_weight": "λ"}
    return ", ".join(f"{names.get(k, k)}={v:g}" if isinstance(v, float | int) else f"{k}={v}"
                     for k, v in knob.items())  # fmt: skip


def paired_outcomes(record: Mapping[str, Any], metric: str) -> dict[str, list[float]] | None:
    """A record's per-item outcomes of ``metric`` (one of :data:`PAIRED`) as bootstrap input."""
    items = record["metrics"].get("items", {})
    if metric == "refusal":
        return {"harmful": [float(i["refused"]) for i in items.get("harmful", [])]}
    if metric == "over_refusal":
        return {"benign": [float(i["refused"]) for i in items.get("benign", [])]}
    if metric == "utility":
        return {name: [float(x) for x in v] for name, v in items.get("utility", {}).items()}
    return {"mmlu": [float(x) for x in items["mmlu"]]} if items.get("mmlu") else None


def headline(run: BenchmarkRun) -> TunedMethod | None:
    """The SST-Merge variant the rule prefers on validation among the sweeps that merge every
    adapter (``None`` without one): a sweep of the safety adapter alone has no skills to keep,
    so it would meet the rule at zero utility and is an ablation, not a merge to compare."""
    candidates = [
        m
        for m in run.methods
        if m.sweep.merge_method == HEADLINE_METHOD and m.sweep.inputs == SweepInputs.ALL
    ]
    if not candidates:
        return None
    base = run.base_validation["metrics"]
    scores = [scores_of(m.validation[m.chosen.index]) for m in candidates]
    chosen = run.profile.rule.choose(scores, base["benign_over_refusal"], base["harmful_refusal"])
    return candidates[chosen.index]


def bootstrap_rows(
    run: BenchmarkRun, anchor: TunedMethod | None = None, n_resamples: int = 10_000
) -> list[dict[str, Any]]:
    """``anchor``'s test outcomes (default: the headline variant's) minus every other method's,
    paired by item, each with its 95 % interval (refusal, over-refusal, utility, MMLU accuracy
    where scored)."""
    best = headline(run) if anchor is None else anchor
    if best is None:
        return []
    rows = []
    for other in run.methods:
        if other is best:
            continue
        row: dict[str, Any] = {"sst": best.sweep.label, "baseline": other.sweep.label}
        for metric in PAIRED:
            mine, theirs = paired_outcomes(best.test, metric), paired_outcomes(other.test, metric)
            if mine and theirs and all(mine.values()):
                interval = paired_bootstrap(mine, theirs, n_resamples=n_resamples)
                row[metric] = interval.as_dict() | {"excludes_zero": interval.excludes_zero()}
        rows.append(row)
    return rows


def check_comparisons(labels: Sequence[str], methods: Sequence[str]) -> None:
    """An error unless every ``--compare`` label is one of ``methods`` (the sweep labels run)."""
    unknown = [label for label in labels if label not in methods]
    if unknown:
        raise SSTError(f"--compare: {unknown} not among the methods run ({sorted(methods)})")


def comparison_anchors(run: BenchmarkRun, labels: Sequence[str]) -> list[TunedMethod]:
    """The methods of ``run`` named ``labels`` (extra anchors of paired comparisons besides the
    headline); an unknown label is an error (:func:`check_comparisons`)."""
    methods = {method.sweep.label: method for method in run.methods}
    check_comparisons(labels, list(methods))
    return [methods[label] for label in labels]


def summarise(run: BenchmarkRun, compare: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON-serialisable summary written to ``results.json`` (module doc); ``compare``
    names methods whose paired differences with every other method are added
    (``comparisons``, one row list per named method)."""
    profile = run.profile
    methods = []
    for method in run.methods:
        chosen = method.chosen
        methods.append(
            {
                "method": method.sweep.label,
                "merge_method": method.sweep.merge_method,
                "knob": method.validation[chosen.index]["knob"],
                "feasible": chosen.feasible,
                "reason": chosen.reason,
                "validation": result_row(method.validation[chosen.index], run.base_validation),
                "test": result_row(method.test, run.base_test),
            }
        )
    best = headline(run)
    return {
        "profile": profile.name,
        "rule": profile.rule.as_dict(),
        "validation": asdict(profile.validation),
        "test": asdict(profile.test),
        "base_validation": result_row(run.base_validation, None),
        "references": [result_row(record, run.base_test) for record in run.references],
        "methods": methods,
        "headline": None if best is None else best.sweep.label,
        "bootstrap": bootstrap_rows(run),
        "comparisons": {
            anchor.sweep.label: bootstrap_rows(run, anchor)
            for anchor in comparison_anchors(run, compare)
        },
        "sweeps": {
            method.sweep.label: [result_row(r, run.base_validation) for r in method.validation]
            for method in run.methods
        },
    }


def rate_cell(row: Mapping[str, Any], key: str, interval: str | None = None) -> str:
    """``0.62 [0.54, 0.70]`` — a result row's ``key`` with its 95 % interval
    (``row["intervals"][interval or key]``), the value alone without one, ``–`` for ``None``."""
    value = row.get(key)
    if value is None:
        return "–"
    bounds = row.get("intervals", {}).get(interval or key)
    return f"{value:.2f} [{bounds['low']:.2f}, {bounds['high']:.2f}]" if bounds else f"{value:.2f}"


def _drift(row: Mapping[str, Any]) -> str:
    value = row.get("mmlu_drift")
    return "–" if value is None else f"{100 * value:+.1f}"


def _test_cells(row: Mapping[str, Any]) -> list[str]:
    return [
        rate_cell(row, "harmful_refusal"),
        rate_cell(row, "benign_over_refusal"),
        rate_cell(row, "utility_mean", "utility"),
        _drift(row),
    ]


def _refusal_bar(rule: Mapping[str, Any]) -> str:
    """The rule's refusal bar as the report states it (:meth:`~.tuning.SelectionRule.
    describe_bar`)."""
    relative = rule.get("refusal_vs_base")
    if relative is None:
        return f"{rule['min_refusal']}"
    return "the base model's own validation refusal" + (f" {relative:+g}" if relative else "")


def markdown(summary: Mapping[str, Any], title: str) -> str:
    """The Markdown report of :func:`summarise`'s output (module doc)."""
    test_head = [
        "harmful refusal ↑ [95% CI]",
        "over-refusal ↓ [95% CI]",
        "utility ↑ [95% CI]",
        "MMLU drift (points) ↓",
    ]
    lines = [f"# {title}", ""]
    test, validation = summary["test"], summary["validation"]
    lines += [
        f"Test split: {test['harmful']} ({summary['references'][0]['n_harmful']} prompts), "
        f"{test['benign']} ({summary['references'][0]['n_benign']}), skills "
        f"{', '.join(test['utility'])} ({test['n_utility']} each, pool {test['skill_pool']})"
        + (f", MMLU {test['mmlu']} questions" if test.get("mmlu") else "")
        + f". Operating points chosen on {validation['harmful']} / {validation['benign']} / the "
        f"skills' validation pool by the rule: refusal ≥ {_refusal_bar(summary['rule'])} and "
        f"over-refusal ≤ base + {summary['rule']['over_refusal_margin']}, then the highest "
        "utility; else the highest refusal − over-refusal + utility.",
        "",
        "## Reference models (test)",
        "",
        "| model | knob | " + " | ".join(test_head) + " |",
        "|---|---|" + "---:|" * len(test_head),
    ]
    for row in summary["references"]:
        lines.append(f"| {row['method']} | {knob_text(row['knob'])} | " + " | ".join(_test_cells(row)) + " |")  # fmt: skip
    lines += [
        "",
        "## Each method at its validation-chosen point (test)",
        "",
        "| method | chosen knob | met the rule | validation refusal / over / utility | "
        + " | ".join(test_head)
        + " |",
        "|---|---|---|---|" + "---:|" * len(test_head),
    ]
    for method in summary["methods"]:
        val = method["validation"]
        scores = (
            f"{val['harmful_refusal']:.2f} / {val['benign_over_refusal']:.2f} / "
            f"{val['utility_mean']:.2f}"
        )
        mark = "**" if method["method"] == summary.get("headline") else ""
        lines.append(
            f"| {mark}{method['method']}{mark} | {knob_text(method['knob'])} | "
            f"{'yes' if method['feasible'] else 'no'} | {scores} | "
            + " | ".join(_test_cells(method["test"]))
            + " |"
        )
    anchors = {summary.get("headline"): summary["bootstrap"], **summary.get("comparisons", {})}
    for anchor, rows in anchors.items():
        if rows:
            lines += _bootstrap_table(anchor, rows)
    projected = [m for m in summary["methods"] if m["test"].get("utility_projection")]
    if projected:
        lines += [
            "",
            "## Utility deltas projected by the dual (each chosen point)",
            "",
            "| method | utility input | utility gain kept | safety disturbance removed |",
            "|---|---|---:|---:|",
        ]
        for method in projected:
            for name, item in method["test"]["utility_projection"].items():
                lines.append(
                    f"| {method['method']} | `{Path(name.split('+')[-1]).name}` | "
                    f"{item['utility_gain_kept']:.3f} | {item['safety_disturbance_removed']:.3f} |"
                )
    lines += [
        "",
        "## Validation sweeps (every grid point)",
        "",
        "| method | knob | refusal | over-refusal | utility |",
        "|---|---|---:|---:|---:|",
    ]
    for label, rows in summary["sweeps"].items():
        for row in rows:
            lines.append(
                f"| {label} | {knob_text(row['knob'])} | {row['harmful_refusal']:.2f} | "
                f"{row['benign_over_refusal']:.2f} | {row['utility_mean']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _bootstrap_table(anchor: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Markdown lines of ``anchor`` minus each method (:func:`bootstrap_rows`)."""
    lines = [
        "",
        f"## Paired bootstrap: {anchor} minus each method (test, 95% CI)",
        "",
        "| baseline | Δ refusal | Δ over-refusal | Δ utility | Δ MMLU accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = []
        for metric in PAIRED:
            value = row.get(metric)
            if value is None:
                cells.append("–")
                continue
            star = " *" if value["excludes_zero"] else ""
            cells.append(
                f"{value['estimate']:+.3f} [{value['low']:+.3f}, {value['high']:+.3f}]{star}"
            )
        lines.append(f"| {row['baseline']} | " + " | ".join(cells) + " |")
    return [*lines, "", "`*`: the interval excludes 0."]


def error_bar(row: Mapping[str, Any], key: str, interval: str | None = None) -> list[list[float]]:
    """matplotlib's ``[[below], [above]]`` error of a result row's ``key`` from its 95 % interval
    (``row["intervals"][interval or key]``); a series is ``numpy.hstack`` of its points'."""
    bounds = row["intervals"][interval or key]
    return [[row[key] - bounds["low"]], [bounds["high"] - row[key]]]


def plot_pareto(summary: Mapping[str, Any], path: str | Path, title: str) -> None:
    """Test split: refusal vs over-refusal and refusal vs utility, with 95 % error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sst_merge_plugin.evaluation.report import save_png

    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    entries = [(m["method"], m["test"]) for m in summary["methods"]]
    # a reference that has a knob (the utility-only merge at each reference λ) is named with it
    entries += [
        (r["method"] if not r["knob"] else f"{r['method']} ({knob_text(r['knob'])})", r)
        for r in summary["references"]
        if r["utility_mean"] is not None
    ]
    markers = "osD^v<>pPX*h"
    for index, (label, row) in enumerate(entries):
        style = {"marker": markers[index % len(markers)], "capsize": 3, "label": label,
                 "linestyle": "none", "color": f"C{index % 10}"}  # fmt: skip
        if label == summary.get("headline"):
            style.update(markersize=11, markeredgecolor="black")
        y_error = error_bar(row, "harmful_refusal")
        axes[0].errorbar(row["benign_over_refusal"], row["harmful_refusal"], y_error,
                         error_bar(row, "benign_over_refusal"), **style)  # fmt: skip
        axes[1].errorbar(row["utility_mean"], row["harmful_refusal"], y_error,
                         error_bar(row, "utility_mean", "utility"), **style)  # fmt: skip
    axes[0].set_xlabel("over-refusal on benign look-alikes (test) ↓")
    axes[1].set_xlabel("utility: skill exact match (test) ↑")
    axes[0].set_ylabel("harmful refusal (test) ↑")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="best", ncol=2)
    figure.suptitle(title)
    save_png(figure, path)


def plot_sweeps(summary: Mapping[str, Any], path: str | Path, title: str) -> None:
    """Validation split: every grid point of every method (refusal vs over-refusal, utility as
    marker size), the chosen point circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sst_merge_plugin.evaluation.report import save_png

    figure, axes = plt.subplots(figsize=(8, 6))
    chosen = {m["method"]: m["knob"] for m in summary["methods"]}
    for index, (label, rows) in enumerate(summary["sweeps"].items()):
        color = f"C{index % 10}"
        xs = [r["benign_over_refusal"] for r in rows]
        ys = [r["harmful_refusal"] for r in rows]
        sizes = [20 + 120 * (r["utility_mean"] or 0.0) for r in rows]
        axes.scatter(xs, ys, s=sizes, color=color, alpha=0.6, label=label)
        for row in rows:
            if row["knob"] == chosen[label]:
                axes.scatter(row["benign_over_refusal"], row["harmful_refusal"], s=260,
                             facecolors="none", edgecolors=color, linewidths=2)  # fmt: skip
    axes.set_xlabel("over-refusal (validation) ↓")
    axes.set_ylabel("harmful refusal (validation) ↑")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="lower right", ncol=2)
    axes.set_title(f"{title}: every grid point (size = utility; circled = chosen)")
    save_png(figure, path)


def write_outputs(
    run: BenchmarkRun, out_dir: str | Path, title: str, compare: Sequence[str] = ()
) -> dict[str, Path]:
    """``results.json``, ``results.md``, ``pareto.png`` and ``sweeps.png`` in ``out_dir``
    (``compare``: :func:`summarise`)."""
    out = Path(out_dir)
    summary = summarise(run, compare)
    paths = {
        "json": out / "results.json",
        "markdown": out / "results.md",
        "plot": out / "pareto.png",
        "sweeps": out / "sweeps.png",
    }
    write_text(paths["json"], json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
    write_text(paths["markdown"], markdown(summary, title))
    plot_pareto(summary, paths["plot"], title)
    plot_sweeps(summary, paths["sweeps"], title)
    return paths
