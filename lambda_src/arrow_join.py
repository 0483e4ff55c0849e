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
  task the whole broadcast input besides its share of the other one; the task joins in
  memory (the broadcast side is cached across a warm worker's tasks), applies ``emit`` and
  writes the pairs as Arrow runs partitioned by their key. The final reducer concatenates.

Either way the step's final reducers write the pairs for the next step's mappers: an Arrow
run when that step works on tables (``arrow_steps``), else intermediate lines.
"""

from __future__ import annotations

import logging
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
#: The broadcast side of the last join this process ran: its identity, and what read_side gave.
_broadcast_cache: dict[str, Any] = {}


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


def _normal_keys(table: pa.Table, kind: str) -> pa.Table:
    target = {"text": pa.string(), "integer": pa.int64(), "boolean": pa.bool_()}.get(kind)
    col = table.column("key")
    if target is None or col.type == target:
        return table
    return table.set_column(0, "key", pc.cast(col, target))


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
def read_side(side: TableInput, segments: list[reader.Segment], cfg: contract.JobConfig,
              bad: BadRecords) -> tuple[pa.Table, int, int]:
    """A side's rows from its segments, selected, its join column first as ``key``:
    (table, input records, input bytes). A segment the vectorized reader gives up on is
    read line by line (``TableInput.parse_line``), bad records counted in ``bad``."""
    def selected(table: pa.Table) -> pa.Table:
        return side.select(table) if side.select is not None else table

    parts: list[pa.Table] = []
    records = size = 0
    for seg in segments:
        mine: list[pa.Table] = []  # selected as read: a segment's unselected rows are never held at once
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
        size += nbytes
        records += seg_records
        parts.extend(mine)
    table = ash.concat(parts) if parts else _empty(side)
    if side.key not in table.column_names:
        raise task.TaskJobError(f"the select of join input {side.name!r} dropped the key column {side.key!r}")
    rest = [c for c in table.column_names if c != side.key]
    table = table.select([side.key, *rest]).rename_columns(["key", *rest])
    return table, records, size


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


def _broadcast_side(side: TableInput, segments: list[reader.Segment],
                    cfg: contract.JobConfig) -> tuple[tuple[pa.Table, int, int, BadRecords], bool]:
    """The broadcast side (as ``read_side``), read once per warm worker for the same job and
    segments; and whether it came from that cache."""
    identity = repr((cfg.ref, sorted(cfg.params.items()), side.name,
                     [(s.uri, s.start, s.end, s.version) for s in segments]))
    if _broadcast_cache.get("identity") == identity:
        return _broadcast_cache["side"], True
    _broadcast_cache.clear()  # one at a time: the old table's memory goes first
    bad = BadRecords(cfg.max_bad_records, f"join input {side.name!r}")
    table, records, size = read_side(side, segments, cfg, bad)
    read = (table, records, size, bad)
    _broadcast_cache.update(identity=identity, side=read)
    return read, False


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
            mine, records, size = read_side(large, by_input.get(large.name, []), cfg, bad)
            (table, small_records, small_bytes, small_bad), cached = _broadcast_side(
                small, by_input.get(small.name, []), cfg)
            joined = join_tables(mine, table) if large is join.left else join_tables(table, mine)
            pairs = emit_pairs(join, joined)
        # Every task reads the broadcast input (or has it cached); map task 0 counts it, once.
        first = ev.spec.index == 0
        if first:
            bad.count += small_bad.count
            bad.samples += small_bad.samples
        stats.update(input_records=records + small_records * first, input_bytes=size + small_bytes * first,
                     broadcast_bytes=small_bytes, broadcast_cached=cached, broadcast_rows=table.num_rows,
                     joined_rows=joined.num_rows, mode="broadcast join")
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
    outputs = []
    with task.traced("write"):
        for p, part in enumerate(parts):
            if part is None:
                continue
            uri = ev.spec.run_uri(token, p, arrow=True)
            records, size = ash.write_run(uri, part)
            outputs.append({"partition": p, "uri": uri, "records": records, "bytes": size})
    stats.update(output_records=sum(o["records"] for o in outputs), output_bytes=sum(o["bytes"] for o in outputs),
                 bad_records=bad.count)
    if bad.samples:
        stats["bad_samples"] = bad.samples[:BAD_SAMPLES]
    return {"outputs": outputs, "stats": stats}


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
