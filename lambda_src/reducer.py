"""The reduce task's Lambda entry point: ``lambda_src.reducer.lambda_handler``.

One reduce task merges up to F sorted runs of one partition. In an intermediate round it
writes one merged run (combined, when the job has a combiner); in the final round it runs the
job's reducer once per key and writes the partition's ``part-NNNNN`` result file, or, in a step
of a multi-step job that is not the last, the reducer's (key, value) pairs as a run that the
next step's mappers read. The part file is in the job's output format (``output``).
"""

from __future__ import annotations

from typing import Any

from lambda_src import contract, output, shuffle, task
from lambda_src import storage as st
from lambda_src.job import Reduce

READ_CHUNK = 1024 * 1024
#: Total read-ahead across all the runs one reduce task merges.
MERGE_BUFFER = 64 * 1024 * 1024


def lambda_handler(event: dict, context: Any) -> dict:
    return task.run(event, context, contract.ReduceTask, _run)


def _run(ev: task.TaskEvent, token: str) -> dict:
    spec = ev.spec
    inputs = [ev.inside_job_dir(uri, "a reduce input") for uri in ev.load_list()]
    job = task.load_job_class(ev.job.ref)(ev.job.params)
    ctx = task.step_context(ev, job)
    input_bytes = sum(st.for_uri(uri).size(uri) for uri in inputs)
    arrow_runs = [uri for uri in inputs if contract.is_arrow_run(uri)]
    # Reading, merging, reducing and writing stream together: one subsegment.
    with task.traced("read+reduce+write", inputs=len(inputs)):
        if arrow_runs and job.has_table_shuffle() and len(arrow_runs) == len(inputs):
            result = _run_tables(spec, job, inputs, token)
        else:
            result = _run_lines(spec, job, ctx, inputs, token)
    result["stats"].update(inputs=len(inputs), input_bytes=input_bytes)
    return result


def _run_lines(spec: contract.ReduceTask, job, ctx: task.StepContext, inputs, token) -> dict:
    """The record path: a streamed k-way merge of sorted runs.

    The final round of the last step writes the result file; the final round of an
    earlier step writes the reducer's pairs as a run for the next step's mappers.
    """
    # Read buffers are bounded in total, whatever the fan-in.
    chunk = max(64 * 1024, min(READ_CHUNK, MERGE_BUFFER // max(1, len(inputs))))
    runs = []
    for uri in inputs:
        if contract.is_arrow_run(uri):  # a mix of run kinds: read the Arrow ones as lines
            from lambda_src import arrow_shuffle as ash

            runs.append(ash.as_lines(ash.read_run(uri)))
        else:
            runs.append(shuffle.CODEC.iter_lines(st.for_uri(uri).iter_range(uri, chunk_size=chunk)))
    counter = _Counter(shuffle.merge(runs))
    step = ctx.step
    part = spec.partition
    if spec.final and ctx.last:
        uri = spec.part_uri(_final_output(spec))
        with output.result_writer(uri, spec.job.output_format, job, f"partition {part}") as writer:
            for key, values in _key_groups(counter):
                writer.add(step.reducer(key, values))
        return _final_result(spec, writer, {"input_records": counter.records, "keys": counter.keys,
                                            "mode": "record"})
    if spec.final:
        uri = spec.run_uri(token, "pairs")
        records, size = output.write_lines(uri, _encoded_pairs(_key_groups(counter), step.reducer))
    else:
        uri = spec.run_uri(token, "run")
        lines = counter
        if step.combiner is not None:
            lines = shuffle.combine_stream(counter, step.combiner, f"reduce round {spec.round}, partition {part}")
        records, size = output.write_lines(uri, lines)
    return {
        "outputs": [{"partition": part, "uri": uri, "records": records, "bytes": size}],
        "stats": {"input_records": counter.records, "keys": counter.keys, "output_records": records,
                  "output_bytes": size, "mode": "record"},
    }


def _run_tables(spec: contract.ReduceTask, job, inputs, token) -> dict:
    """The Arrow path: concatenate the runs, combine (or reduce) them as one table."""
    from lambda_src import arrow_shuffle as ash

    tables = [ash.read_run(uri) for uri in inputs]
    table = ash.concat(tables)
    input_records = table.num_rows
    if spec.final:
        result = job.reduce_table(table)
        uri = spec.part_uri(_final_output(spec))
        with output.result_writer(uri, spec.job.output_format, job, f"partition {spec.partition}") as writer:
            writer.add_table(result)
        return _final_result(spec, writer, {"input_records": input_records, "mode": "vectorized"})
    combined = ash.check_table(job.combine_table(table), "combine_table")
    uri = spec.run_uri(token, "run", arrow=True)
    records, size = ash.write_run(uri, combined)
    return {
        "outputs": [{"partition": spec.partition, "uri": uri, "records": records, "bytes": size}],
        "stats": {"input_records": input_records, "output_records": records, "output_bytes": size,
                  "mode": "vectorized"},
    }


def _final_result(spec: contract.ReduceTask, writer: output.ResultWriter, stats: dict) -> dict:
    """A final reduce task's result: its part file (none for a Parquet partition without rows)."""
    return {"outputs": writer.output(spec.partition),
            "stats": {**stats, "output_records": writer.records, "output_bytes": writer.bytes}}


def _key_groups(counter: _Counter):
    """(key, lazy values) for each key of a merged stream, counting the keys."""
    decode, value_of = shuffle.CODEC.decode, shuffle.CODEC.value_of
    for key_bytes, lines in shuffle.groups(counter):
        counter.keys += 1
        yield decode(key_bytes), (value_of(line) for line in lines)


def _encoded_pairs(groups, reducer: Reduce):
    """The reducer's pairs, encoded as intermediate lines (what the next step reads)."""
    codec = shuffle.CODEC
    for key, values in groups:
        for out_key, out_value in reducer(key, values):
            yield codec.line(codec.encode_key(out_key), codec.encode_value(out_value))


def _final_output(spec: contract.ReduceTask) -> str:
    if spec.output is None:
        raise task.EventError("a final reduce task needs the event field 'output'")
    return spec.output


class _Counter:
    """Counts the lines that flow through it."""

    def __init__(self, lines) -> None:
        self._lines = iter(lines)
        self.records = 0
        self.keys = 0

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = next(self._lines)
        self.records += 1
        return line
