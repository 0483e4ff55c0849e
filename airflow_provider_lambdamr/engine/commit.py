"""The job's result: the ``_SUCCESS`` summary (counts, bytes, durations, task statistics,
cost) from the committed status records, and writing it while the job holds its output."""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass

from airflow_provider_lambdamr import __version__
from airflow_provider_lambdamr.engine import cost as cost_model
from airflow_provider_lambdamr.engine import jobdir, jobstate
from airflow_provider_lambdamr.engine.failures import JobFailed
from airflow_provider_lambdamr.engine.runtimes.base import Runtime
from airflow_provider_lambdamr.engine.scheduler import InvocationStats
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import contract
from lambda_src import storage as st
from lambda_src.task import peak_memory_mb

log = logging.getLogger(__name__)


@dataclass
class Committed:
    """Every step's committed tasks, as the status records and map commits hold them."""

    #: Step 1's map records, in task order.
    maps: list[dict]
    #: Each later step's map records.
    later_maps: list[list[dict]]
    #: Each step's reduce records by status key (none for a map-only job).
    reduces: list[dict[str, dict]]

    @property
    def map_stats(self) -> list[dict]:
        return [r.get("stats", {}) for r in self.maps]

    def outputs(self) -> list[dict]:
        """The result files' outputs: the map tasks' (a map-only job) or the final reducers'."""
        if not self.reduces:
            return [o for r in self.maps for o in r.get("outputs", [])]
        return [
            o for _, r in sorted(self.reduces[-1].items()) if r.get("task", {}).get("final")
            for o in r.get("outputs", [])
        ]


@dataclass
class Run:
    """What the driver process itself knows about the job's run."""

    runtime: Runtime
    stats: dict[str, InvocationStats]
    speculative_attempts: int
    timings: dict[str, float]
    trace_id: str | None
    prices: cost_model.PriceTable | None = None


def map_modes(stats: list[dict]) -> dict[str, int]:
    """How many map tasks ran in each mode (``vectorized``, ``record``), from their stats."""
    return dict(sorted(collections.Counter(s.get("mode", "record") for s in stats).items()))


