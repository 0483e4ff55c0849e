"""Writing task outputs: intermediate runs and the final ``part-NNNNN`` result files.

A result row is the key, then the value; a list or tuple key or value becomes several
columns (``result_fields``). The result formats (``--output-format``):

- ``csv`` (no header; a field that is not a scalar is written as JSON text);
- ``jsonl``: one JSON object per row, the columns as its members;
- ``parquet``: typed columns, in row groups of up to ``ROW_GROUP_ROWS`` rows.

JSON Lines and Parquet rows are named by the job's ``output_columns``, or else ``key`` and
``value`` (``key_1``, ``key_2``, ... for a list key, ``value_1``, ... for a list value, as
the first row is shaped). Parquet column types are the job's ``output_types``, or inferred
from the values: each column must hold one of bool, int (64-bit), float and str, or None.
A row that does not fit raises ``OutputSchemaError`` naming the file, the key and the
column. Every file of one result must have the same columns (and types): the commit checks.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
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


def _widths(key: Any, value: Any) -> tuple[int | None, int | None]:
    """How many columns the key and the value make: None for a scalar (one column)."""
    return (len(key) if isinstance(key, list | tuple) else None,
            len(value) if isinstance(value, list | tuple) else None)


def result_fields(key: Any, value: Any) -> list[Any]:
    """A result row's values: the key, then the value; a list or tuple becomes several columns."""
    fields: list[Any] = []
    for part in (key, value):
        if isinstance(part, list | tuple):
            fields.extend(part)
        else:
            fields.append(part)
    return fields


def csv_fields(key: Any, value: Any) -> list[str]:
    """A result row as CSV fields."""
    return [_field(v) for v in result_fields(key, value)]


def write_csv_rows(out: IO[str], rows: Iterable[list[str]]) -> int:
    """Write CSV rows (RFC 4180); return how many.

    The csv module quotes only the characters of its line terminator (``\n``), so a row
    with a carriage return in a field is written with every field quoted: a reader would
    otherwise end the row there.
    """
    plain = csv.writer(out, lineterminator="\n").writerow
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow
    n = 0
    for row in rows:
        (quoted if any("\r" in f for f in row) else plain)(row)
        n += 1
    return n


class OutputError(ValueError):
    """A result the task cannot write: a retry would fail the same way."""


class OutputSchemaError(OutputError):
    """Result rows that do not fit the result's columns or types: a bug in the job, or a
    schema the job should declare (``output_columns``, ``output_types``)."""


def default_columns(key: Any, value: Any) -> tuple[str, ...]:
    """Column names for a row shaped like (``key``, ``value``) when the job names none."""
    names: list[str] = []
    for part, width in zip(("key", "value"), _widths(key, value), strict=True):
        names.extend([part] if width is None else [f"{part}_{i}" for i in range(1, width + 1)])
    return tuple(names)


