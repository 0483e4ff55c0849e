"""The map task's Lambda entry point: ``lambda_src.mapper.lambda_handler``.

Reads its splits, runs the job's mapper (vectorized over pyarrow tables when the job has a
table mapper and pyarrow is importable, else line by line) and combiner, hash-partitions the
output into sorted runs, writes them, then commits its status record. A map task of a later
step of a multi-step job reads the (key, value) runs of the previous step's final reducers
instead of input splits.
"""

from __future__ import annotations

import codecs
import functools
import logging
from collections.abc import Callable
from typing import Any

from lambda_src import contract, output, reader, shuffle, task
from lambda_src import storage as st
from lambda_src.job import MapReduceJob, Step

log = logging.getLogger("lambdamr")

try:  # in the init phase, so a warm container pays for it once (Lambda's advice)
    import pyarrow.compute
    import pyarrow.csv  # noqa: F401
except ImportError:
    pass

#: Exceptions that mean "this record cannot be parsed" rather than "the job has a bug".
RECORD_ERRORS = (ValueError, IndexError, KeyError, UnicodeError)
BAD_SAMPLES = 5


def lambda_handler(event: dict, context: Any) -> dict:
    return task.run(event, context, contract.MapTask, _run)


class BadRecords:
    """Counts records that cannot be parsed; fails the task past the allowed number."""

    def __init__(self, allowed: int, where: str) -> None:
        self.allowed = allowed
        self.where = where
        self.count = 0
        self.samples: list[dict] = []

    def add(self, uri: str, offset: int, raw: bytes | str, reason: str) -> None:
        self.count += 1
        line = reader.sample(raw)
        if self.count > self.allowed:
            allowed = (
                "no bad records are allowed"
                if self.allowed == 0
                else f"more than the {self.allowed} allowed by max_bad_records"
            )
            raise reader.InputError(
                f"bad record in {uri} at byte {offset}: {reason} (line: {line!r}); "
                f"{allowed} (raise --max-bad-records to skip such records)",
                uri=uri,
                offset=offset,
            )
        if len(self.samples) < BAD_SAMPLES:
            self.samples.append({"uri": uri, "offset": offset, "reason": reason, "line": line})
        log.warning("%s: skipped bad record in %s at byte %d: %s", self.where, uri, offset, reason)


def _run(ev: task.TaskEvent, token: str) -> dict:
    cfg = ev.job
    job = task.load_job_class(cfg.ref)(cfg.params)
    ctx = task.step_context(ev, job)
    where = ev.spec.describe()
    if ctx.index > 0:
        return _run_later_step(ev, ctx, token)
    splits = [reader.Segment.from_dict(s) for s in ev.load_list()]
    reader.check_unchanged(splits)
    if ctx.step.reducer is None:
        return _run_map_only(ev, job, splits, where)

    buffer = None
    mode = "record"
    stats: dict[str, Any] = {}
    if cfg.vectorized and job.has_table_mapper() and _arrow_available():
        try:
            if job.has_table_shuffle():
                return _run_table_shuffle(ev, job, splits, cfg, token)
            buffer = _new_buffer(ctx)
            with task.traced("read+map", mode="vectorized"):
                stats = _map_tables(job, splits, buffer.add, cfg)
            mode = "vectorized"
        except _ArrowFallback as why:
            log.info("%s: vectorized read stopped (%s); re-reading in record mode", where, why)
            if buffer is not None:
                buffer.close()
            buffer = None
    if buffer is None:
        buffer = _new_buffer(ctx)
        bad = BadRecords(cfg.max_bad_records, where)
        with task.traced("read+map", mode="record"):
            stats = _map_records(ctx.step, splits, buffer, cfg, bad)
        stats["bad_records"] = bad.count
        if bad.samples:
            stats["bad_samples"] = bad.samples
    stats["mode"] = mode
    return _write_map_output(ev.spec, buffer, token, stats)


