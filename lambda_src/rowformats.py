"""Input formats whose records are rows with named columns: JSON Lines, CSV with a header
row, and Parquet. Registered with :mod:`lambda_src.formats` when it is imported.

What a job declares (``lambda_src.job.MapReduceJob``) shapes the rows:

- ``input_columns``: record mode receives each row as a tuple of these columns, in this
  order; without them, a dict of every column (a JSON Lines record: the parsed value as it is).
- ``input_filter``: ``(column, op, value)`` conditions a row must all meet; a null meets
  none (as in SQL). Parquet also skips every row group whose statistics rule all its rows out.
- the vectorized mapper (``map_table``) receives pyarrow tables of ``table_include`` (else
  ``input_columns``, else ``table_columns``, else every column).

JSON Lines splits like text (a JSON value cannot hold a raw newline, so every line start is
a record start); a blank line is no record; a line that does not parse is a bad record with
its byte offset. CSV (RFC 4180: quoted fields may hold the delimiter, quotes and newlines) is
read one whole object per split: a byte in the middle of a CSV file does not tell whether it
lies inside a quoted field, so no split boundary there can be proven safe without reading
the object from its start; and the header row is read once per object, by the split that
holds it all. A line break inside a quoted field reads as ``\n`` whatever its ending, and a
field may be as long as ``max_line_bytes``. Parquet is split by row group: consecutive row groups up to the split size make
one split, so small row groups share a task and a large file makes many.
"""

from __future__ import annotations

import csv
import functools
import json
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lambda_src import formats as fm
from lambda_src import storage as st
from lambda_src.reader import InputError, Segment

#: Rows per record block of a Parquet row group (the record path's unit of work).
PARQUET_BLOCK_ROWS = 64 * 1024

# -- what a job declares ----------------------------------------------------------------------
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}


def filters_of(job: Any) -> list[tuple[str, str, Any]]:
    """The job's ``input_filter``, checked: ``(column, op, value)`` conditions."""
    out = []
    for cond in getattr(job, "input_filter", ()) or ():
        if not (isinstance(cond, tuple | list) and len(cond) == 3 and isinstance(cond[0], str) and cond[1] in _OPS):
            raise TypeError(
                f"{type(job).__name__}.input_filter: {cond!r} is not a (column, op, value) condition "
                f"with op one of {', '.join(_OPS)}"
            )
        column, op, value = cond
        if op in ("in", "not in"):
            if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
                raise TypeError(f"{type(job).__name__}.input_filter: {op!r} takes a list of values, got {value!r}")
            value = tuple(value)
        out.append((column, op, value))
    return out


def check_declaration(job_class: type) -> None:
    """Refuse (TypeError) a job whose column declarations are malformed."""
    columns = job_class.input_columns
    if columns is not None and (
        isinstance(columns, str) or not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns)
    ):
        raise TypeError(f"{job_class.__name__}.input_columns must be a tuple of distinct column names, got {columns!r}")
    filters_of(job_class)


def _matches(get: Callable[[str], Any], filters: list[tuple[str, str, Any]]) -> bool:
    """Whether a row meets every condition (``get(column)`` is its value; a null meets none).

    A value that cannot be compared with the condition's raises ValueError (a bad record)."""
    for column, op, value in filters:
        have = get(column)
        if have is None:
            return False
        try:
            if not _OPS[op](have, value):
                return False
        except TypeError as err:
            raise ValueError(f"input_filter {column} {op} {value!r}: {err}") from None
    return True


def _vector_columns(job: Any) -> list[str] | None:
    columns = job.table_include or job.input_columns or job.table_columns
    return list(columns) if columns else None


