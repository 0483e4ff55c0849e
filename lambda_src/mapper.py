"""The map task's Lambda entry point: ``lambda_src.mapper.lambda_handler``.

Reads its splits, runs the job's mapper (vectorized over pyarrow tables when the job has a
table mapper and pyarrow is importable, else line by line) and combiner, hash-partitions the
output into sorted runs, writes them, then commits its status record. A map task of a later
step of a multi-step job reads the (key, value) runs of the previous step's final reducers
instead of input splits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from lambda_src import contract, formats, output, reader, shuffle, task
from lambda_src import storage as st
from lambda_src.job import Join, MapReduceJob, Step

log = logging.getLogger("lambdamr")

if os.environ.get(contract.ARROW_AT_INIT_ENV) != "0":  # see contract.ARROW_AT_INIT_ENV
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


def _run(ev: task.TaskEvent, token: str) -> dict:
    with shuffle.bulk_gc():
        return _run_task(ev, token)


class BadRecords:
    """Counts records that cannot be parsed; fails the task past the allowed number."""

    def __init__(self, allowed: int, where: str) -> None:
        self.allowed = allowed
        self.where = where
        self.count = 0
        self.samples: list[dict] = []

    def add(self, uri: str, offset: int, raw: Any, reason: str, unit: str = "byte") -> None:
        """A bad record at ``offset`` (``unit``: a byte, or a row of a format of rows)."""
        self.count += 1
        line = reader.sample(raw)
        if self.count > self.allowed:
            allowed = (
                "no bad records are allowed"
                if self.allowed == 0
                else f"more than the {self.allowed} allowed by max_bad_records"
            )
            raise reader.InputError(
                f"bad record in {uri} at {unit} {offset}: {reason} (line: {line!r}); "
                f"{allowed} (raise --max-bad-records to skip such records)",
                uri=uri,
                offset=offset,
            )
        if len(self.samples) < BAD_SAMPLES:
            self.samples.append({"uri": uri, "offset": offset, "reason": reason, "line": line,
                                 **({"unit": unit} if unit != "byte" else {})})
        log.warning("%s: skipped bad record in %s at %s %d: %s", self.where, uri, unit, offset, reason)


def _run_task(ev: task.TaskEvent, token: str) -> dict:
    cfg = ev.job
    job = task.load_job_class(cfg.ref)(cfg.params)
    ctx = task.step_context(ev, job)
    where = ev.spec.describe()
    if ctx.index > 0:
        if isinstance(ctx.step, Step) and ctx.step.on_tables:
            from lambda_src import arrow_steps

            return arrow_steps.run_map(ev, ctx, token)
        return _run_later_step(ev, ctx, token)
    splits = [reader.Segment.from_dict(s) for s in ev.load_list()]
    reader.check_unchanged(splits)
    if isinstance(ctx.step, Join):
        from lambda_src import arrow_join

        return arrow_join.run_map(ev, ctx.step, ctx.partitions, splits, token)
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
        except formats.VectorFallback as why:
            log.info("%s: vectorized read stopped (%s); re-reading in record mode", where, why)
            if buffer is not None:
                buffer.close()
            buffer = None
    if buffer is None:
        buffer = _new_buffer(ctx)
        bad = BadRecords(cfg.max_bad_records, where)
        with task.traced("read+map", mode="record"):
            stats = _map_records(job, ctx.step, splits, buffer, cfg, bad)
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
        codec = shuffle.CODEC
        for uri in runs:
            store = st.for_uri(uri)
            for line in codec.iter_lines(store.iter_range(uri)):
                try:
                    key, value = codec.decode_pair(line)
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
                    raise _step_error(ctx, err, f"on the pair with key {reader.sample(codec.key_of(line))!r} from {uri}") from err
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
    job: MapReduceJob,
    step: Step,
    splits: list[reader.Segment],
    buffer: shuffle.MapOutputBuffer | output.ResultWriter,
    cfg: task.JobConfig,
    bad: BadRecords,
) -> dict:
    """Run the mapper over every line of the splits, block by block (``buffer.map_records``).

    A line whose mapper fails, or that emits something other than (key, value) pairs, adds
    nothing; it is handled at its line (a bad record, or the task fails), in line order,
    after the lines before it were added.
    """
    mapper = step.mapper if step.mapper is not None else step.map_pairs
    records = 0
    input_bytes = 0
    if step.mapper_init is not None:
        step.mapper_init()
    for seg in splits:
        key = seg.input

        def on_bad(offset: int, raw: Any, reason: str, seg=seg) -> None:
            bad.add(seg.uri, offset, raw, reason)

        def failed(block: formats.Block, i: int, err: Exception, seg=seg) -> None:
            """Line ``i`` of ``block`` raised ``err`` (in its mapper, or as its pairs were added)."""
            unit = block.unit
            if isinstance(err, RECORD_ERRORS):
                bad.add(seg.uri, block.offset(i), block.records[i], f"{type(err).__name__}: {err}", unit)
                return
            # a job bug no retry can fix fails at once
            raise task.failure_class(err)(
                f"the mapper raised {type(err).__name__}: {err} on the "
                f"{'line' if unit == 'byte' else 'record'} at {unit} {block.offset(i)} of {seg.uri} "
                f"(line: {reader.sample(block.records[i])!r})"
            ) from err

        store = st.for_uri(seg.uri)
        for block in formats.of(seg).read_blocks(store, seg, on_bad, cfg.max_line_bytes, job):
            records += len(block.records)
            input_bytes += block.size
            first = 0
            while (failure := buffer.map_records(mapper, key, block.records, first)) is not None:
                index, err = failure
                failed(block, index, err)
                first = index + 1
    if step.mapper_final is not None:
        buffer.add(list(step.mapper_final()))
    return {"input_records": records, "input_bytes": input_bytes}


def _arrow_available() -> bool:
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def _map_tables(
    job: MapReduceJob,
    splits: list[reader.Segment],
    sink: Callable[[Any], None],
    cfg: task.JobConfig,
) -> dict:
    """Feed ``map_table`` with the splits' rows, table by table; its results go to ``sink``."""
    import pyarrow as pa

    records = 0
    input_bytes = 0
    for seg in splits:
        size, tables = formats.of(seg).read_tables(seg, job, cfg.max_line_bytes)
        input_bytes += size
        try:
            for table in tables:
                records += table.num_rows
                sink(job.map_table(table))
        except pa.ArrowException as err:
            raise formats.VectorFallback(f"{seg.describe()}: {err}") from None
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
        # Each partition in key blocks, for its reduce task to aggregate one block at a time:
        # as many as the partition's rows from every map task like this one call for. Their
        # CRC-32s are the partitions' too; with one partition, blocks only where those are cheap.
        blocks = ash.block_count(combined.num_rows * max(1, ev.spec.count) // cfg.partitions)
        if blocks > 1 and cfg.partitions == 1 and not ash.crcs_in_arrow(combined.column("key")):
            blocks = 1
        for p, part in enumerate(ash.partition_blocks(combined, cfg.partitions, blocks)):
            if part is None:
                continue
            uri = ev.spec.run_uri(token, p, arrow=True)
            records, size = ash.write_run(uri, *part)
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
            return _run_map_only_tables(job, splits, cfg, uri, where)
        except formats.VectorFallback as why:
            log.info("%s: vectorized read stopped (%s); re-reading in record mode", where, why)
    bad = BadRecords(ev.job.max_bad_records, where)
    with output.result_writer(uri, cfg.output_format, job, where) as writer:
        stats = _map_records(job, job.steps()[0], splits, writer, ev.job, bad)  # type: ignore[arg-type]
    stats.update(
        mode="record",
        bad_records=bad.count,
        output_records=writer.records,
        output_bytes=writer.bytes,
    )
    if bad.samples:
        stats["bad_samples"] = bad.samples
    return {"outputs": writer.output(None), "stats": stats}


def _run_map_only_tables(job: MapReduceJob, splits: list[reader.Segment], cfg: task.JobConfig, uri: str,
                         where: str) -> dict:
    """A map-only job in Arrow: ``map_table``'s rows, in input order, become the result file."""
    from lambda_src import arrow_shuffle as ash

    tables: list[Any] = []
    with task.traced("read+map", mode="vectorized"):
        stats = _map_tables(job, splits, lambda t: tables.append(ash.check_table(t, "map_table")), cfg)
    with task.traced("write"), output.result_writer(uri, cfg.output_format, job, where) as writer:
        if tables:
            writer.add_table(ash.concat(tables))
    stats.update(mode="vectorized", output_records=writer.records, output_bytes=writer.bytes)
    return {"outputs": writer.output(None), "stats": stats}
