"""The shared JSONL/JSON/CSV record reader: formats, locations, and errors naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.records import parse_records, read_records, read_text


def test_each_format_gives_located_records(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"q": "x"}\n\n"y"\n', encoding="utf-8")
    assert read_records(tmp_path / "a.jsonl") == [
        (f"{tmp_path}/a.jsonl:1", {"q": "x"}),
        (f"{tmp_path}/a.jsonl:3", "y"),
    ]
    (tmp_path / "a.json").write_text('[{"q": "x"}, "y"]', encoding="utf-8")
    assert read_records(tmp_path / "a.json") == [
        (f"{tmp_path}/a.json[0]", {"q": "x"}),
        (f"{tmp_path}/a.json[1]", "y"),
    ]
    # the location of a CSV row is its last line; missing trailing values are None
    (tmp_path / "a.CSV").write_text('q,a\n"two\nlines",1\nz\n', encoding="utf-8")
    assert read_records(tmp_path / "a.CSV") == [
        (f"{tmp_path}/a.CSV:3", {"q": "two\nlines", "a": "1"}),
        (f"{tmp_path}/a.CSV:4", {"q": "z", "a": None}),
    ]
    # an explicit format wins over the suffix
    assert parse_records('{"q": 1}\n', ".jsonl", "x.json") == [("x.json:1", {"q": 1})]


def test_utf8_with_or_without_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "bom.jsonl").write_bytes('\ufeff{"q": "é"}\n'.encode())
    assert read_records(tmp_path / "bom.jsonl") == [(f"{tmp_path}/bom.jsonl:1", {"q": "é"})]
    (tmp_path / "latin.jsonl").write_bytes('{"q": "é"}\n'.encode("latin-1"))
    with pytest.raises(SSTError, match=r"latin\.jsonl: not UTF-8 text"):
        read_text(tmp_path / "latin.jsonl")


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        (".jsonl", '{"q": 1}\n{oops\n', r"^f\.x:2: invalid JSON line: "),
        (".json", "[1,", r"^f\.x: invalid JSON: "),
        (".json", '{"q": 1}', r"^f\.x: a \.json thing file must hold a list, got dict$"),
        (".csv", "", r"^f\.x: CSV file has no header row$"),
        (".csv", "q\nx\ny,z\n", r"^f\.x:3: more values than header columns$"),
        (".csv", "q\nx\n" + "y" * 200_000 + "\n", r"^f\.x: invalid CSV after line 2: field"),
        (".yaml", "q: 1\n", r"^f\.x: unsupported record format '\.yaml'"),
    ],
)
def test_errors_name_the_file_and_line(fmt: str, text: str, message: str) -> None:
    with pytest.raises(SSTError, match=message):
        parse_records(text, fmt, "f.x", what="thing")