def _arrow_mask(table: Any, filters: list[tuple[str, str, Any]]) -> Any:
    """The rows of ``table`` meeting every condition, as a boolean array (nulls: false)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    compare = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
               ">=": pc.greater_equal}
    masks = []
    for column, op, value in filters:
        col = table.column(column)
        if op in compare:
            masks.append(compare[op](col, value))
            continue
        found = pc.is_in(col, value_set=pa.array(list(value), type=col.type))
        masks.append(found if op == "in" else pc.and_(pc.invert(found), pc.is_valid(col)))
    return pc.fill_null(functools.reduce(pc.and_kleene, masks), False)


# -- record blocks ---------------------------------------------------------------------------
@dataclass
class RowBlock:
    """Rows of one block of lines: ``records[i]`` came from line ``lines[i]`` of ``source``."""

    source: Any  # a formats.Block
    records: list[Any] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    unit: ClassVar[str] = "byte"

    @property
    def size(self) -> int:
        return self.source.size

    def offset(self, index: int) -> int:
        return self.source.offset(self.lines[index])


def _shaped(job: Any) -> tuple[list[tuple[str, str, Any]], tuple[str, ...] | None]:
    return filters_of(job), (tuple(job.input_columns) if job.input_columns else None)


# -- JSON Lines ------------------------------------------------------------------------------
class JsonLinesFormat(fm.TextFormat):
    """One JSON value per line (``.jsonl``, ``.ndjson``): split and aligned like text."""

    name = "jsonl"
    extensions = (".jsonl", ".ndjson")

    def read_blocks(self, store, seg, on_bad, max_line_bytes, job):
        filters, columns = _shaped(job)
        decode = json.JSONDecoder().decode
        for block in fm.TextFormat.read_blocks(self, store, seg, on_bad, max_line_bytes, None):
            rows = RowBlock(block)
            for i, line in enumerate(block.records):
                if not line.strip(" \t\r"):  # JSON whitespace only
                    continue
                try:
                    value = decode(line)
                    if columns is not None or filters:
                        if not isinstance(value, dict):
                            raise ValueError(f"a JSON {type(value).__name__}, not an object with columns")
                        if filters and not _matches(value.get, filters):
                            continue
                        if columns is not None:
                            value = tuple(value.get(c) for c in columns)
                except ValueError as err:  # json.JSONDecodeError is a ValueError
                    on_bad(block.offset(i), line, f"invalid JSON Lines record: {err}")
                    continue
                rows.records.append(value)
                rows.lines.append(i)
            yield rows

    def read_tables(self, seg, job, max_line_bytes):
        start, end = fm.aligned_range(st.for_uri(seg.uri), seg, max_line_bytes)
        if end <= start:
            return 0, iter(())
        return end - start, _json_tables(seg, start, end, job, max_line_bytes)


def _json_tables(seg: Segment, start: int, end: int, job: Any, max_line_bytes: int) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.json as pajson

    where = seg.describe()
    filters = filters_of(job)
    columns = _vector_columns(job)
    types = {name: pa.type_for_alias(t) for name, t in job.table_types.items()}
    parse = pajson.ParseOptions(explicit_schema=pa.schema(list(types.items())) if types else None)
    lines = fm.RecordLines(fm.arrow_stream(seg, start, end), where, start == 0, max_line_bytes)
    try:
        with pajson.open_json(pa.PythonFile(lines, "r"), parse_options=parse,
                              read_options=pajson.ReadOptions(block_size=16 * 1024 * 1024, use_threads=False)) as batches:
            for batch in batches:
                table = pa.Table.from_batches([batch])
                yield _shape_table(table, filters, columns, where)
        lines.finish()
    except (pa.ArrowException, StopIteration) as err:  # bad JSON, types: the record path says which line
        if isinstance(err, StopIteration):  # an empty stream
            lines.finish()
            return
        raise fm.VectorFallback(f"{where}: {err}") from None


def _shape_table(table: Any, filters: list, columns: list[str] | None, where: str) -> Any:
    """The rows meeting the filter, of the columns the job reads (missing ones: VectorFallback)."""
    missing = [c for c in (columns or []) + [f[0] for f in filters] if c not in table.column_names]
    if missing:
        raise fm.VectorFallback(f"{where}: no column {', '.join(missing)}")
    if filters:
        table = table.filter(_arrow_mask(table, filters))
    return table.select(columns) if columns else table


# -- CSV with a header row -------------------------------------------------------------------
class CsvFormat(fm.TextFormat):
    """Comma-separated values with a header row and RFC 4180 quoting, one object per split."""

    name = "csv"
    # Not claimed by extension: a .csv is often headerless (read it as text lines, as before).

    def split(self, info, split_size, input_name, compression=None):
        return [Segment(info.uri, 0, info.size, info.size, compression, input_name, info.version, self.name)]

    def can_cut(self, seg):
        return False

    def check(self, seg):
        super().check(seg)
        if seg.start != 0 or seg.end != seg.size:
            raise ValueError(f"a CSV split is a whole object, got {seg.describe()}")

    def read_blocks(self, store, seg, on_bad, max_line_bytes, job):
        filters, columns = _shaped(job)
        pending: list[tuple[Any, int]] = []  # the lines of the record being read: (block, index)

        spoiled: list[str] = []  # why the record being read is bad: a line of it cannot be read

        def bad_row(offset: int, raw: bytes | str, reason: str) -> None:
            if header is None:  # not a row to skip: the next one would be taken for the header
                raise InputError(f"{seg.uri}: the CSV header at byte {offset} cannot be read: {reason}",
                                 uri=seg.uri, offset=offset)
            on_bad(offset, raw, reason)

        def bad_line(offset: int, raw: bytes | str, reason: str) -> None:
            if pending:  # inside a record (a quoted field spans lines): the record is bad, not the line
                spoiled.append(reason)
            else:
                bad_row(offset, raw, reason)

        def lines() -> Iterator[str]:
            for block in fm.TextFormat.read_blocks(self, store, seg, bad_line, max_line_bytes, None):
                # The text reader drops the \r of a \r\n ending; a quoted field keeps it.
                crlf = [p.endswith(b"\r") for p in block.raw.split(b"\n")] if b"\r" in block.raw else None
                for i, line in enumerate(block.records):
                    pending.append((block, i))
                    yield line + ("\r\n" if crlf and crlf[i] else "\n")

        if csv.field_size_limit() < max_line_bytes:  # a field as long as a line may be (process-wide)
            csv.field_size_limit(max_line_bytes)
        rows = csv.reader(lines(), strict=True)
        header: list[str] | None = None
        picks: list[int] | None = None
        out = _CsvBlock()
        while True:
            pending.clear()
            spoiled.clear()
            try:
                fields = next(rows)
            except StopIteration:
                break
            except csv.Error as err:
                if not pending:
                    raise
                block, i = pending[0]
                bad_row(block.offset(i), block.records[i], f"malformed CSV record: {_csv_error(err, max_line_bytes)}")
                continue
            block, i = pending[0]
            if spoiled:
                bad_row(block.offset(i), block.records[i], f"{spoiled[0]}, inside this record")
                continue
            if not fields:  # a blank line (before the header too)
                continue
            # The csv module's limit is process-wide and only ever raised: the line limit is this job's.
            if max(map(len, fields)) > max_line_bytes:
                bad_row(block.offset(i), block.records[i], f"malformed CSV record: {_field_too_long(max_line_bytes)}")
                continue
            if header is None:
                header, picks = self._header(seg, fields, columns, filters)
                continue
            if len(fields) != len(header):
                on_bad(block.offset(i), block.records[i],
                       f"CSV record of {len(fields)} fields, the header has {len(header)}")
                continue
            try:
                if filters and not _matches(dict(zip(header, fields, strict=True)).get, filters):
                    continue
            except ValueError as err:
                on_bad(block.offset(i), block.records[i], str(err))
                continue
            out.add(tuple(fields[p] for p in picks) if picks is not None else dict(zip(header, fields, strict=True)),
                    block, i)
            if len(out.records) >= 10_000:
                yield out
                out = _CsvBlock()
        if out.records:
            yield out

    @staticmethod
    def _header(seg: Segment, fields: list[str], columns: tuple[str, ...] | None,
                filters: list) -> tuple[list[str], list[int] | None]:
        if len(set(fields)) != len(fields):
            dup = sorted({f for f in fields if fields.count(f) > 1})
            raise InputError(f"{seg.uri}: the CSV header names column(s) {', '.join(map(repr, dup))} more than once",
                             uri=seg.uri, offset=0)
        missing = [c for c in (*(columns or ()), *(f[0] for f in filters)) if c not in fields]
        if missing:
            raise InputError(f"{seg.uri}: the CSV header ({', '.join(fields)}) has no column "
                             f"{', '.join(missing)} that the job reads", uri=seg.uri, offset=0)
        return fields, ([fields.index(c) for c in columns] if columns is not None else None)

    def read_tables(self, seg, job, max_line_bytes):
        raise fm.VectorFallback(f"{seg.describe()}: the csv format has no vectorized reader")


def _csv_error(err: csv.Error, max_line_bytes: int) -> str:
    """The csv module's complaint in lambdamr's terms (its advice is for Python file objects)."""
    if str(err).startswith("new-line character seen in unquoted field"):
        return "a \\r in an unquoted field (a line ends at \\n or \\r\\n): quote the field that holds it"
    if str(err).startswith("field larger than field limit"):
        return _field_too_long(max_line_bytes)
    return str(err)


def _field_too_long(max_line_bytes: int) -> str:
    return f"a quoted field longer than the line limit ({max_line_bytes} bytes): raise --max-line-bytes"


@dataclass
class _CsvBlock:
    """CSV records, each with the block and line it starts at (records may span blocks)."""

    records: list[Any] = field(default_factory=list)
    starts: list[tuple[Any, int]] = field(default_factory=list)
    size: int = 0
    unit: ClassVar[str] = "byte"

    def add(self, record: Any, block: Any, line: int) -> None:
        if not self.starts or self.starts[-1][0] is not block:
            self.size += block.size
        self.records.append(record)
        self.starts.append((block, line))

    def offset(self, index: int) -> int:
        block, line = self.starts[index]
        return block.offset(line)


# -- Parquet -----------------------------------------------------------------------------------
class ParquetFormat(fm.InputFormat):
    """Parquet, split by row group; pyarrow reads it (projection, filter, statistics)."""

    name = "parquet"
    extensions = (".parquet", ".pq")
    magic = b"PAR1"

    def split(self, info, split_size, input_name, compression=None):
        if compression:
            raise InputError(f"{info.uri}: a Parquet object compressed as a whole ({compression}) cannot be read: "
                             f"Parquet compresses its pages itself", uri=info.uri)
        if info.size == 0:  # an empty object is empty, whatever its name
            spans = []
        elif info.size <= split_size:
            # One split whatever its row groups: the task reads the footer, the planner need
            # not (a ranged GET per object on S3, and pyarrow's import in the driver).
            return [Segment(info.uri, 0, info.size, info.size, None, input_name, info.version, self.name,
                            (0, None))]
        else:
            meta = _open(info.uri, info.size).metadata
            spans = [_row_group_span(meta.row_group(i)) for i in range(meta.num_row_groups)]
        if not spans:  # a schema and no row group
            return [Segment(info.uri, 0, 0, info.size, None, input_name, info.version, self.name, (0, 0))]
        out: list[Segment] = []
        first = 0
        for i in range(1, len(spans) + 1):
            if i == len(spans) or spans[i][1] - spans[first][0] > split_size:
                out.append(Segment(info.uri, spans[first][0], spans[i - 1][1], info.size, None, input_name,
                                   info.version, self.name, (first, i)))
                first = i
        return out

    def check(self, seg):
        if seg.row_groups is None or seg.compression:
            raise ValueError(f"a Parquet split names its row groups and is not compressed, got {seg.describe()}")

    def read_blocks(self, store, seg, on_bad, max_line_bytes, job):
        filters, columns = _shaped(job)
        for group, rows_before, table, size in _row_groups(seg, list(columns) if columns else None, filters):
            for start in range(0, table.num_rows, PARQUET_BLOCK_ROWS):
                part = table.slice(start, PARQUET_BLOCK_ROWS)
                if columns is not None:
                    records = list(zip(*(part.column(c).to_pylist() for c in columns), strict=True))
                else:
                    records = part.to_pylist()
                yield _ParquetBlock(records, size if start == 0 else 0, rows_before + start, group)
            if not table.num_rows:
                yield _ParquetBlock([], size, rows_before, group)

    def read_tables(self, seg, job, max_line_bytes):
        filters = filters_of(job)
        columns = _vector_columns(job)
        types = {name: t for name, t in job.table_types.items() if columns is None or name in columns}
        return seg.end - seg.start, _parquet_tables(seg, columns, filters, types)


def _parquet_tables(seg: Segment, columns: list[str] | None, filters: list, types: dict[str, str]) -> Iterator[Any]:
    import pyarrow as pa

    for group, _, table, _ in _row_groups(seg, columns, filters):
        for name, alias in types.items():
            if name in table.column_names and str(table.schema.field(name).type) != alias:
                try:
                    table = table.set_column(table.schema.get_field_index(name), name,
                                             table.column(name).cast(pa.type_for_alias(alias)))
                except (pa.ArrowException, ValueError) as err:
                    raise fm.VectorFallback(f"{seg.uri} row group {group}: column {name} as {alias}: {err}") from None
        yield table


@dataclass
class _ParquetBlock:
    records: list[Any]
    size: int
    first_row: int
    group: int
    unit: ClassVar[str] = "row"

    def offset(self, index: int) -> int:
        """The row's number in its object (of the rows the filter kept)."""
        return self.first_row + index