def format_map_modes(modes: dict[str, int]) -> str:
    """``3 vectorized, 1 record``: a map phase's modes for a summary line or a log."""
    return ", ".join(f"{n} {mode}" for mode, n in sorted(modes.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(spec: JobSpec, manifest: dict, step_partitions: list[int], done: Committed, run: Run) -> dict:
    """The ``_SUCCESS`` summary of a job whose every task committed."""
    mstats = done.map_stats
    outputs = done.outputs()
    files = [st.basename(o["uri"]) for o in outputs]
    result = {
        "job_id": spec.job_id,
        "identity": manifest.get("identity"),
        "job": spec.job_ref,
        "inputs": spec.inputs,
        "output": spec.output,
        "job_dir": spec.job_dir,
        "runtime": run.runtime.name,
        "code_version": manifest["code"]["version"],
        "partitions": step_partitions[-1],  # of the last step: one part file each
        "fan_in": spec.fan_in,
        "files": files if not done.reduces else sorted(files),
        "format": spec.output_format,
        **result_schema(outputs),
        "counters": {
            "input_objects": manifest["plan"]["objects"],
            "input_bytes": sum(int(s.get("input_bytes", 0)) for s in mstats),
            "input_records": sum(int(s.get("input_records", 0)) for s in mstats),
            "bad_records": sum(int(s.get("bad_records", 0)) for s in mstats),
            "map_output_records": sum(int(s.get("output_records", 0)) for s in mstats),
            "output_records": sum(o.get("records", 0) for o in outputs),
            "output_bytes": sum(o.get("bytes", 0) for o in outputs),
        },
        "steps": len(step_partitions),
        "tasks": {
            "map": len(done.maps) + sum(len(m) for m in done.later_maps),
            "reduce": sum(len(r) for r in done.reduces),
            "map_modes": map_modes(mstats),
        },
        "invocations": {phase: s.summary() for phase, s in run.stats.items()},
        "speculative_attempts": run.speculative_attempts,
        "durations_s": {
            **run.timings,
            "total": round(time.time() - manifest.get("created_epoch", time.time()), 3),
        },
        "memory_mb": spec.memory_mb,
        # this process's own peak resident memory (the tasks' peaks are under invocations)
        "driver_peak_memory_mb": peak_memory_mb(),
        "trace_id": run.trace_id,
        "lambdamr_version": __version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if manifest["plan"].get("join"):
        result["join"] = manifest["plan"]["join"]  # the strategy the planner chose, and why
    if len(step_partitions) > 1:
        result["tasks"]["by_step"] = [
            {"map": len(m), "reduce": len(r), "partitions": step_partitions[k]}
            for k, (m, r) in enumerate(zip([done.maps, *done.later_maps], done.reduces, strict=True))
        ]
    result["cost"] = cost(
        spec, run,
        mstats + [r.get("stats", {}) for m in done.later_maps for r in m],
        [r.get("stats", {}) for recs in done.reduces for r in recs.values()],
        result["counters"]["output_bytes"],
    )
    log.info("job %s: %s", spec.job_id, cost_model.format_estimate(result["cost"]))
    bad_samples = [b for s in mstats for b in s.get("bad_samples", [])][:20]
    if bad_samples:
        result["bad_record_samples"] = bad_samples
    return result


def result_schema(outputs: list[dict]) -> dict:
    """The columns (and Parquet types) every file of a JSON Lines or Parquet result has.

    Each task infers its file's schema from its own rows; a result whose files disagree is
    not one table for DuckDB or Athena, so it is not committed.
    """
    schemas = [(o, {k: o[k] for k in ("columns", "types") if k in o}) for o in outputs]
    schemas = [(o, s) for o, s in schemas if s]
    if not schemas:
        return {}
    first, want = schemas[0]
    for other, got in schemas[1:]:
        if got != want:
            raise JobFailed(
                f"the result files disagree on their columns: {st.basename(first['uri'])} has "
                f"{_describe(want)}, {st.basename(other['uri'])} has {_describe(got)}; declare the job's "
                f"output_columns and output_types (a column that is None in every row of a file has no type)",
                phase="commit", resumable=False)
    return want


def _describe(schema: dict) -> str:
    types = schema.get("types") or [None] * len(schema["columns"])
    return "(" + ", ".join(n if t is None else f"{n} {t}" for n, t in zip(schema["columns"], types, strict=True)) + ")"


def cost(spec: JobSpec, run: Run, mstats: list[dict], rstats: list[dict], stored_bytes: int) -> dict:
    """What the job costs (or would cost) on Lambda, from the billed ms of its tasks.

    Durations and S3 request counts come from the status records, so an estimate made
    in a later process (the reduce operator) still covers the map phase. Failed
    invocations seen by this driver are added; ones from earlier drivers are not known.
    """
    billed = [cost_model.billed_ms(float(s.get("duration_ms", 0))) for s in mstats + rstats]
    failed = sum(p.failures for p in run.stats.values())
    failed_ms = sum(p.billed_ms for p in run.stats.values()) - sum(
        cost_model.billed_ms(d) for p in run.stats.values() for d in p.durations_ms
    )
    requests = {"put": 0, "get": 0, "list": 0, "head": 0}
    for s in mstats + rstats:
        for kind, n in (s.get("s3_requests") or {}).items():
            requests[kind] = requests.get(kind, 0) + int(n)
    driver = st.s3_requests()
    for kind in requests:
        requests[kind] += driver.get(kind, 0)
    usage = cost_model.Usage(
        billed_ms=sum(billed) + max(0, failed_ms),
        invocations=len(billed) + failed,
        memory_mb=spec.memory_mb,
        architecture=getattr(run.runtime, "architecture", "x86_64"),
        s3_put=requests["put"], s3_get=requests["get"], s3_list=requests["list"], s3_head=requests["head"],
        stored_bytes=stored_bytes,
    )
    est = cost_model.estimate(usage, run.prices)
    est["runtime"] = run.runtime.name
    # The durations are those of the modes the map tasks ran in: the figure assumes them.
    modes = map_modes(mstats)
    est["map_modes"] = modes
    est["mode"] = next(iter(modes)) if len(modes) == 1 else "mixed"
    assumes = {
        "vectorized": "the map tasks vectorized, as here, which on Lambda needs pyarrow "
                      "(--pyarrow-layer or --layer ARN)",
        "record": "the map tasks in record mode, as here (without pyarrow on Lambda a vectorized job runs so)",
    }.get(est["mode"], f"the map tasks' modes as here ({format_map_modes(modes)})")
    est["note"] = (
        f"projection for AWS Lambda from local task durations; assumes {assumes}"
        if run.runtime.name == "local"
        else f"estimate from the handlers' measured durations (map tasks: {format_map_modes(modes)})"
    )
    return est


def write_success(spec: JobSpec, result: dict) -> bool:
    """Commit: write ``_SUCCESS`` and release the output's claim; False (nothing written) when
    the job no longer holds its output."""
    if not jobdir.may_commit(spec.output, spec.job_id):
        return False
    jobstate.write_json(contract.success_uri(spec.output), result)
    jobdir.release_claim(spec.output, spec.job_id)
    return True
