"""Writing task outputs: intermediate runs and the final CSV ``part-NNNNN`` files."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from typing import IO, Any

from lambda_src import shuffle
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
        rows = pairs if type(pairs) is list else list(pairs)
        keys = [key for key, _ in rows]
        values = [value for _, value in rows]
        if _SCALARS.issuperset(map(type, keys)) and _SCALARS.issuperset(map(type, values)):
            self._text.write(columns_text([keys, values]))  # no list to spread over columns
        else:
            self._csv.writerows([csv_fields(key, value) for key, value in rows])
        self.records += len(rows)
        if self._text.tell() >= WRITE_BUFFER:
            self._drain()

    def add_records(self, records: list[list[Any]], first: int = 0) -> None:
        """Write the pairs of ``records[first:]``, one record's rows at a time.

        A record holding something other than a (key, value) pair writes nothing:
        ``shuffle.RejectedRecord`` is raised with its index, after the records before it.
        """
        writerows = self._csv.writerows
        for index in range(first, len(records)):
            pairs = records[index]
            try:
                rows = [csv_fields(key, value) for key, value in pairs]
            except (TypeError, ValueError) as err:
                raise shuffle.RejectedRecord(index, shuffle.not_a_pair(pairs) or err) from None
            writerows(rows)
            self.records += len(rows)
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


#: Types that are one CSV field each (a list or tuple is spread over several).
_SCALARS = frozenset({str, int, float, bool, type(None)})


def columns_to_csv(columns: list[list[Any]]) -> bytes:
    """CSV bytes for result columns, formatted exactly as ``CsvWriter`` formats rows."""
    return columns_text(columns).encode("utf-8")


def columns_text(columns: list[list[Any]]) -> str:
    """:func:`columns_to_csv`'s text."""
    if not columns or not columns[0]:
        return ""
    texts = []
    for col in columns:
        kinds = set(map(type, col))
        if kinds == {str}:
            texts.append(col)
        elif kinds == {float}:
            texts.append(list(map(repr, col)))
        else:
            texts.append([_field(v) for v in col])
    # One search per column: joining texts cannot make a match of one character.
    if any(_NEEDS_QUOTES.search("".join(col)) for col in texts) or (len(texts) == 1 and "" in texts[0]):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(zip(*texts, strict=True))
        return buf.getvalue()
    lines = texts[0] if len(texts) == 1 else map(",".join, zip(*texts, strict=True))
    return "\n".join(lines) + "\n"
