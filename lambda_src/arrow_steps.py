"""Later steps on tables (``Step(combine_table=..., reduce_table=...)``): pairs stay Arrow.

A step on tables follows a Join or another step on tables, whose final reduce tasks write
their pairs as an Arrow run (``pairs.arrow``: a ``key`` column, then value columns) instead
of intermediate lines. Its map task concatenates the runs it is given, combines them
(``combine_table``, when the step has one) and writes one Arrow run per partition of the
key (the codec's partitioner, as every shuffle). Its reduce tasks concatenate a partition's
runs: an intermediate round combines them into one run, the final round applies
``reduce_table`` and writes the job's result (last step) or the pairs for the next step.

A run without rows may be an empty file of lines (a partition no task wrote to).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from lambda_src import arrow_shuffle as ash
from lambda_src import contract, output, shuffle, task
from lambda_src import storage as st
from lambda_src.job import Join, Step


def pairs_table(result: Any, what: str) -> pa.Table:
    """A job function's table of pairs, checked: ``key`` first, then one or more value columns."""
    if not isinstance(result, pa.Table) or "key" not in result.column_names or result.num_columns < 2:
        got = result.column_names if isinstance(result, pa.Table) else type(result).__name__
        raise task.TaskJobError(f"{what} must return a pyarrow.Table with a 'key' column and value columns, "
                                f"got {got}")
    return result.select(["key", *(c for c in result.column_names if c != "key")])


def on_tables(step: Step | Join | None) -> bool:
    return isinstance(step, Step) and step.on_tables


def write_pairs(spec: contract.ReduceTask, token: str, pairs: pa.Table | None,
                next_step: Step | Join | None) -> tuple[str, int, int]:
    """A final reduce task's pairs for the next step: an Arrow run when that step works on
    tables, else intermediate lines. (uri, records, bytes)."""
    if pairs is not None and pairs.num_rows and on_tables(next_step):
        uri = spec.run_uri(token, "pairs", arrow=True)
        records, size = ash.write_run(uri, pairs)
        return uri, records, size
    uri = spec.run_uri(token, "pairs")
    records, size = output.write_lines(uri, pair_lines(pairs) if pairs is not None and pairs.num_rows else b"")
    return uri, records, size


def pair_lines(table: pa.Table) -> list[bytes]:
    """The (key, value) pairs of an ``emit`` table as intermediate lines.

    The value is the ``value`` column's when that is the only other column, else the list of
    the other columns' values.
    """
    codec = shuffle.CODEC
    encode_key, encode_value, line = codec.encode_key, codec.encode_value, codec.line
    keys = table.column("key").to_pylist()
    others = [c for c in table.column_names if c != "key"]
    if others == ["value"]:
        values: Any = table.column("value").to_pylist()
    else:
        values = map(list, zip(*(table.column(c).to_pylist() for c in others), strict=True))
    return [line(encode_key(k), encode_value(v)) for k, v in zip(keys, values, strict=True)]


def _read_runs(uris: list[str]) -> tuple[pa.Table | None, int]:
    """The rows of a step's input runs, concatenated (None without any), and their bytes."""
    tables = []
    size = 0
    for uri in uris:
        store = st.for_uri(uri)
        if contract.is_arrow_run(uri):
            table = ash.read_run(uri)
            size += store.size(uri)
            if table.num_rows:
                tables.append(table)
        elif store.size(uri):
            raise task.TaskInputError(f"{uri} holds intermediate lines, but a step on tables reads the Arrow "
                                      f"pairs of a Join or of another step on tables")
    return (ash.concat(tables) if tables else None), size


def run_map(ev: task.TaskEvent, ctx: task.StepContext, token: str) -> dict:
    """A step on tables' map task: its runs, combined, one Arrow run per partition."""
    runs = [ev.inside_job_dir(uri, "an input run") for uri in ev.load_list()]
    with task.traced("read+map", mode="tables"):
        table, size = _read_runs(runs)
        records = table.num_rows if table is not None else 0
        if table is not None and ctx.step.combine_table is not None:
            table = pairs_table(ctx.step.combine_table(table), f"step {ctx.index + 1}'s combine_table")
    with task.traced("write"):
        outputs = write_runs(ev.spec, token, ash.partition_table(table, ctx.partitions) if table is not None else [])
    stats = {"input_records": records, "input_bytes": size, "mode": "tables",
             "output_records": sum(o["records"] for o in outputs), "output_bytes": sum(o["bytes"] for o in outputs)}
    return {"outputs": outputs, "stats": stats}


def write_runs(spec: contract.MapTask, token: str, parts: list[pa.Table | None]) -> list[dict]:
    """A map task's Arrow run of each non-empty partition: its outputs."""
    outputs = []
    for p, part in enumerate(parts):
        if part is not None:
            uri = spec.run_uri(token, p, arrow=True)
            records, size = ash.write_run(uri, part)
            outputs.append({"partition": p, "uri": uri, "records": records, "bytes": size})
    return outputs


def run_reduce(spec: contract.ReduceTask, job: Any, ctx: task.StepContext, inputs: list[str], token: str) -> dict:
    """A step on tables' reduce task: combine a partition's runs (intermediate round), or
    reduce them to the job's result or the next step's pairs (final round)."""
    table, _ = _read_runs(inputs)
    step = ctx.step
    stats: dict[str, Any] = {"input_records": table.num_rows if table is not None else 0, "mode": "tables"}
    if spec.final and ctx.last:
        from lambda_src.reducer import _final_output, _final_result

        uri = spec.part_uri(_final_output(spec))
        with output.result_writer(uri, spec.job.output_format, job, f"partition {spec.partition}") as writer:
            if table is not None:
                writer.add_table(step.reduce_table(table))
        return _final_result(spec, writer, stats)
    if spec.final:
        pairs = None if table is None else pairs_table(step.reduce_table(table),
                                                       f"step {ctx.index + 1}'s reduce_table")
        uri, records, size = write_pairs(spec, token, pairs, ctx.next)
    else:
        if table is not None and step.combine_table is not None:
            table = pairs_table(step.combine_table(table), f"step {ctx.index + 1}'s combine_table")
        if table is not None:
            uri = spec.run_uri(token, "run", arrow=True)
            records, size = ash.write_run(uri, table)
        else:
            uri = spec.run_uri(token, "run")
            records, size = output.write_lines(uri, b"")
    stats.update(output_records=records, output_bytes=size)
    return {"outputs": [{"partition": spec.partition, "uri": uri, "records": records, "bytes": size}],
            "stats": stats}

