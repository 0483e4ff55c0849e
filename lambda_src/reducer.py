"""The reduce task's Lambda entry point: ``lambda_src.reducer.lambda_handler``.

One reduce task merges up to F sorted runs of one partition. In an intermediate round it
writes one merged run (combined, when the job has a combiner); in the final round it runs the
job's reducer once per key and writes the partition's ``part-NNNNN`` CSV file, or, in a step
of a multi-step job that is not the last, the reducer's (key, value) pairs as a run that the
next step's mappers read.
"""

from __future__ import annotations

from typing import Any

from lambda_src import output, shuffle, task
from lambda_src import storage as st
from lambda_src.job import Reduce

READ_CHUNK = 1024 * 1024
#: Total read-ahead across all the runs one reduce task merges.
MERGE_BUFFER = 64 * 1024 * 1024


def lambda_handler(event: dict, context: Any) -> dict:
    return task.run(event, context, "reduce", status_key, _describe, _run)


def _coords(ev: task.TaskEvent) -> tuple[int, int, int, bool]:
    t = ev.task
    try:
        rnd, part, group = int(t["round"]), int(t["partition"]), int(t["group"])
    except (KeyError, TypeError, ValueError) as err:
        raise task.EventError(f"reduce task needs integer round/partition/group: {err}") from None
    if rnd < 1 or part < 0 or group < 0:
        raise task.EventError(f"reduce task coordinates out of range: {t!r}")
    return rnd, part, group, bool(t.get("final"))


def status_key(ev: task.TaskEvent) -> str:
    rnd, part, group, _ = _coords(ev)
    return task.step_key(ev, f"reduce/r{rnd:03d}/p{part:05d}-g{group:05d}")


def _describe(ev: task.TaskEvent) -> str:
    rnd, part, group, final = _coords(ev)
    kind = "final reduce" if final else "reduce"
    where = f"{kind} task (round {rnd}, partition {part}, group {group})"
    step = task.step_index(ev)
    return f"step {step + 1} {where}" if step else where


def _run(ev: task.TaskEvent, token: str) -> dict:
    rnd, part, group, final = _coords(ev)
    inputs = [ev.inside_job_dir(uri, "a reduce input") for uri in ev.load_list("inputs")]
    job = task.load_job_class(ev.job.ref)(ev.job.params)
    ctx = task.step_context(ev, job)
    input_bytes = sum(st.for_uri(uri).size(uri) for uri in inputs)
    arrow_runs = [uri for uri in inputs if shuffle.CODEC.is_arrow_run(uri)]
    # Reading, merging, reducing and writing stream together: one subsegment.
    with task.traced("read+reduce+write", inputs=len(inputs)):
        if arrow_runs and job.has_table_shuffle() and len(arrow_runs) == len(inputs):
            result = _run_tables(ev, job, inputs, token, rnd, part, group, final)
        else:
            result = _run_lines(ev, ctx, inputs, token, rnd, part, group, final)
    result["stats"].update(inputs=len(inputs), input_bytes=input_bytes)
    return result


def _run_lines(ev, ctx: task.StepContext, inputs, token, rnd, part, group, final) -> dict:
    """The record path: a streamed k-way merge of sorted runs.

    The final round of the last step writes the CSV part file; the final round of an
    earlier step writes the reducer's pairs as a run for the next step's mappers.
    """
    # Read buffers are bounded in total, whatever the fan-in.
    chunk = max(64 * 1024, min(READ_CHUNK, MERGE_BUFFER // max(1, len(inputs))))
    runs = []
    for uri in inputs:
        if shuffle.CODEC.is_arrow_run(uri):  # a mix of run kinds: read the Arrow ones as lines
            from lambda_src import arrow_shuffle as ash

            runs.append(ash.as_lines(ash.read_run(uri)))
        else:
            runs.append(shuffle.CODEC.iter_lines(st.for_uri(uri).iter_range(uri, chunk_size=chunk)))
    counter = _Counter(shuffle.merge(runs))
    step = ctx.step
    run_dir = st.join(ctx.dir, "reduce", f"r{rnd:03d}", f"p{part:05d}-g{group:05d}", token)
    if final and ctx.last:
        uri = st.join(_final_output(ev), f"part-{part:05d}")
        with output.CsvWriter(uri) as writer:
            for key, values in _key_groups(counter):
                writer.add(step.reducer(key, values))
        records, size = writer.records, writer.bytes
    elif final:
        uri = st.join(run_dir, "pairs")
        records, size = output.write_lines(uri, _encoded_pairs(_key_groups(counter), step.reducer))
    else:
        uri = st.join(run_dir, "run")
        lines = counter
        if step.combiner is not None:
            lines = shuffle.combine_stream(counter, step.combiner, f"reduce round {rnd}, partition {part}")
        records, size = output.write_lines(uri, lines)
    return {
        "outputs": [{"partition": part, "uri": uri, "records": records, "bytes": size}],
        "stats": {"input_records": counter.records, "keys": counter.keys, "output_records": records,
                  "output_bytes": size, "mode": "record"},
    }


def _run_tables(ev, job, inputs, token, rnd, part, group, final) -> dict:
    """The Arrow path: concatenate the runs, combine (or reduce) them as one table."""
    from lambda_src import arrow_shuffle as ash

    tables = [ash.read_run(uri) for uri in inputs]
    table = ash.concat(tables)
    input_records = table.num_rows
    if final:
        result = job.reduce_table(table)
        uri = st.join(_final_output(ev), f"part-{part:05d}")
        data = ash.table_to_csv(result)
        st.for_uri(uri).write_bytes(uri, data)
        records, size = result.num_rows, len(data)
    else:
        combined = ash.check_table(job.combine_table(table), "combine_table")
        uri = st.join(ev.job_dir, "reduce", f"r{rnd:03d}", f"p{part:05d}-g{group:05d}", token,
                      f"run{ash.SUFFIX}")
        records, size = ash.write_run(uri, combined)
    return {
        "outputs": [{"partition": part, "uri": uri, "records": records, "bytes": size}],
        "stats": {"input_records": input_records, "output_records": records, "output_bytes": size,
                  "mode": "vectorized"},
    }


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


def _final_output(ev: task.TaskEvent) -> str:
    out_uri = ev.body.get("output")
    if not isinstance(out_uri, str) or not out_uri:
        raise task.EventError("a final reduce task needs the event field 'output'")
    return out_uri


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
