"""Writing task outputs: intermediate runs and the final CSV ``part-NNNNN`` files."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from typing import IO, Any

from lambda_src import storage as st

WRITE_BUFFER = 1024 * 1024


def write_lines(uri: str, data: bytes | Iterable[bytes]) -> tuple[int, int]:
    """Write encoded lines atomically; return (records, bytes)."""
    store = st.for_uri(uri)
    if isinstance(data, bytes):
        store.write_bytes(uri, data)
        return data.count(b"\n"), len(data)
    records = 0
    size = 0
    with store.open_write(uri) as fh:
        pending: list[bytes] = []
        pending_bytes = 0
        for line in data:
            pending.append(line)
            pending_bytes += len(line)
            records += 1
            if pending_bytes >= WRITE_BUFFER:
                fh.write(b"".join(pending))
                size += pending_bytes
                pending, pending_bytes = [], 0
        if pending:
            fh.write(b"".join(pending))
            size += pending_bytes
    return records, size


def _field(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def csv_fields(key: Any, value: Any) -> list[str]:
    """A result row: the key, then the value; a list or tuple becomes several columns."""
    fields: list[str] = []
    for part in (key, value):
        if isinstance(part, list | tuple):
            fields.extend(_field(v) for v in part)
        else:
            fields.append(_field(part))
    return fields


class CsvWriter:
    """Writes (key, value) pairs as CSV rows to one object, atomically on clean exit."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.records = 0
        self.bytes = 0
        self._ctx = None
        self._fh: IO[bytes] | None = None
        self._text = io.StringIO()
        self._csv = csv.writer(self._text, lineterminator="\n")

    def __enter__(self) -> CsvWriter:
        self._ctx = st.for_uri(self.uri).open_write(self.uri)
        self._fh = self._ctx.__enter__()
        return self

    def add(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        writerow = self._csv.writerow
        for key, value in pairs:
            writerow(csv_fields(key, value))
            self.records += 1
        if self._text.tell() >= WRITE_BUFFER:
            self._drain()

    def _drain(self) -> None:
        data = self._text.getvalue().encode("utf-8")
        self._text.seek(0)
        self._text.truncate()
        assert self._fh is not None
        self._fh.write(data)
        self.bytes += len(data)

    def __exit__(self, exc_type, exc, tb) -> bool | None:
        if exc_type is None:
            self._drain()
        return self._ctx.__exit__(exc_type, exc, tb)


_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def columns_to_csv(columns: list[list[Any]]) -> bytes:
    """CSV bytes for result columns, formatted exactly as ``CsvWriter`` formats rows."""
    if not columns or not columns[0]:
        return b""
    texts = []
    for col in columns:
        if all(type(v) is str for v in col):
            texts.append(col)
        elif all(type(v) is float for v in col):
            texts.append(list(map(repr, col)))
        else:
            texts.append([_field(v) for v in col])
    if any(_NEEDS_QUOTES.search(v) for col in texts for v in col) or (
        len(texts) == 1 and "" in texts[0]
    ):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(zip(*texts, strict=True))
        return buf.getvalue().encode("utf-8")
    lines = texts[0] if len(texts) == 1 else [",".join(row) for row in zip(*texts, strict=True)]
    return ("\n".join(lines) + "\n").encode("utf-8")