class ResultWriter:
    """Writes one result file (``uri``), atomically when the block exits cleanly.

    ``add(pairs)`` takes the reducer's (key, value) pairs, ``add_table(table)`` a vectorized
    job's result table (its columns are the result's columns). ``where`` names the file's
    task in errors (``partition 3``). ``output(partition)`` is the task's outputs entry:
    empty when no file was written.
    """

    format = ""

    def __init__(self, uri: str, where: str, columns: tuple[str, ...] | None = None,
                 types: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.where = where
        self.types = dict(types or {})
        self.columns: tuple[str, ...] | None = None
        if columns:
            self._name_columns(columns, "output_columns")
        self.records = 0
        self.bytes = 0
        self.written = False

    def __enter__(self) -> ResultWriter:
        return self

    def add(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        raise NotImplementedError

    def add_table(self, table: Any) -> None:
        raise NotImplementedError

    def add_records(self, records: list[list[Any]], first: int = 0) -> None:
        """Write the pairs of ``records[first:]``, one record's rows at a time.

        A record holding something other than (key, value) pairs writes nothing:
        ``shuffle.RejectedRecord`` is raised with its index, after the records before it.
        """
        for index in range(first, len(records)):
            pairs = records[index]
            error = shuffle.not_a_pair(pairs)
            if error is not None:
                raise shuffle.RejectedRecord(index, error)
            self.add(pairs)

    def map_records(self, mapper: Callable[[Any, Any], Iterable[Any]], key: Any, records: list[Any],
                    first: int = 0) -> tuple[int, Exception] | None:
        """Write the rows ``mapper(key, record)`` emits for each of ``records[first:]``.

        Stops at the first record whose mapper raises or that emits something other than
        (key, value) pairs (it writes nothing): returns ``(its index, the error)``; None when
        every record was written. (``shuffle.MapOutputBuffer.map_records``'s contract.)
        """
        for index in range(first, len(records)):
            try:
                pairs = list(mapper(key, records[index]))
            except Exception as err:  # the caller decides: a bad record, or the task fails
                return index, err
            try:
                self.add_records([pairs])
            except shuffle.RejectedRecord as rejected:
                return index, rejected.error
        return None

    def finish(self) -> None:
        """Write what is held (on a clean exit); raising here drops the file too."""

    def commit(self) -> None:
        """Make the finished file appear."""

    def discard(self) -> None:
        """Drop what was written (when the block or ``finish`` raised)."""

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self.finish()
        except BaseException:
            self.discard()
            raise
        self.commit()

    def schema(self) -> dict:
        """What the commit checks is the same in every file of the result."""
        return {}

    def output(self, partition: int | None) -> list[dict]:
        if not self.written:
            return []
        return [{"partition": partition, "uri": self.uri, "records": self.records, "bytes": self.bytes,
                 **self.schema()}]

    # -- shared by the named-column formats
    def _name_columns(self, names: Iterable[str], source: str) -> None:
        self.columns = tuple(names)
        unknown = sorted(set(self.types) - set(self.columns))
        if unknown:
            raise OutputSchemaError(f"{self.where}: output_types names {unknown}, which are not among the "
                                    f"columns {list(self.columns)} ({source})")

    def _row_names(self, key: Any, value: Any, width: int) -> tuple[str, ...]:
        """The columns of a row of ``width`` fields: the file's, fixed by its first row."""
        if self.columns is None:
            self._name_columns(default_columns(key, value), "named as the first row is shaped: "
                                                             "declare output_columns")
        assert self.columns is not None
        if width != len(self.columns):
            raise OutputSchemaError(
                f"{self.where}: the row of key {key!r} has {width} columns, not {len(self.columns)} "
                f"({', '.join(self.columns)}): every row of a {self.format} result has the same columns")
        return self.columns

    def _table_names(self, table: Any) -> tuple[str, ...]:
        if self.columns is None:
            self._name_columns(table.column_names, "the result table's: declare output_columns")
        assert self.columns is not None
        if table.num_columns != len(self.columns):
            raise OutputSchemaError(
                f"{self.where}: the result table has {table.num_columns} columns {table.column_names}, "
                f"not {len(self.columns)} ({', '.join(self.columns)})")
        return self.columns


class _BufferedWriter(ResultWriter):
    """A text format written through a buffer to one object opened on entry."""

    def __enter__(self) -> _BufferedWriter:
        self._ctx = st.for_uri(self.uri).open_write(self.uri)
        self._fh: IO[bytes] = self._ctx.__enter__()
        self.written = True
        return self

    def _write(self, data: bytes | memoryview) -> None:
        """Write any bytes-like object (an Arrow buffer too)."""
        self._fh.write(data)
        self.bytes += len(data)

    def commit(self) -> None:
        self._ctx.__exit__(None, None, None)

    def discard(self) -> None:
        self._ctx.__exit__(RuntimeError, RuntimeError("discarded"), None)
        self.written = False


class CsvWriter(_BufferedWriter):
    """CSV rows without a header; ragged rows are allowed."""

    format = "csv"

    def __init__(self, uri: str, where: str = "", columns: tuple[str, ...] | None = None,
                 types: Mapping[str, Any] | None = None) -> None:
        super().__init__(uri, where, columns, types)
        self._text = io.StringIO()

    def add(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        rows = pairs if type(pairs) is list else list(pairs)
        keys = [key for key, _ in rows]
        values = [value for _, value in rows]
        if _SCALARS.issuperset(map(type, keys)) and _SCALARS.issuperset(map(type, values)):
            self._text.write(columns_text([keys, values]))  # no list to spread over columns
            self.records += len(rows)
        else:
            self.records += write_csv_rows(self._text, [csv_fields(key, value) for key, value in rows])
        if self._text.tell() >= WRITE_BUFFER:
            self._drain()

    def add_records(self, records: list[list[Any]], first: int = 0) -> None:
        for index in range(first, len(records)):
            pairs = records[index]
            try:
                rows = [csv_fields(key, value) for key, value in pairs]
            except (TypeError, ValueError) as err:
                raise shuffle.RejectedRecord(index, shuffle.not_a_pair(pairs) or err) from None
            self.records += write_csv_rows(self._text, rows)
        if self._text.tell() >= WRITE_BUFFER:
            self._drain()

    def add_table(self, table: Any) -> None:
        from lambda_src import arrow_shuffle as ash

        self._drain()
        self._write(ash.table_to_csv(table))
        self.records += table.num_rows

    def _drain(self) -> None:
        data = self._text.getvalue().encode("utf-8")
        self._text.seek(0)
        self._text.truncate()
        self._write(data)

    def finish(self) -> None:
        self._drain()


class JsonlWriter(_BufferedWriter):
    """One JSON object per row; NaN and infinities, which JSON lacks, are refused."""

    format = "jsonl"

    def add(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        lines = []
        for key, value in pairs:
            fields = result_fields(key, value)
            names = self._row_names(key, value, len(fields))
            lines.append(self._line(dict(zip(names, fields, strict=True)), key))
        self._emit(lines)

    def add_table(self, table: Any) -> None:
        names = self._table_names(table)
        rows = table.rename_columns(list(names)).to_pylist()
        self._emit([self._line(row, row[names[0]]) for row in rows])

    def _line(self, row: dict, key: Any) -> str:
        try:
            return json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise OutputSchemaError(f"{self.where}: the row of key {key!r} is not JSON: {err}") from None

    def _emit(self, lines: list[str]) -> None:
        if lines:
            self._write(("\n".join(lines) + "\n").encode("utf-8"))
            self.records += len(lines)

    def schema(self) -> dict:
        # A file without rows (valid JSON Lines) fits any columns.
        return {"columns": list(self.columns)} if self.columns else {}


#: Rows converted to Arrow at a time, and rows per Parquet row group (the last may be smaller).
BATCH_ROWS = 64 * 1024
ROW_GROUP_ROWS = 1024 * 1024
#: The Arrow type of each Python type a Parquet column may hold when its type is inferred.
_INFERRED = {bool: "bool", int: "int64", float: "float64", str: "string"}


class ParquetWriter(ResultWriter):
    """Typed columns: declared (``output_types``) or inferred from the values.

    A column that is None in every row so far has no type yet: its rows wait (as Arrow)
    until a value types it. A file whose types are all declared is written even without
    rows; otherwise a file without rows is not written at all (there is nothing to type it).
    """

    format = "parquet"

    def __init__(self, uri: str, where: str, columns: tuple[str, ...] | None = None,
                 types: Mapping[str, Any] | None = None) -> None:
        try:
            import pyarrow as pa
        except ImportError:
            raise OutputError(f"{where}: --output-format parquet needs pyarrow in the function's "
                              f"environment (a layer, or the code package)") from None
        super().__init__(uri, where, columns, types)
        self._pa = pa
        self._declared = {name: _arrow_type(t, name) for name, t in self.types.items()}
        self._rows: list[list[Any]] = []
        self._keys: list[Any] = []
        #: Converted batches not yet written, each with the key of each row (for errors).
        self._held: list[tuple[Any, Callable[[int], Any]]] = []
        self._held_rows = 0
        self._arrow_schema = None
        self._ctx = None
        self._writer = None

    def add(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        rows, keys = self._rows, self._keys
        for key, value in pairs:
            fields = result_fields(key, value)
            self._row_names(key, value, len(fields))
            rows.append(fields)
            keys.append(key)
            if len(rows) >= BATCH_ROWS:
                self._convert_rows()
                rows, keys = self._rows, self._keys

    def add_table(self, table: Any) -> None:
        pa = self._pa
        self._convert_rows()
        names = self._table_names(table)
        table = table.rename_columns(list(names))
        columns = []
        for name, col in zip(names, table.columns, strict=True):
            want = self._declared.get(name)
            if want is not None and col.type != want:
                try:
                    col = col.cast(want)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    raise OutputSchemaError(f"{self.where}: column {name!r} ({col.type}) does not convert "
                                            f"to its declared type {want}: {err}") from None
            columns.append(col)
        table = pa.table(dict(zip(names, columns, strict=True)))
        first = table.column(0)
        self._hold(table, lambda i: first[i].as_py())

    def _convert_rows(self) -> None:
        if not self._rows:
            return
        assert self.columns is not None
        keys = self._keys
        arrays = [
            self._column([row[c] for row in self._rows], name, keys)
            for c, name in enumerate(self.columns)
        ]
        self._rows, self._keys = [], []
        self._hold(self._pa.table(dict(zip(self.columns, arrays, strict=True))), keys.__getitem__)

    def _column(self, values: list[Any], name: str, keys: list[Any]) -> Any:
        pa = self._pa
        declared = self._declared.get(name)
        if declared is not None:
            try:
                return pa.array(values, type=declared)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
                i, err = _first_failure(values, lambda v: pa.array([v], type=declared))
                raise OutputSchemaError(f"{self.where}: the row of key {keys[i]!r} has {values[i]!r} in column "
                                        f"{name!r}, which is not a {declared}: {err}") from None
        kinds = {type(v) for v in values} - {type(None)}
        if not kinds:
            return pa.nulls(len(values))
        if len(kinds) > 1 or next(iter(kinds)) not in _INFERRED:
            j = next(i for i, v in enumerate(values) if v is not None)
            first_kind = type(values[j])
            if first_kind not in _INFERRED:
                i, why = j, f"holds a {first_kind.__name__}, which an inferred Parquet type cannot hold"
            else:
                i = next(i for i, v in enumerate(values) if v is not None and type(v) is not first_kind)
                why = f"holds {first_kind.__name__} (key {keys[j]!r}) and {type(values[i]).__name__}"
            raise OutputSchemaError(
                f"{self.where}: column {name!r} {why} (the row of key {keys[i]!r}: {values[i]!r}); "
                f"declare its type in the job's output_types, or use --output-format jsonl")
        arrow = pa.type_for_alias(_INFERRED[kinds.pop()])
        try:
            return pa.array(values, type=arrow)
        except (pa.ArrowInvalid, OverflowError) as err:
            i, err = _first_failure(values, lambda v: pa.array([v], type=arrow))
            raise OutputSchemaError(f"{self.where}: the row of key {keys[i]!r} has {values[i]!r} in column "
                                    f"{name!r}, which is not a {arrow}: {err}") from None

    def _hold(self, table: Any, key_of: Callable[[int], Any]) -> None:
        """Keep a converted batch; write the held batches as a row group once typed and large."""
        pa = self._pa
        self._held.append((table, key_of))
        if self._arrow_schema is None:
            merged = self._merged_schema()
            if not any(pa.types.is_null(f.type) for f in merged):
                self._fix_schema(merged)
        else:
            for c, field in enumerate(self._arrow_schema):
                got = table.schema.field(c).type
                if got != field.type and not pa.types.is_null(got):
                    raise self._type_clash(field.name, field.type, None, got, _first_key(table, c, key_of))
            self._held[-1] = (self._cast(table), key_of)
        self._held_rows += table.num_rows
        if self._arrow_schema is not None and self._held_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _merged_schema(self) -> Any:
        """The held batches' schema: each column's type in the batches that type it (the same
        in all of them), or null when none does."""
        pa = self._pa
        fields = []
        for c, name in enumerate(self.columns or ()):
            typed = [(t, k) for t, k in self._held if not pa.types.is_null(t.schema.field(c).type)]
            for table, key_of in typed[1:]:
                want, got = typed[0][0].schema.field(c).type, table.schema.field(c).type
                if got != want:
                    raise self._type_clash(name, want, _first_key(typed[0][0], c, typed[0][1]),
                                           got, _first_key(table, c, key_of))
            fields.append(pa.field(name, typed[0][0].schema.field(c).type if typed else pa.null()))
        return pa.schema(fields)

    def _fix_schema(self, schema: Any) -> None:
        self._arrow_schema = schema
        self._held = [(self._cast(t), k) for t, k in self._held]

    def _type_clash(self, name: str, want: Any, want_key: Any, got: Any, got_key: Any) -> OutputSchemaError:
        earlier = f"{want} (key {want_key!r})" if want_key is not None else f"{want} in earlier rows"
        return OutputSchemaError(
            f"{self.where}: column {name!r} holds {earlier} and {got} (key {got_key!r}); declare its "
            f"type in the job's output_types, or use --output-format jsonl")

    def _cast(self, table: Any) -> Any:
        return table if table.schema == self._arrow_schema else table.cast(self._arrow_schema)

    def _flush(self) -> None:
        if not self._held:
            return
        pa = self._pa
        if self._writer is None:
            import pyarrow.parquet as pq

            self._ctx = st.for_uri(self.uri).open_write(self.uri)
            self._fh = self._ctx.__enter__()
            self._writer = pq.ParquetWriter(self._fh, self._arrow_schema)
            self.written = True
        table = pa.concat_tables([t for t, _ in self._held])
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.records += table.num_rows
        self._held, self._held_rows = [], 0

    def finish(self) -> None:
        pa = self._pa
        self._convert_rows()
        if self._arrow_schema is None and self._held:
            self._fix_schema(self._merged_schema())  # a column None in every row stays null
        if self._arrow_schema is None and self.columns is not None and set(self._declared) >= set(self.columns):
            self._arrow_schema = pa.schema([pa.field(n, self._declared[n]) for n in self.columns])
            self._held = [(self._arrow_schema.empty_table(), lambda i: None)]
        if self._arrow_schema is None:
            return  # no rows, and types that only rows could give: no file
        self._flush()
        self._writer.close()
        self.bytes = self._fh.tell()

    def commit(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)

    def discard(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the file is dropped anyway: free the writer
                self._writer.close()
        if self._ctx is not None:
            self._ctx.__exit__(RuntimeError, RuntimeError("discarded"), None)
        self.written = False

    def schema(self) -> dict:
        return {"columns": list(self.columns or ()), "types": [str(f.type) for f in self._arrow_schema]}


def _arrow_type(declared: Any, name: str) -> Any:
    """A declared column type: a pyarrow type name (``"float64"``) or a ``pyarrow.DataType``."""
    import pyarrow as pa

    if isinstance(declared, pa.DataType):
        return declared
    try:
        return pa.type_for_alias(str(declared))
    except (ValueError, KeyError):
        raise OutputSchemaError(f"output_types gives column {name!r} the type {declared!r}, which is not a "
                                f"pyarrow type name (e.g. string, int64, float64, bool)") from None


def _first_failure(values: list[Any], convert: Callable[[Any], Any]) -> tuple[int, Exception]:
    """The index of the first value that ``convert`` refuses, and why."""
    for i, v in enumerate(values):
        try:
            convert(v)
        except Exception as err:
            return i, err
    raise AssertionError("a column that failed to convert has no failing value")


def _first_key(table: Any, column: int, key_of: Callable[[int], Any]) -> Any:
    """The key of the first row of ``table`` whose ``column`` is not null."""
    import pyarrow.compute as pc

    valid = pc.is_valid(table.column(column))
    return key_of(pc.index(valid, True).as_py())


WRITERS: dict[str, type[ResultWriter]] = {"csv": CsvWriter, "jsonl": JsonlWriter, "parquet": ParquetWriter}


def result_writer(uri: str, fmt: str, job: Any, where: str) -> ResultWriter:
    """The writer of one result file in format ``fmt`` with the columns ``job`` declares."""
    return WRITERS[fmt](uri, where, getattr(job, "output_columns", None), getattr(job, "output_types", None))


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
        write_csv_rows(buf, zip(*texts, strict=True))
        return buf.getvalue()
    lines = texts[0] if len(texts) == 1 else map(",".join, zip(*texts, strict=True))
    return "\n".join(lines) + "\n"
