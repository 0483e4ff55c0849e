"""The ``Join`` step in Arrow: a broadcast hash join or a partitioned one, same result.

Both strategies read each side's splits with the vectorized text reader, apply the side's
``select``, and join on keys that are equal as the key codec encodes them: text, integers
(of any width) and booleans, where a null key matches a null key and keys of different
kinds never match. Joined rows are ``key``, the left side's other columns, then the right
side's, whichever side is broadcast.

- Partitioned (``JobConfig.broadcast`` is None): a map task writes, per partition of the
  join key (the codec's partitioner), one Arrow run holding both sides' rows, tagged by a
  ``side`` column and with the side's columns prefixed ``l.``/``r.``. The final reducer of
  a partition joins its rows and applies ``emit``.
- Broadcast (``JobConfig.broadcast`` names the smaller input): the planner gives every map
  task the whole broadcast input besides its share of the other one. The task reads its
  share's selected rows (in chunks of at most a quarter of its memory: one chunk when the
  ``select`` is selective), then the broadcast input, keeping only the rows whose key is
  among the chunk's (a semi-join: the broadcast input is never held whole), joins, applies
  ``emit`` and writes the pairs as Arrow runs partitioned by their key. The final reducer
  concatenates.

Either way the step's final reducers write the pairs for the next step's mappers: an Arrow
run when that step works on tables (``arrow_steps``), else intermediate lines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lambda_src import arrow_shuffle as ash
from lambda_src import arrow_steps, contract, formats, output, reader, task
from lambda_src import storage as st
from lambda_src.job import Join, Step, TableInput
from lambda_src.mapper import BAD_SAMPLES, RECORD_ERRORS, BadRecords

log = logging.getLogger("lambdamr")

SIDE = "side"
PREFIX = ("l.", "r.")
KEY = ("key.l", "key.r")


# -- the join itself ------------------------------------------------------------------------
def _key_kind(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_null(t):
        return "null"
    raise task.TaskJobError(f"a join key must be text, an integer or a boolean, not {t}")


def _normal(values: Any, kind: str) -> Any:
    """Keys of a kind (``_key_kind``) as one type: string, int64 or bool."""
    target = {"text": pa.string(), "integer": pa.int64(), "boolean": pa.bool_()}.get(kind)
    return values if target is None or values.type == target else pc.cast(values, target)


def _normal_keys(table: pa.Table, kind: str) -> pa.Table:
    return table.set_column(0, "key", _normal(table.column("key"), kind))


def join_tables(left: pa.Table, right: pa.Table) -> pa.Table:
    """Inner join of two tables whose first column is ``key``: keys equal per the key codec.

    Rows are ``key``, the left's other columns, the right's other columns (in no order).
    """
    others = [c for c in left.column_names[1:]], [c for c in right.column_names[1:]]
    clash = set(others[0]) & set(others[1])
    if clash:
        raise task.TaskJobError(f"both sides of the join have the columns {sorted(clash)}; rename one side's "
                                f"in its select")
    kinds = {_key_kind(left.schema.field("key").type), _key_kind(right.schema.field("key").type)} - {"null"}
    columns = ["key", *others[0], *others[1]]
    if len(kinds) > 1:  # 1 and "1" differ as keys: nothing matches, except null with null
        return _null_matches(left, right, columns)
    kind = kinds.pop() if kinds else "null"
    left, right = _normal_keys(left, kind), _normal_keys(right, kind)
    if kind == "null":
        return _null_matches(left, right, columns)
    # Arrow builds its hash table on the right input: build on the smaller side.
    if left.num_rows >= right.num_rows:
        joined = left.join(right, "key", join_type="inner", use_threads=False)
    else:
        joined = right.join(left, "key", join_type="inner", use_threads=False)
    joined = joined.select(columns)
    nulls = _null_matches(left, right, columns)
    return ash.concat([joined, nulls.cast(joined.schema)]) if nulls.num_rows else joined


def _null_matches(left: pa.Table, right: pa.Table, columns: list[str]) -> pa.Table:
    """Every pair of a left and a right row whose keys are both null (the codec's ``null``)."""
    one = "__lambdamr_one"
    crossed = []
    for table in (left, right):
        nulls = table.filter(pc.is_null(table.column("key")))
        crossed.append(nulls.drop_columns(["key"]).append_column(one, pa.array([1] * nulls.num_rows, pa.int8())))
    product = crossed[0].join(crossed[1], one, join_type="inner", use_threads=False).drop_columns([one])
    key_type = left.schema.field("key").type
    if pa.types.is_null(key_type):  # a side without rows in the partition has no key type
        key_type = right.schema.field("key").type
    return product.add_column(0, "key", pa.nulls(product.num_rows, key_type)).select(columns)


def emit_pairs(join: Join, joined: pa.Table) -> pa.Table | None:
    """``emit`` of joined rows, checked; None when there are none."""
    if joined.num_rows == 0:
        return None
    return arrow_steps.pairs_table(join.emit(joined), "the join's emit")


# -- reading a side ----------------------------------------------------------------------------
class _Read:
    """What reading a side's segments came to: input records and bytes."""

    def __init__(self) -> None:
        self.records = 0
        self.size = 0


def _selected_tables(side: TableInput, segments: list[reader.Segment], cfg: contract.JobConfig, bad: BadRecords,
                     read: _Read, semi: pa.Array | None = None) -> Iterator[pa.Table]:
    """A side's rows, a table at a time as read, each selected (and with ``semi``, only the
    rows whose key may equal one of those keys); ``read`` counts the records and bytes. A
    segment the vectorized reader gives up on is read line by line (``TableInput.parse_line``),
    bad records counted in ``bad``."""
    def selected(table: pa.Table) -> pa.Table:
        table = side.select(table) if side.select is not None else table
        if side.key not in table.column_names:
            raise task.TaskJobError(f"the select of join input {side.name!r} dropped the key column {side.key!r}")
        return table if semi is None else _may_match(table, side.key, semi)

    for seg in segments:
        mine: list[pa.Table] = []  # a segment's rows, until it is read whole (it may fall back)
        try:
            nbytes, tables = formats.of(seg).read_tables(seg, side, cfg.max_line_bytes)
            seg_records = 0
            for table in tables:
                seg_records += table.num_rows
                mine.append(selected(table))
        except formats.VectorFallback as why:
            log.info("join input %s: vectorized read stopped (%s); reading %s line by line", side.name, why,
                     seg.describe())
            nbytes, seg_records, lines = _read_lines(side, seg, cfg, bad)
            mine = [selected(t) for t in lines]
        read.size += nbytes
        read.records += seg_records
        yield from mine


def read_side(side: TableInput, segments: list[reader.Segment], cfg: contract.JobConfig,
              bad: BadRecords, semi: pa.Array | None = None) -> tuple[pa.Table, int, int]:
    """A side's rows from its segments, selected, its join column first as ``key``:
    (table, input records, input bytes); see ``_selected_tables``."""
    read = _Read()
    parts = list(_selected_tables(side, segments, cfg, bad, read, semi))
    return _keyed(side, ash.concat(parts) if parts else _empty(side)), read.records, read.size


def _keyed(side: TableInput, table: pa.Table) -> pa.Table:
    """A side's selected rows with its join column first, as ``key``."""
    if side.key not in table.column_names:
        raise task.TaskJobError(f"the select of join input {side.name!r} dropped the key column {side.key!r}")
    rest = [c for c in table.column_names if c != side.key]
    return table.select([side.key, *rest]).rename_columns(["key", *rest])


def semi_keys(keys: pa.ChunkedArray | pa.Array) -> pa.Array | None:
    """The distinct non-null keys of one side, to keep of the other side only the rows that
    may match them (``_may_match``); None when the keys are of a kind that never narrows."""
    kind = _key_kind(keys.type)
    if kind == "null":
        return None
    return pc.unique(pc.drop_null(_normal(keys, kind)))


def _may_match(table: pa.Table, column: str, keys: pa.Array) -> pa.Table:
    """The rows of ``table`` whose ``column`` may join one of ``keys`` (``join_tables``
    decides): equal to one as the codec sees keys, or null (a null matches a null)."""
    values = table.column(column)
    kind = _key_kind(values.type)
    if kind == "null":
        return table
    if kind != _key_kind(keys.type):  # only a null matches a key of another kind
        return table.filter(pc.is_null(values))
    values = _normal(values, kind)
    return table.filter(pc.or_kleene(pc.is_in(values, value_set=keys), pc.is_null(values)))


def _read_lines(side: TableInput, seg: reader.Segment, cfg: contract.JobConfig,
               bad: BadRecords) -> tuple[int, int, list[pa.Table]]:
    """The record path's reading of a side's segment: (bytes, records, [table])."""
    names = list(side.include or side.columns)
    types = [pa.type_for_alias(side.types.get(n, "string")) for n in names]
    rows: list[list] = []
    records = size = 0

    def on_bad(offset: int, raw: Any, reason: str) -> None:
        bad.add(seg.uri, offset, raw, reason)

    store = st.for_uri(seg.uri)
    parse = side.parse_line
    for block in formats.of(seg).read_blocks(store, seg, on_bad, cfg.max_line_bytes, None):
        records += len(block.records)
        size += block.size
        for i, line in enumerate(block.records):
            try:
                row = parse(line)
            except RECORD_ERRORS as err:
                bad.add(seg.uri, block.offset(i), line, f"{type(err).__name__}: {err}")
                continue
            if row is not None:
                rows.append(row)
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    arrays = {}
    for name, values, t in zip(names, columns, types, strict=True):
        try:
            arrays[name] = pa.array(list(values), t)
        except (OverflowError, pa.ArrowException) as err:  # Python reads 10**30; int64 cannot hold it
            raise task.TaskInputError(f"join input {side.name!r}: column {name} of {seg.describe()} holds a "
                                      f"value beyond {t} ({err})") from None
    return size, records, [pa.table(arrays)]


def _empty(side: TableInput) -> pa.Table:
    names = list(side.include or side.columns)
    table = pa.table({n: pa.array([], pa.type_for_alias(side.types.get(n, "string"))) for n in names})
    return side.select(table) if side.select is not None else table


# -- the map task -------------------------------------------------------------------------------
def run_map(ev: task.TaskEvent, join: Join, partitions: int, splits: list[reader.Segment], token: str) -> dict:
    """A join step's map task; see the module docstring."""
    cfg = ev.job
    by_input: dict[str | None, list[reader.Segment]] = {}
    for seg in splits:
        join.side(seg.input)  # a split of another input is a planning error: say so
        by_input.setdefault(seg.input, []).append(seg)
    stats: dict[str, Any] = {"input_records": 0, "input_bytes": 0}
    bad = BadRecords(cfg.max_bad_records, ev.spec.describe())
    if cfg.broadcast is not None:
        small = join.side(cfg.broadcast)
        large = join.right if small is join.left else join.left
        with task.traced("read+map", mode="broadcast join"):
            read = _Read()
            small_bad = BadRecords(cfg.max_bad_records, f"join input {small.name!r}")
            small_counted: tuple[int, int] | None = None  # the broadcast input's records and bytes
            emitted, joined_rows, small_rows = [], 0, 0
            for chunk in _chunks(_selected_tables(large, by_input.get(large.name, []), cfg, bad, read)):
                mine = _keyed(large, chunk)
                # the broadcast input, read for this chunk: only its rows that may join it are kept
                again = BadRecords(cfg.max_bad_records, f"join input {small.name!r}")  # counted the first time
                table, small_records, small_bytes = read_side(
                    small, by_input.get(small.name, []), cfg, small_bad if small_counted is None else again,
                    semi_keys(mine.column("key")))
                small_counted = small_counted or (small_records, small_bytes)
                joined = join_tables(mine, table) if large is join.left else join_tables(table, mine)
                joined_rows += joined.num_rows
                small_rows += table.num_rows
                pairs = emit_pairs(join, joined)
                if pairs is not None:
                    emitted.append(pairs)
            pairs = ash.concat(emitted) if emitted else None
            first = ev.spec.index == 0
            if small_counted is None and first:  # nothing to join, but task 0 counts the broadcast input
                no_keys = pa.array([], pa.null())  # keeps only rows with a null key
                _, *small_counted = read_side(small, by_input.get(small.name, []), cfg, small_bad, no_keys)
        # Every task that has rows to join reads the broadcast input; map task 0 counts it, once.
        small_records, small_bytes = small_counted or (0, 0)
        if first:
            bad.count += small_bad.count
            bad.samples += small_bad.samples
        stats.update(input_records=read.records + small_records * first,
                     input_bytes=read.size + small_bytes * first, broadcast_bytes=small_bytes,
                     broadcast_rows=small_rows, joined_rows=joined_rows, mode="broadcast join")
        parts = ash.partition_table(pairs, partitions) if pairs is not None else [None] * partitions
    else:
        with task.traced("read+map", mode="partitioned join"):
            sides = []
            for n, side in enumerate((join.left, join.right)):
                table, records, size = read_side(side, by_input.get(side.name, []), cfg, bad)
                stats["input_records"] += records
                stats["input_bytes"] += size
                parts = ash.partition_table(table, partitions)  # on "key", then each side's own key column:
                names = [KEY[n], *(PREFIX[n] + c for c in table.column_names[1:])]  # its type may differ
                sides.append([None if t is None else t.rename_columns(names).append_column(
                    SIDE, pa.array([n] * t.num_rows, pa.int8())) for t in parts])
        stats["mode"] = "partitioned join"
        parts = [_combine_sides(left, right) for left, right in zip(*sides, strict=True)]
    with task.traced("write"):
        outputs = arrow_steps.write_runs(ev.spec, token, parts)
    stats.update(output_records=sum(o["records"] for o in outputs), output_bytes=sum(o["bytes"] for o in outputs),
                 bad_records=bad.count)
    if bad.samples:
        stats["bad_samples"] = bad.samples[:BAD_SAMPLES]
    return {"outputs": outputs, "stats": stats}


#: A broadcast join's map task joins the selected rows of its share a chunk at a time, each
#: chunk at most this fraction of the function's memory (the broadcast input, read again for
#: each chunk, has as much): a selective ``select`` makes one chunk of a whole share.
CHUNK_MEMORY_FRACTION = 4


def _chunks(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The tables concatenated into chunks of about ``CHUNK_MEMORY_FRACTION`` of the function's
    memory (the last one smaller); none without rows."""
    try:
        memory_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1536"))
    except ValueError:
        memory_mb = 1536
    budget = memory_mb * 1024 * 1024 // CHUNK_MEMORY_FRACTION
    held: list[pa.Table] = []
    size = 0
    for table in tables:
        if table.num_rows:
            held.append(table)
            size += table.nbytes
        if size >= budget:
            yield ash.concat(held)
            held, size = [], 0
    if held:
        yield ash.concat(held)


def _combine_sides(left: pa.Table | None, right: pa.Table | None) -> pa.Table | None:
    present = [t for t in (left, right) if t is not None]
    if not present:
        return None
    return pa.concat_tables(present, promote_options="default") if len(present) > 1 else present[0]


# -- the reduce task ------------------------------------------------------------------------------
def run_reduce(spec: contract.ReduceTask, cfg: contract.JobConfig, join: Join, inputs: list[str], token: str,
               next_step: Step | Join | None) -> dict:
    """Concatenate a partition's runs; in the final round, join them (partitioned) and write
    the pairs for the next step (``arrow_steps.write_pairs``)."""
    tables = [ash.read_run(uri) for uri in inputs]
    table = ash.concat(tables) if tables else None  # a partition no map task wrote to
    stats: dict[str, Any] = {"input_records": table.num_rows if table is not None else 0}
    if table is None and not spec.final:
        uri = spec.run_uri(token, "run")
        records, size = output.write_lines(uri, b"")
    elif table is None:
        uri, records, size = arrow_steps.write_pairs(spec, token, None, next_step)
    elif not spec.final:
        uri = spec.run_uri(token, "run", arrow=True)
        records, size = ash.write_run(uri, table)
    else:
        if cfg.broadcast is None:
            joined = join_tables(*_sides(table))
            stats["joined_rows"] = joined.num_rows
            pairs = emit_pairs(join, joined)
        else:
            pairs = table
        uri, records, size = arrow_steps.write_pairs(spec, token, pairs, next_step)
    stats.update(output_records=records, output_bytes=size,
                 mode="partitioned join" if cfg.broadcast is None else "broadcast join")
    return {"outputs": [{"partition": spec.partition, "uri": uri, "records": records, "bytes": size}],
            "stats": stats}


def _sides(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """A partitioned run's left and right rows, with their own column names back."""
    out = []
    side = table.column(SIDE)
    for n, prefix in enumerate(PREFIX):
        rows = table.filter(pc.equal(side, n))
        cols = [c for c in table.column_names if c.startswith(prefix)]
        if KEY[n] not in table.column_names:  # no run of this partition had the side's rows
            rows = rows.append_column(KEY[n], pa.nulls(rows.num_rows))
        out.append(rows.select([KEY[n], *cols]).rename_columns(["key", *(c[len(prefix):] for c in cols)]))
    return out[0], out[1]