def _row_group_span(rg: Any) -> tuple[int, int]:
    """The byte range of a row group's column chunks."""
    starts, ends = [], []
    for c in range(rg.num_columns):
        col = rg.column(c)
        start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        starts.append(start)
        ends.append(start + col.total_compressed_size)
    return (min(starts), max(ends)) if starts else (0, 0)


class _RangeFile:
    """A seekable read-only file over an S3 object: each read is a ranged GET of its version."""

    def __init__(self, uri: str, size: int) -> None:
        self._store = st.for_uri(uri)
        self._uri = uri
        self._size = size
        self._pos = 0
        self.closed = False

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else self._size + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        data = self._store.read_bytes(self._uri, self._pos, end)
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def _open(uri: str, size: int) -> Any:
    """The object as a ``pyarrow.parquet.ParquetFile``; not Parquet: InputError naming it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{uri}: reading Parquet needs pyarrow, which is not installed", uri=uri) from None
    source = pa.PythonFile(_RangeFile(uri, size), "r") if st.is_s3(uri) else pa.memory_map(st.local_path(uri))
    try:
        return pq.ParquetFile(source, pre_buffer=True)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{uri}: not a readable Parquet file ({err})", uri=uri) from None


def _ruled_out(op: str, value: Any, lo: Any, hi: Any) -> bool:
    """Whether no value from ``lo`` to ``hi`` meets ``op value``."""
    if op == "==":
        return value < lo or value > hi
    if op == "<":
        return lo >= value
    if op == "<=":
        return lo > value
    if op == ">":
        return hi <= value
    if op == ">=":
        return hi < value
    if op == "!=":
        return lo == hi == value
    if op == "in":
        return all(v < lo or v > hi for v in value)
    return lo == hi and lo in value  # not in


def _may_match(rg: Any, index: dict[str, int], filters: list) -> bool:
    """False when the row group's statistics prove that no row meets every condition."""
    for column, op, value in filters:
        c = index.get(column)
        stats = rg.column(c).statistics if c is not None else None
        if stats is None:
            continue
        if stats.has_null_count and stats.null_count == rg.num_rows:
            return False  # all null: a null meets no condition
        if not stats.has_min_max:
            continue
        try:
            ruled_out = _ruled_out(op, value, stats.min, stats.max)
        except TypeError:  # statistics of another type than the value: read the row group
            continue
        if ruled_out:
            return False
    return True


