"""Result tables and the Pareto plot: files written atomically, re-read, PNG decodes, the Pareto
front against a brute-force reference, bad rows rejected before any file is written."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.report import (
    markdown_table,
    pareto_front,
    result_summary_table,
    write_report,
)


def _row(method, knob, harm, over, utility, drift=None, seconds=None):
    return {
        "method": method,
        "knob": knob,
        "harmful_refusal": harm,
        "benign_over_refusal": over,
        "utility": utility,
        "utility_mean": sum(utility.values()) / len(utility) if utility else None,
        "drift": drift,
        "merge_seconds": seconds,
    }


ROWS = [
    _row("base", None, 0.05, 0.00, {"addition": 0.2, "uppercase": 0.4}),
    _row("sst", 0.5, 0.60, 0.05, {"addition": 0.9, "uppercase": 0.8}, 0.01, 3.2),
    _row("sst", 1.0, 0.90, 0.10, {"addition": 0.85, "uppercase": 0.8}, 0.02, 3.1),
    _row("sst", 2.0, 0.95, 0.30, {"addition": 0.7, "uppercase": 0.6}, 0.05, 3.3),
    _row("task_arithmetic", 1.0, 0.80, 0.40, {"addition": 0.8, "uppercase": 0.7}, 0.04, 0.5),
    _row("task_arithmetic", 0.5, 0.50, 0.20, {"addition": 0.9}, 0.02, 0.4),
]


def test_pareto_front_matches_brute_force_reference():
    rng = random.Random(0)
    for _ in range(50):
        rows = [
            _row(
                "m",
                i,
                rng.choice([0.0, 0.25, 0.5, 1.0]),
                rng.choice([0.0, 0.5, 1.0]),
                {"skill": rng.choice([0.0, 0.5, 1.0])} if rng.random() < 0.7 else {},
            )
            for i in range(rng.randint(1, 8))
        ]

        def key(r, other):
            point = [r["harmful_refusal"], -r["benign_over_refusal"]]
            if r["utility_mean"] is not None and other["utility_mean"] is not None:
                point.append(r["utility_mean"])
            return point

        expected = [
            i
            for i, row in enumerate(rows)
            if not any(
                all(x >= y for x, y in zip(key(other, row), key(row, other), strict=True))
                and key(other, row) != key(row, other)
                for j, other in enumerate(rows)
                if j != i
            )
        ]
        assert pareto_front(rows) == expected
    # a safe model without skills dominates none of the skilled rows; the base model's utility
    # and task arithmetic 0.5's (the best) keep them on the front
    no_skill = _row("safety", None, 1.0, 0.0, {"addition": 0.0, "uppercase": 0.0})
    assert pareto_front([*ROWS, no_skill]) == [0, 1, 2, 3, 5, 6]
    assert pareto_front(ROWS) == [0, 1, 2, 3, 5]


def test_write_report_writes_json_markdown_and_a_valid_png(tmp_path):
    import matplotlib.image

    table = write_report(
        ROWS,
        json_path=tmp_path / "out" / "results.json",
        markdown_path=tmp_path / "out" / "results.md",
        plot_path=tmp_path / "out" / "pareto.png",
        title="test",
    )
    payload = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    on_front = [True, True, True, True, False, True]  # task arithmetic 1.0 is dominated
    assert payload == [{**row, "pareto": front} for row, front in zip(ROWS, on_front, strict=True)]

    markdown = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert markdown == table
    lines = markdown.strip().splitlines()
    assert len(lines) == 2 + len(ROWS)
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:3] == ["method", "knob", "harmful refusal ↑"]
    assert "util: addition" in header and "util: uppercase" in header
    last = [cell.strip() for cell in lines[-1].strip("|").split("|")]
    assert last[:5] == ["task_arithmetic", "0.5", "0.500", "0.200", "0.900"]
    assert last[header.index("util: uppercase")] == "–"  # missing skill
    assert sum("★" in line for line in lines[2:]) == 5

    png = tmp_path / "out" / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 400
    assert np.asarray(image).std() > 0.05  # not a blank canvas
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "pareto.png",
        "results.json",
        "results.md",
    ]  # no temporaries left behind


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"harmful_refusal": 1.5}, "'harmful_refusal' must be in"),
        ({"benign_over_refusal": float("nan")}, "'benign_over_refusal' must be in"),
        ({"method": ""}, "non-empty string 'method'"),
        ({"utility": {"addition": 2.0}}, "'utility' must map"),
        ({"utility_mean": -0.1}, "'utility_mean'"),
        ({"drift": float("inf")}, "'drift' must be a finite number"),
        ({"merge_seconds": "fast"}, "'merge_seconds' must be a finite number"),
    ],
)
def test_bad_rows_are_rejected_before_writing(tmp_path, change, message):
    rows = [dict(ROWS[0]), {**ROWS[1], **change}]
    with pytest.raises(SSTError, match=message):
        write_report(
            rows,
            json_path=tmp_path / "r.json",
            markdown_path=tmp_path / "r.md",
            plot_path=tmp_path / "r.png",
        )
    assert list(tmp_path.iterdir()) == []


def test_unserialisable_rows_and_empty_input_are_errors(tmp_path):
    with pytest.raises(SSTError, match="no result rows"):
        markdown_table([])
    with pytest.raises(SSTError, match="not JSON-serialisable"):
        write_report([{**ROWS[0], "extra": object()}], json_path=tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_series_with_string_knobs_and_no_utility_still_plot(tmp_path):
    import matplotlib.image

    rows = [
        _row(method, knob, h, o, {})
        for (method, knob), h, o in zip(
            itertools.product(["a", "b"], ["low", "high"]),
            [0.1, 0.9, 0.3, 0.4],
            [0.0, 0.5, 0.1, 0.2],
            strict=True,
        )
    ]
    write_report(rows, plot_path=tmp_path / "p.png")
    assert matplotlib.image.imread(tmp_path / "p.png").shape[2] in (3, 4)


def test_result_summary_table_lists_every_measured_metric():
    result = {
        "harmful_refusal": 0.75,
        "benign_over_refusal": 0.125,
        "n_harmful": 8,
        "n_benign": 8,
        "utility": {"addition": 0.5},
        "n_utility": {"addition": 4},
        "utility_mean": 0.5,
        "truefalse_accuracy": None,
        "n_truefalse": 0,
    }
    lines = result_summary_table(result).strip().splitlines()
    assert lines[2:] == [
        "| harmful refusal ↑ | 0.750 | 8 |",
        "| benign over-refusal ↓ | 0.125 | 8 |",
        "| utility: addition ↑ | 0.500 | 4 |",
        "| utility mean ↑ | 0.500 | |",
    ]