def _write_map_output(spec: contract.MapTask, buffer: shuffle.MapOutputBuffer, token: str, stats: dict) -> dict:
    """Write the buffer's sorted runs, one per non-empty partition."""
    outputs = []
    records_out = 0
    try:
        with task.traced("write"):
            for p, data in enumerate(buffer.finish()):
                if data is None:
                    continue
                uri = spec.run_uri(token, p)
                records, size = output.write_lines(uri, data)
                records_out += records
                outputs.append({"partition": p, "uri": uri, "records": records, "bytes": size})
    finally:
        buffer.close()
    stats.update(
        output_records=records_out,
        output_bytes=sum(o["bytes"] for o in outputs),
        spills=buffer.spills,
        mapper_records=buffer.records_in,
    )
    return {"outputs": outputs, "stats": stats}


def _run_later_step(ev: task.TaskEvent, ctx: task.StepContext, token: str) -> dict:
    """Steps after the first map the (key, value) pairs of the previous step's reducers."""
    runs = [ev.inside_job_dir(uri, "an input run") for uri in ev.load_list()]
    step = ctx.step
    buffer = _new_buffer(ctx)
    add = buffer.add
    map_pairs = step.map_pairs
    records = 0
    input_bytes = 0
    with task.traced("read+map", mode="pairs"):
        if step.mapper_init is not None:
            step.mapper_init()
        for uri in runs:
            store = st.for_uri(uri)
            for line in shuffle.iter_lines(store.iter_range(uri)):
                try:
                    tab = line.index(shuffle.TAB)
                    key = shuffle.decode(line[:tab])
                    value = shuffle.decode(line[tab + 1:])
                except ValueError as err:
                    raise task.TaskInputError(
                        f"record {records + 1} of {uri} is not an intermediate (key, value) line: "
                        f"{err} (line: {reader.sample(line)!r})"
                    ) from None
                records += 1
                input_bytes += len(line)
                try:
                    pairs = map_pairs(key, value)
                    if type(pairs) is not list:
                        pairs = list(pairs)
                    if pairs:
                        add(pairs)
                except Exception as err:
                    raise _step_error(ctx, err, f"on the pair with key {reader.sample(line[:tab])!r} from {uri}") from err
        if step.mapper_final is not None:
            try:
                add(list(step.mapper_final()))
            except Exception as err:
                raise _step_error(ctx, err, "in mapper_final") from err
    stats = {"input_records": records, "input_bytes": input_bytes, "mode": "record"}
    return _write_map_output(ev.spec, buffer, token, stats)


def _step_error(ctx: task.StepContext, err: Exception, where: str) -> task.TaskError:
    """A later step's mapper failed: bad data and job bugs fail at once, the rest may be retried."""
    return task.failure_class(err)(
        f"the step {ctx.index + 1} mapper raised {type(err).__name__}: {err} {where}"
    )


def _new_buffer(ctx: task.StepContext) -> shuffle.MapOutputBuffer:
    return shuffle.MapOutputBuffer(ctx.partitions, ctx.step.combiner, spill_dir=shuffle.spill_dir())


def _map_records(
    step: Step,
    splits: list[reader.Segment],
    buffer: shuffle.MapOutputBuffer,
    cfg: task.JobConfig,
    bad: BadRecords,
) -> dict:
    mapper = step.mapper if step.mapper is not None else step.map_pairs
    add = buffer.add
    records = 0
    input_bytes = 0
    if step.mapper_init is not None:
        step.mapper_init()
    for seg in splits:
        key = seg.input

        def on_bad_bytes(offset: int, raw: bytes, err: UnicodeDecodeError, seg=seg) -> None:
            bad.add(seg.uri, offset, raw, f"invalid UTF-8 ({err.reason} at byte {offset + err.start})")

        store = st.for_uri(seg.uri)
        for block in reader.iter_blocks(store, seg, on_bad_bytes, cfg.max_line_bytes):
            lines = block.lines
            records += len(lines)
            input_bytes += len(block.raw)
            i = 0
            n = len(lines)
            while i < n:
                try:
                    for i in range(i, n):  # noqa: B020 - resumes after a skipped record
                        pairs = mapper(key, lines[i])
                        # Materialised before adding, so a record that fails midway adds nothing.
                        if type(pairs) is not list:
                            pairs = list(pairs)
                        if pairs:  # most lines of a filtering job emit nothing
                            add(pairs)
                    i = n
                except RECORD_ERRORS as err:
                    bad.add(seg.uri, block.offset(i), lines[i], f"{type(err).__name__}: {err}")
                    i += 1
                except Exception as err:  # a job bug no retry can fix fails at once
                    raise task.failure_class(err)(
                        f"the mapper raised {type(err).__name__}: {err} on the line at byte "
                        f"{block.offset(i)} of {seg.uri} (line: {reader.sample(lines[i])!r})"
                    ) from err
    if step.mapper_final is not None:
        add(list(step.mapper_final()))
    return {"input_records": records, "input_bytes": input_bytes}