def _row_groups(seg: Segment, columns: list[str] | None, filters: list) -> Iterator[tuple[int, int, Any, int]]:
    """``(row group, rows of the object before it, table, its bytes)`` of the segment's row groups: the
    columns asked for, the rows the filter keeps; a row group the statistics rule out is
    not read (nor yielded)."""
    import pyarrow as pa

    first, stop = seg.row_groups
    if first == stop:
        return
    pf = _open(seg.uri, seg.size)
    meta = pf.metadata
    if stop is None:  # to the last row group (a whole object, planned without its footer)
        stop = meta.num_row_groups
    if stop > meta.num_row_groups or first > stop:
        raise InputError(f"{seg.describe()}: the object has {meta.num_row_groups} row groups", uri=seg.uri)
    names = pf.schema_arrow.names
    wanted = list(dict.fromkeys([*(columns or names), *(f[0] for f in filters)]))
    missing = [c for c in wanted if c not in names]
    if missing:
        raise InputError(f"{seg.uri}: the Parquet schema ({', '.join(names)}) has no column {', '.join(missing)} "
                         f"that the job reads", uri=seg.uri)
    index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    rows_before = sum(meta.row_group(g).num_rows for g in range(first))
    for group in range(first, stop):
        rg = meta.row_group(group)
        if filters and not _may_match(rg, index, filters):
            rows_before += rg.num_rows
            continue
        try:
            table = pf.read_row_group(group, columns=wanted)
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{seg.uri}: row group {group} is corrupt ({err})", uri=seg.uri) from None
        if filters:
            try:
                table = table.filter(_arrow_mask(table, filters))
            except pa.ArrowException as err:
                raise InputError(f"{seg.uri}: row group {group}: the job's input_filter cannot be applied to "
                                 f"its columns ({err})", uri=seg.uri) from None
        start, end = _row_group_span(rg)
        yield group, rows_before, table.select(columns) if columns else table, end - start
        rows_before += rg.num_rows


fm.register(JsonLinesFormat())
fm.register(CsvFormat())
fm.register(ParquetFormat())
