"""Records of JSONL, JSON and CSV data files: the one reader behind prompt, completion, utility
task and statement-pair files.

:func:`read_records` (a file) and :func:`parse_records` (text already read) return
``(location, record)`` pairs in file order; ``location`` names the file and the record's place —
``path:line`` for JSONL and CSV (the row's last line), ``path[index]`` for JSON — so that a
caller's error about one record (a missing field, a wrong type) points at it.

* ``.jsonl`` — one JSON value a line; blank lines are skipped.
* ``.json`` — a JSON list; its items are the records.
* ``.csv`` — a header row, then one ``dict`` of the header's columns per row (missing trailing
  values are ``None``).

Text that cannot be read this way is an :class:`~sst_merge_plugin.core.errors.SSTError` naming the
file and, where there is one, the line: not UTF-8, invalid JSON, a ``.json`` file that is not a
list, a CSV file without a header row or a row with more values than header columns. What a record
must contain is the caller's to check.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from sst_merge_plugin.core.errors import SSTError

#: the record file formats, by suffix
RECORD_FORMATS = (".jsonl", ".json", ".csv")

Record = tuple[str, object]


def read_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped); :class:`SSTError` if it is
    not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SSTError(f"{path}: not UTF-8 text: {exc}") from exc


def parse_records(text: str, fmt: str, source: str, *, what: str = "record") -> list[Record]:
    """``(location, record)`` pairs of ``text`` in format ``fmt`` (one of :data:`RECORD_FORMATS`).

    ``source`` (a path or an asset member name) starts every location and error message;
    ``what`` names the kind of file in the message for a ``.json`` file that is not a list.
    """
    fmt = fmt.lower()
    if fmt == ".csv":
        return _csv_records(text, source)
    if fmt == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SSTError(f"{source}: invalid JSON: {exc}") from exc
        if not isinstance(data, list):
            raise SSTError(
                f"{source}: a .json {what} file must hold a list, got {type(data).__name__}"
            )
        return [(f"{source}[{index}]", record) for index, record in enumerate(data)]
    if fmt != ".jsonl":
        raise SSTError(
            f"{source}: unsupported record format {fmt!r}; expected one of "
            f"{', '.join(RECORD_FORMATS)}"
        )
    records: list[Record] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append((f"{source}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise SSTError(f"{source}:{number}: invalid JSON line: {exc}") from exc
    return records


def _csv_records(text: str, source: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records: list[Record] = []
    try:
        if not reader.fieldnames:
            raise SSTError(f"{source}: CSV file has no header row")
        for row in reader:
            if None in row:
                raise SSTError(f"{source}:{reader.line_num}: more values than header columns")
            records.append((f"{source}:{reader.line_num}", row))
    except csv.Error as exc:
        raise SSTError(f"{source}: invalid CSV after line {reader.line_num}: {exc}") from exc
    return records


def read_records(
    path: str | os.PathLike[str], fmt: str | None = None, *, what: str = "record"
) -> list[Record]:
    """:func:`parse_records` of the file ``path`` (:func:`read_text`); ``fmt`` defaults to the
    file's suffix."""
    return parse_records(read_text(path), fmt or Path(path).suffix, str(path), what=what)