class _ArrowFallback(Exception):
    """The vectorized reader could not parse the input; the record path reports why."""


def _arrow_available() -> bool:
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def _arrow_stream(seg: reader.Segment, start: int, end: int):
    """The bytes ``[start, end)`` of the segment's object (decompressed), as a readable file."""
    import pyarrow as pa

    if st.is_s3(seg.uri):
        store = st.for_uri(seg.uri)
        if seg.compression:
            return pa.CompressedInputStream(pa.PythonFile(store.open_read(seg.uri), "r"), "gzip")
        return _S3Range(store, seg.uri, start, end)
    path = st.local_path(seg.uri)
    source = pa.memory_map(path)
    if seg.compression:
        return pa.CompressedInputStream(source, "gzip")
    return source.get_stream(start, end - start)


class _S3Range:
    """A minimal read-only file over a byte range of an S3 object."""

    def __init__(self, store: st.Storage, uri: str, start: int, end: int) -> None:
        self._chunks = store.iter_range(uri, start, end, chunk_size=4 * 1024 * 1024)
        self._buf = b""
        self.closed = False

    def read(self, size: int | None = -1) -> bytes:
        while size is None or size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        if size is None or size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class _RecordLines:
    r"""The bytes Arrow parses, stopped (``_ArrowFallback``) where Arrow would not see the
    lines the record path sees.

    Arrow's CSV reader ends a row at a lone ``\r`` (the record path splits lines at ``\n``
    only and drops one ``\r`` before it), skips a UTF-8 BOM at the start of any stream (the
    record path only at byte 0 of an object: a later split that starts with one keeps it)
    and checks UTF-8 only in the columns it converts (the record path decodes whole lines).
    """

    def __init__(self, raw: Any, where: str, at_object_start: bool) -> None:
        self._raw = raw
        self._where = where
        self._head = b""  # the first bytes, while they may still be a BOM
        self._cr = False  # the last byte read was \r
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._utf8_pending = False  # the decoder holds the start of a multi-byte character
        self._at_object_start = at_object_start
        self.closed = False

    def finish(self) -> None:
        """Check the end of the stream, which the CSV reader may not have asked for."""
        while self.read(1 << 20):
            pass

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size if size >= 0 else None)
        if len(self._head) < len(reader.BOM):
            self._head += chunk[: len(reader.BOM) - len(self._head)]
            if self._head == reader.BOM and not self._at_object_start:
                raise _ArrowFallback(f"{self._where}: the split starts with a UTF-8 BOM")
        if self._lone_cr(chunk):
            raise _ArrowFallback(f"{self._where}: a \\r that does not end a line")
        self._cr = chunk.endswith(b"\r")
        if self._utf8_pending or not chunk.isascii():
            try:
                self._utf8.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                raise _ArrowFallback(f"{self._where}: invalid UTF-8 ({err.reason})") from None
            self._utf8_pending = bool(self._utf8.getstate()[0])
        return chunk

    def _lone_cr(self, chunk: bytes) -> bool:
        """A \\r not followed by \\n in the stream so far (the end of the stream included)."""
        if self._cr and not chunk.startswith(b"\n"):
            return True
        if b"\r" not in chunk:
            return False
        return chunk.count(b"\r") != chunk.count(b"\r\n") + chunk.endswith(b"\r")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        self.closed = True


