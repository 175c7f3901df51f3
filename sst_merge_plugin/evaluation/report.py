"""Safety–utility result tables and the Pareto plot.

A *row* is one evaluated model::

    {"method": str, "knob": number | str | None, "harmful_refusal": float,
     "benign_over_refusal": float, "utility": {skill: float}, "utility_mean": float | None,
     "drift": float | None, "merge_seconds": float | None}

(extra keys are kept in the JSON and ignored elsewhere). ``harmful_refusal`` should be high,
``benign_over_refusal`` low, ``utility_mean`` high. A row is on the *Pareto front* iff no other
row is at least as good in all three (utility compared only where both rows have one) and
strictly better in one (:func:`pareto_front`); the plot shows refusal against over-refusal with
utility as marker colour and size.

Outputs: :func:`markdown_table`, :func:`write_json` (the list of rows, each with ``"pareto"``:
whether it is on the front) and :func:`plot_pareto` (PNG; x = benign over-refusal, y = harmful refusal, one
connected series per method ordered by knob, front as a dashed line). All files are written
atomically; :func:`write_report` validates every row before writing anything.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sst_merge_plugin.atomic import atomic_path, write_text
from sst_merge_plugin.core.errors import SSTError

Row = Mapping[str, Any]
RATE_KEYS = ("harmful_refusal", "benign_over_refusal")
OPTIONAL_NUMBER_KEYS = ("drift", "merge_seconds")


def _is_rate(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def validate_rows(rows: Sequence[Row]) -> None:
    """:class:`SSTError` naming the row and key unless every row has a non-empty ``method``,
    rates in [0, 1] for :data:`RATE_KEYS`, a ``utility`` mapping of rates (if present), a rate
    or ``None`` for ``utility_mean`` and finite numbers or ``None`` for
    :data:`OPTIONAL_NUMBER_KEYS`."""
    if not rows:
        raise SSTError("no result rows to report")
    for index, row in enumerate(rows):
        where = f"result row {index}"
        if not isinstance(row, Mapping):
            raise SSTError(f"{where} is not a mapping: {row!r}")
        if not isinstance(row.get("method"), str) or not row["method"]:
            raise SSTError(f"{where} needs a non-empty string 'method', got {row.get('method')!r}")
        for key in RATE_KEYS:
            if not _is_rate(row.get(key)):
                raise SSTError(
                    f"{where} ({row['method']}): {key!r} must be in [0, 1], got {row.get(key)!r}"
                )
        utility = row.get("utility", {})
        if not isinstance(utility, Mapping) or not all(_is_rate(v) for v in utility.values()):
            raise SSTError(
                f"{where} ({row['method']}): 'utility' must map names to rates in [0, 1]"
            )
        if row.get("utility_mean") is not None and not _is_rate(row["utility_mean"]):
            raise SSTError(f"{where} ({row['method']}): 'utility_mean' must be in [0, 1] or None")
        for key in OPTIONAL_NUMBER_KEYS:
            value = row.get(key)
            if value is not None and not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                raise SSTError(
                    f"{where} ({row['method']}): {key!r} must be a finite number or None"
                )


def pareto_front(rows: Sequence[Row]) -> list[int]:
    """Indices of the non-dominated rows: max ``harmful_refusal``, min ``benign_over_refusal``
    and, between two rows that both have one, max ``utility_mean`` (a safe model that lost its
    skills does not dominate a skilled one)."""

    def objectives(a: Row, b: Row) -> list[tuple[float, float]]:
        pairs = [
            (a["harmful_refusal"], b["harmful_refusal"]),
            (-a["benign_over_refusal"], -b["benign_over_refusal"]),
        ]
        if a.get("utility_mean") is not None and b.get("utility_mean") is not None:
            pairs.append((a["utility_mean"], b["utility_mean"]))
        return pairs

    def dominates(a: Row, b: Row) -> bool:
        pairs = objectives(a, b)
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return [i for i, row in enumerate(rows) if not any(dominates(other, row) for other in rows)]


def _cell(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def _knob_text(knob: object) -> str:
    """A knob as written by people: numbers in ``%g`` form (``0.5``, ``1e-05``), strings as is."""
    if isinstance(knob, int | float) and not isinstance(knob, bool):
        return f"{knob:g}"
    return _cell(knob)


def markdown_table(rows: Sequence[Row]) -> str:
    """A Markdown table: method, knob, the two rates, utility mean and per-skill columns (union
    over rows, sorted), drift, merge seconds, and a ``front`` mark for Pareto rows."""
    validate_rows(rows)
    skills = sorted({name for row in rows for name in row.get("utility", {})})
    front = set(pareto_front(rows))
    header = ["method", "knob", "harmful refusal ↑", "benign over-refusal ↓", "utility mean ↑"]
    header += [f"util: {name}" for name in skills] + ["drift", "merge s", "front"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in enumerate(rows):
        cells = [
            _cell(row["method"]),
            _knob_text(row.get("knob")),
            _cell(float(row["harmful_refusal"])),
            _cell(float(row["benign_over_refusal"])),
            _cell(row.get("utility_mean")),
        ]
        cells += [_cell(row.get("utility", {}).get(name)) for name in skills]
        merge_seconds = row.get("merge_seconds")
        cells += [
            _cell(row.get("drift"), 4),
            _cell(None if merge_seconds is None else float(merge_seconds), 1),
            "★" if index in front else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def result_summary_table(result: Mapping[str, Any]) -> str:
    """A Markdown ``metric | value | n`` table of one :func:`~sst_merge_plugin.evaluation.suite.
    evaluate_model` result (refusal rates, each utility score and their mean, true/false
    accuracy when measured)."""
    lines = ["| metric | value | n |", "|---|---|---|"]
    lines.append(
        f"| harmful refusal ↑ | {_cell(result['harmful_refusal'])} | {result['n_harmful']} |"
    )
    lines.append(
        f"| benign over-refusal ↓ | {_cell(result['benign_over_refusal'])} | {result['n_benign']} |"
    )
    for name, accuracy in result["utility"].items():
        lines.append(
            f"| utility: {_cell(name)} ↑ | {_cell(accuracy)} | {result['n_utility'][name]} |"
        )
    if result["utility_mean"] is not None:
        lines.append(f"| utility mean ↑ | {_cell(result['utility_mean'])} | |")
    if result["truefalse_accuracy"] is not None:
        lines.append(
            f"| true/false accuracy ↑ | {_cell(result['truefalse_accuracy'])} | {result['n_truefalse']} |"
        )
    return "\n".join(lines) + "\n"


def write_json(rows: Sequence[Row], path: str | os.PathLike[str]) -> None:
    """Write the list of rows, each with ``"pareto": bool`` (on the front), as indented JSON,
    atomically."""
    validate_rows(rows)
    front = set(pareto_front(rows))
    payload = [{**row, "pareto": index in front} for index, row in enumerate(rows)]
    try:
        text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SSTError(f"result rows are not JSON-serialisable: {exc}") from exc
    write_text(path, text + "\n")


def _knob_order(rows: list[Row]) -> list[Row]:
    """Rows sorted by numeric knob when all knobs are numbers, else in the given order."""
    knobs = [row.get("knob") for row in rows]
    if all(isinstance(k, int | float) and not isinstance(k, bool) for k in knobs):
        return sorted(rows, key=lambda row: row["knob"])
    return rows


def plot_pareto(
    rows: Sequence[Row], path: str | os.PathLike[str], *, title: str | None = None
) -> None:
    """Save the safety–utility Pareto plot as PNG (layout in the module docstring).

    Each method is a line in its own colour and marker through its knob sweep (knob values
    annotated); marker fill colour and size encode ``utility_mean`` (grey, small when ``None``);
    the Pareto front is a dashed black staircase with ringed points.
    """
    validate_rows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    utilities = [row["utility_mean"] for row in rows if row.get("utility_mean") is not None]
    norm = Normalize(vmin=min(utilities, default=0.0), vmax=max(utilities, default=1.0))
    if norm.vmin == norm.vmax:
        norm = Normalize(vmin=norm.vmin - 0.05, vmax=norm.vmax + 0.05)
    colormap = plt.get_cmap("viridis")
    series_colours = plt.get_cmap("tab10")
    markers = "osD^vP*Xh<>p"

    figure, axes = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for number, method in enumerate(methods):
        series = _knob_order([row for row in rows if row["method"] == method])
        xs = [row["benign_over_refusal"] for row in series]
        ys = [row["harmful_refusal"] for row in series]
        line_colour = series_colours(number % 10)
        axes.plot(xs, ys, "-", color=line_colour, linewidth=1.2, alpha=0.8, zorder=1)
        for row, x, y in zip(series, xs, ys, strict=True):
            utility = row.get("utility_mean")
            axes.scatter(
                [x],
                [y],
                s=40 + 160 * (norm(utility) if utility is not None else 0.0),
                c=[colormap(norm(utility)) if utility is not None else (0.6, 0.6, 0.6, 1.0)],
                marker=markers[number % len(markers)],
                edgecolors=[line_colour],
                linewidths=1.2,
                zorder=3,
            )
            if row.get("knob") is not None:
                axes.annotate(
                    _knob_text(row["knob"]),
                    (x, y),
                    textcoords="offset points",
                    xytext=(5, 4),
                    fontsize=7,
                )
        axes.plot(
            [], [], "-", color=line_colour, marker=markers[number % len(markers)], label=method
        )
    front = sorted((rows[i] for i in pareto_front(rows)), key=lambda r: r["benign_over_refusal"])
    fx = [row["benign_over_refusal"] for row in front]
    fy = [row["harmful_refusal"] for row in front]
    axes.step(fx, fy, where="post", linestyle="--", color="black", linewidth=1.0, zorder=2)
    axes.scatter(fx, fy, s=260, facecolors="none", edgecolors="black", linewidths=1.0, zorder=2)
    axes.plot([], [], "--o", color="black", markerfacecolor="none", label="Pareto front")
    if utilities:
        colourbar = figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=colormap), ax=axes)
        colourbar.set_label("utility (mean exact match) ↑")
    axes.set_xlabel("benign over-refusal rate ↓")
    axes.set_ylabel("harmful refusal rate ↑")
    axes.set_xlim(-0.03, 1.03)
    axes.set_ylim(-0.03, 1.03)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    axes.set_title(title or "Safety–utility trade-off")
    save_png(figure, path)


def save_png(figure: Any, path: str | os.PathLike[str]) -> None:
    """``figure`` (matplotlib) laid out, written atomically as a PNG at ``path``, then closed."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png")
    finally:
        plt.close(figure)


def write_report(
    rows: Sequence[Row],
    *,
    json_path: str | os.PathLike[str] | None = None,
    markdown_path: str | os.PathLike[str] | None = None,
    plot_path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> str:
    """Validate ``rows`` and write the requested outputs; returns the Markdown table."""
    validate_rows(rows)
    table = markdown_table(rows)
    if json_path is not None:
        write_json(rows, json_path)
    if markdown_path is not None:
        write_text(markdown_path, table)
    if plot_path is not None:
        plot_pareto(rows, plot_path, title=title)
    return table
