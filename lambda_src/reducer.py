"""The reduce task's Lambda entry point: ``lambda_src.reducer.lambda_handler``.

One reduce task merges up to F sorted runs of one partition. In an intermediate round it
writes one merged run (combined, when the job has a combiner); in the final round it runs the
job's reducer once per key and writes the partition's ``part-NNNNN`` result file, or, in a step
of a multi-step job that is not the last, the reducer's (key, value) pairs as a run that the
next step's mappers read. The part file is in the job's output format (``output``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lambda_src import contract, output, shuffle, task
from lambda_src import storage as st
from lambda_src.job import Join, Pair, Reduce, Step

READ_CHUNK = 1024 * 1024
#: Total read-ahead across all the runs one reduce task merges.
MERGE_BUFFER = 64 * 1024 * 1024
#: Runs of at most this many bytes in all are read whole and merged by one sort.
IN_MEMORY_MERGE = 64 * 1024 * 1024


def lambda_handler(event: dict, context: Any) -> dict:
    in_memory = in_memory_merge_bytes(context)

    def run(ev: task.TaskEvent, token: str) -> dict:
        with shuffle.bulk_gc():
            return _run_task(ev, token, in_memory)

    return task.run(event, context, contract.ReduceTask, run)


def in_memory_merge_bytes(context: Any) -> int:
    """The most run bytes merged in memory: :data:`IN_MEMORY_MERGE`, and at most an eighth
    of the function's memory (held as one bytes object a line, runs take about four times
    their size)."""
    try:
        memory_mb = int(getattr(context, "memory_limit_in_mb", 0))
    except (TypeError, ValueError):
        memory_mb = 0
    if memory_mb <= 0:
        return IN_MEMORY_MERGE
    return min(IN_MEMORY_MERGE, memory_mb * 1024 * 1024 // 8)


def _run_task(ev: task.TaskEvent, token: str, in_memory: int) -> dict:
    spec = ev.spec
    inputs = [ev.inside_job_dir(uri, "a reduce input") for uri in ev.load_list()]
    job = task.load_job_class(ev.job.ref)(ev.job.params)
    ctx = task.step_context(ev, job)
    input_bytes = sum(st.for_uri(uri).size(uri) for uri in inputs)
    arrow_runs = [uri for uri in inputs if contract.is_arrow_run(uri)]
    # Reading, merging, reducing and writing stream together: one subsegment.
    with task.traced("read+reduce+write", inputs=len(inputs)):
        if isinstance(ctx.step, Join):
            from lambda_src import arrow_join

            result = arrow_join.run_reduce(spec, ev.job, ctx.step, inputs, token, ctx.next)
        elif isinstance(ctx.step, Step) and ctx.step.on_tables:
            from lambda_src import arrow_steps

            result = arrow_steps.run_reduce(spec, job, ctx, inputs, token)
        elif arrow_runs and job.has_table_shuffle() and len(arrow_runs) == len(inputs):
            result = _run_tables(spec, job, inputs, token, ctx.partitions)
        else:
            result = _run_lines(spec, job, ctx, inputs, input_bytes <= in_memory, token)
    result["stats"].update(inputs=len(inputs), input_bytes=input_bytes)
    return result


def _run_lines(spec: contract.ReduceTask, job, ctx: task.StepContext, inputs, in_memory: bool, token) -> dict:
    """The record path: merge the sorted runs, then group, combine or reduce.

    The final round of the last step writes the result file; the final round of an
    earlier step writes the reducer's pairs as a run for the next step's mappers.
    """
    lines = _merged_lines(inputs, in_memory)
    step = ctx.step
    part = spec.partition
    keys = None
    if spec.final or step.combiner is not None:
        groups = shuffle.KeyGroups(lines)
    if spec.final and ctx.last:
        uri = spec.part_uri(_final_output(spec))
        with output.result_writer(uri, spec.job.output_format, job, f"partition {part}") as writer:
            _reduce(groups, step.reducer, writer.add)
        return _final_result(spec, writer, {"input_records": groups.records, "keys": groups.keys,
                                            "mode": "record"})
    if spec.final:
        uri = spec.run_uri(token, "pairs")
        records, size = output.write_lines(uri, _encoded_pairs(groups, step.reducer))
    else:
        uri = spec.run_uri(token, "run")
        if step.combiner is not None:
            lines = shuffle.combine_stream(groups, step.combiner, f"reduce round {spec.round}, partition {part}")
        records, size = output.write_lines(uri, lines)
    if spec.final or step.combiner is not None:
        input_records, keys = groups.records, groups.keys
    else:
        input_records = records  # the merged lines, written as they are
    stats = {"input_records": input_records, "output_records": records, "output_bytes": size, "mode": "record"}
    if keys is not None:
        stats["keys"] = keys
    return {"outputs": [{"partition": part, "uri": uri, "records": records, "bytes": size}], "stats": stats}


def _merged_lines(inputs: list[str], in_memory: bool) -> Iterable[bytes]:
    """The lines of the sorted runs, in order: ``in_memory``, read whole and sorted at once
    (the sort finds the runs and merges them, in C), else a streamed k-way merge with
    bounded read buffers."""
    if in_memory:
        lines: list[bytes] = []
        for uri in inputs:
            if contract.is_arrow_run(uri):  # a mix of run kinds: read the Arrow ones as lines
                lines += _arrow_lines(uri)
            else:
                lines += st.for_uri(uri).read_bytes(uri).splitlines(keepends=True)
        lines.sort()
        return lines
    # Read buffers are bounded in total, whatever the fan-in.
    chunk = max(64 * 1024, min(READ_CHUNK, MERGE_BUFFER // max(1, len(inputs))))
    runs = [
        _arrow_lines(uri) if contract.is_arrow_run(uri)
        else shuffle.CODEC.iter_lines(st.for_uri(uri).iter_range(uri, chunk_size=chunk))
        for uri in inputs
    ]
    return shuffle.merge(runs)


def _arrow_lines(uri: str) -> Iterator[bytes]:
    from lambda_src import arrow_shuffle as ash

    return ash.as_lines(ash.read_run(uri))


def _reduce(groups: shuffle.KeyGroups, reducer: Reduce, add: Callable[[list[Pair]], None]) -> None:
    """The reducer on each key's values; its pairs go to ``add`` a batch at a time."""
    pairs: list[Pair] = []
    for _, key, values in groups:
        pairs += reducer(key, values)
        if len(pairs) >= shuffle.GROUP_BATCH:
            add(pairs)
            pairs = []
    add(pairs)