def _map_tables(
    job: MapReduceJob,
    splits: list[reader.Segment],
    sink: Callable[[Any], None],
    cfg: task.JobConfig,
) -> dict:
    """Feed ``map_table`` with the splits' rows, batch by batch; its results go to ``sink``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    columns = list(job.table_columns or ())
    include = list(job.table_include or columns)
    read_options = pacsv.ReadOptions(
        column_names=columns, block_size=16 * 1024 * 1024, use_threads=False
    )
    parse_options = pacsv.ParseOptions(
        delimiter=job.table_delimiter,
        quote_char=False,
        double_quote=False,
        escape_char=False,
        newlines_in_values=False,
        # Arrow reads an empty line as a row of empty fields, which a number column refuses
        # (and as_table below catches): the task falls back, and the record path decides.
        ignore_empty_lines=False,
    )
    types = {name: pa.type_for_alias(job.table_types.get(name, "string")) for name in include}
    # Arrow reads "0x10" as the integer 16; the record mapper's int() refuses it. Integer
    # columns are read as text and converted here, where only digits (and a "-") are accepted.
    integers = [name for name, t in types.items() if pa.types.is_integer(t)]
    floats = [name for name, t in types.items() if pa.types.is_floating(t)]
    texts = [name for name, t in types.items() if t in (pa.string(), pa.large_string(), pa.binary())]
    only_text = len(texts) == len(types)
    convert_options = pacsv.ConvertOptions(
        include_columns=include,
        column_types={name: pa.string() if name in integers else t for name, t in types.items()},
        # No value is a null: the record mapper refuses "", "NULL", "N/A", ... in a number
        # column (the task falls back to it) and keeps them as text in a string column.
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        check_utf8=False,  # _RecordLines checks every byte, not only the converted columns
    )

    def as_table(batch: Any, where: str) -> Any:
        table = pa.Table.from_batches([batch])
        for name in integers:
            text = table.column(name)
            if not pc.all(pc.ascii_is_decimal(text)).as_py():
                unsigned = pc.if_else(pc.starts_with(text, "-"), pc.utf8_slice_codeunits(text, 1), text)
                if not pc.all(pc.ascii_is_decimal(unsigned)).as_py():
                    raise _ArrowFallback(f"{where}: column {name} holds a value other than an integer")
            table = table.set_column(table.schema.get_field_index(name), name, pc.cast(text, types[name]))
        for name in floats:
            # Arrow also reads "nan(...)", which float() refuses: any NaN goes to the record path.
            if pc.any(pc.is_nan(table.column(name))).as_py():
                raise _ArrowFallback(f"{where}: column {name} holds a NaN")
        if only_text:  # nothing refuses an empty line's row: find it (or a line of empty fields)
            blank = functools.reduce(pc.and_, [pc.equal(table.column(name), "") for name in texts])
            if pc.any(blank).as_py():
                raise _ArrowFallback(f"{where}: an empty line")
        return table

    records = 0
    input_bytes = 0
    for seg in splits:
        start, end = reader.aligned_range(st.for_uri(seg.uri), seg, cfg.max_line_bytes)
        if end <= start:
            continue
        input_bytes += end - start
        where = seg.describe()
        try:
            lines = _RecordLines(_arrow_stream(seg, start, end), where, start == 0)
            if st.is_s3(seg.uri) or seg.compression:  # checked as Arrow reads: one download
                source = pa.PythonFile(lines, "r")
            else:  # checked first: Arrow reads a mapped file faster than through Python
                lines.finish()
                source = _arrow_stream(seg, start, end)
            with pacsv.open_csv(
                source,
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            ) as batches:
                for batch in batches:
                    records += batch.num_rows
                    sink(job.map_table(as_table(batch, where)))
                lines.finish()
        except pa.ArrowException as err:
            raise _ArrowFallback(f"{where}: {err}") from None
        except StopIteration:  # an empty stream
            lines.finish()
    return {"input_records": records, "input_bytes": input_bytes, "bad_records": 0}


#: Partial tables are combined whenever this many rows are held.
COMBINE_ROWS = 2_000_000


def _run_table_shuffle(
    ev: task.TaskEvent,
    job: MapReduceJob,
    splits: list[reader.Segment],
    cfg: task.JobConfig,
    token: str,
) -> dict:
    """Map and combine in Arrow, then write one Arrow run per non-empty partition."""
    from lambda_src import arrow_shuffle as ash

    held: list[Any] = []
    rows = [0]

    def sink(result: Any) -> None:
        table = ash.check_table(result, "map_table")
        held.append(table)
        rows[0] += table.num_rows
        if rows[0] >= COMBINE_ROWS and len(held) > 1:
            combined = ash.check_table(job.combine_table(ash.concat(held)), "combine_table")
            held[:] = [combined]
            rows[0] = combined.num_rows

    with task.traced("read+map", mode="vectorized"):
        stats = _map_tables(job, splits, sink, cfg)
    outputs = []
    if held:
        combined = ash.check_table(job.combine_table(ash.concat(held)), "combine_table")
        for p, part in enumerate(ash.partition_table(combined, cfg.partitions)):
            if part is None:
                continue
            uri = ev.spec.run_uri(token, p, arrow=True)
            records, size = ash.write_run(uri, part)
            outputs.append({"partition": p, "uri": uri, "records": records, "bytes": size})
    stats.update(
        mode="vectorized",
        output_records=sum(o["records"] for o in outputs),
        output_bytes=sum(o["bytes"] for o in outputs),
    )
    return {"outputs": outputs, "stats": stats}


def _run_map_only(
    ev: task.TaskEvent,
    job: MapReduceJob,
    splits: list[reader.Segment],
    where: str,
) -> dict:
    """A job without a reducer: the mapper's pairs, in input order, are the result."""
    if ev.spec.output is None:
        raise task.EventError("a map-only task needs the event field 'output'")
    uri = ev.spec.map_only_part_uri(ev.spec.output)
    cfg = ev.job
    if cfg.vectorized and job.has_table_mapper() and _arrow_available():
        try:
            return _run_map_only_tables(job, splits, cfg, uri)
        except _ArrowFallback as why:
            log.info("%s: vectorized read stopped (%s); re-reading in record mode", where, why)
    bad = BadRecords(ev.job.max_bad_records, where)
    with output.CsvWriter(uri) as writer:
        stats = _map_records(job.steps()[0], splits, writer, ev.job, bad)  # type: ignore[arg-type]
    stats.update(
        mode="record",
        bad_records=bad.count,
        output_records=writer.records,
        output_bytes=writer.bytes,
    )
    if bad.samples:
        stats["bad_samples"] = bad.samples
    outputs = [{"partition": None, "uri": uri, "records": writer.records, "bytes": writer.bytes}]
    return {"outputs": outputs, "stats": stats}


def _run_map_only_tables(job: MapReduceJob, splits: list[reader.Segment], cfg: task.JobConfig, uri: str) -> dict:
    """A map-only job in Arrow: ``map_table``'s rows, in input order, become the CSV part."""
    from lambda_src import arrow_shuffle as ash

    tables: list[Any] = []
    with task.traced("read+map", mode="vectorized"):
        stats = _map_tables(job, splits, lambda t: tables.append(ash.check_table(t, "map_table")), cfg)
    data = ash.table_to_csv(ash.concat(tables)) if tables else b""
    with task.traced("write"):
        st.for_uri(uri).write_bytes(uri, data)
    records = sum(t.num_rows for t in tables)
    stats.update(mode="vectorized", output_records=records, output_bytes=len(data))
    return {"outputs": [{"partition": None, "uri": uri, "records": records, "bytes": len(data)}], "stats": stats}