def _run_tables(spec: contract.ReduceTask, job, inputs, token, partitions: int) -> dict:
    """The Arrow path: the runs' rows, key block by key block (``arrow_shuffle.key_blocks``),
    each combined (or reduced) as one table."""
    from lambda_src import arrow_shuffle as ash

    blocks = ash.key_blocks([ash.read_blocked_run(uri, partitions) for uri in inputs], partitions)
    filled = [block for block in blocks if block is not None]
    input_records = sum(block.num_rows for block in filled)
    if spec.final:
        uri = spec.part_uri(_final_output(spec))
        with output.result_writer(uri, spec.job.output_format, job, f"partition {spec.partition}") as writer:
            for block in filled:  # each block's result as reduce_table returns it: the writer takes each
                writer.add_table(job.reduce_table(block))
        return _final_result(spec, writer, {"input_records": input_records, "mode": "vectorized"})
    combined = [None if block is None else ash.check_table(job.combine_table(block), "combine_table")
                for block in blocks]
    uri = spec.run_uri(token, "run", arrow=True)
    records, size = ash.write_run(uri, ash.concat([part for part in combined if part is not None]),
                                  [0 if part is None else part.num_rows for part in combined])
    return {
        "outputs": [{"partition": spec.partition, "uri": uri, "records": records, "bytes": size}],
        "stats": {"input_records": input_records, "output_records": records, "output_bytes": size,
                  "mode": "vectorized"},
    }


def _final_result(spec: contract.ReduceTask, writer: output.ResultWriter, stats: dict) -> dict:
    """A final reduce task's result: its part file (none for a Parquet partition without rows)."""
    return {"outputs": writer.output(spec.partition),
            "stats": {**stats, "output_records": writer.records, "output_bytes": writer.bytes}}


def _encoded_pairs(groups: shuffle.KeyGroups, reducer: Reduce) -> Iterator[bytes]:
    """The reducer's pairs, encoded as intermediate lines (what the next step reads)."""
    codec = shuffle.CODEC
    for _, key, values in groups:
        for out_key, out_value in reducer(key, values):
            yield codec.line(codec.encode_key(out_key), codec.encode_value(out_value))


def _final_output(spec: contract.ReduceTask) -> str:
    if spec.output is None:
        raise task.EventError("a final reduce task needs the event field 'output'")
    return spec.output
