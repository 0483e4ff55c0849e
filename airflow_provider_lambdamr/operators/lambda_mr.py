"""Operators: the map fan-out, the reducer rounds, and cleanup of a LambdaMR job."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetAlias, BaseOperator, BaseOperatorLink, conf
from airflow.sdk.exceptions import AirflowException

from airflow_provider_lambdamr.engine import commit as commit_mod
from airflow_provider_lambdamr.engine import jobdir, jobstate
from airflow_provider_lambdamr.engine import report as report_mod
from airflow_provider_lambdamr.engine.driver import Driver, JobFailed, JobWaiting, Progress
from airflow_provider_lambdamr.engine.scheduler import InFlight
from airflow_provider_lambdamr.engine.spec import JobSpec, default_text, load_spec
from airflow_provider_lambdamr.operators.base import (
    LambdaMapReduceHookMixin,
    documents_connection,
    lambdamr_template_fields,
)
from airflow_provider_lambdamr.triggers.lambda_mr import (
    LambdaMapReducePhaseTrigger,
    LambdaMapReduceWaveTrigger,
    cancel_invocations,
)
from lambda_src import storage as st
from lambda_src.contract import MAP

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

# Characters of a job id (lambda_src.task.JOB_ID_RE) except "=", which marks a hashed id.
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_READABLE_MAX = 160


def default_job_id(context: Context) -> str:
    """
    A job id from the DAG run: stable across task retries, distinct for distinct runs.

    ``<dag_id>__<run_id>`` as it is when that is a valid job id without ``=`` and splits back
    into one (dag_id, run_id) pair (the dag id has no ``__`` and does not end in ``_``).
    Otherwise a readable, sanitized prefix of it, ``=`` and a hash of the pair: ``=`` occurs
    only in hashed ids, so no two distinct pairs share an id (up to a 64-bit hash collision).
    """
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    plain = f"{dag_id}__{run_id}"
    if (
        _PLAIN.fullmatch(plain) and run_id and len(plain) <= 200 and ".." not in plain
        and "__" not in dag_id and not dag_id.endswith("_")
    ):
        return plain
    digest = hashlib.sha256(json.dumps([dag_id, run_id]).encode()).hexdigest()[:16]
    readable = re.sub(r"\.{2,}", ".", _UNSAFE.sub("-", plain)).lstrip("._+-")[:_READABLE_MAX] or "job"
    return f"{readable}={digest}"


def encode_job_params(params: Mapping[str, Any] | None) -> dict[str, str]:
    """
    ``job_params`` as the engine's ``{name: str}``: strings as they are; ``int``, ``float``,
    ``bool``, ``None``, lists and dicts (of those) JSON-encoded with sorted keys, so the same
    value always gives the same parameter (parameters are part of the job's identity). Any
    other type is refused, naming the parameter.
    """
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ValueError(f"job_params must be a mapping of names to values, got {type(params).__name__}")
    out = {}
    for name, value in params.items():
        if not isinstance(name, str):
            raise ValueError(f"job_params name {name!r} is a {type(name).__name__}, not a string")
        if isinstance(value, str):
            out[name] = value
            continue
        _check_json_value(value, f"job_params[{name!r}]")
        out[name] = json.dumps(value, sort_keys=True, allow_nan=False)
    return out


def _check_json_value(value: object, where: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has the key {key!r}, a {type(key).__name__}: JSON keys are strings")
            _check_json_value(item, f"{where}[{key!r}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__name__} ({value!r}): pass a string, or a number, bool, None, "
        f"list or dict to have it JSON-encoded"
    )


def normalize_inputs(inputs: str | Sequence[str] | dict[str, str | Sequence[str]]) -> dict[str, list[str]]:
    """``"uri"``, ``["uri", ...]`` or ``{"name": "uri" | [...]}`` → the engine's form."""
    if isinstance(inputs, str):
        return {"": [inputs]}
    if isinstance(inputs, dict):
        return {name: [uris] if isinstance(uris, str) else list(uris) for name, uris in inputs.items()}
    return {"": list(inputs)}


class LambdaMapReduceResultLink(BaseOperatorLink):
    """
    The job's ``s3://`` result in the S3 console. A local result has no link: the Airflow UI
    renders only ``http(s):``, ``mailto:`` and same-origin links, never a ``file://`` one.
    """

    name = "LambdaMR Result"
    key = "lambdamr_result"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        value = _xcom_link_value(ti_key, self.key)
        if not value:
            return ""
        output = value.get("output", "")
        if st.is_s3(output):
            bucket, key = st.split_s3(output)
            region = value.get("region") or "us-east-1"
            return (
                f"https://{region}.console.aws.amazon.com/s3/buckets/{bucket}"
                f"?region={region}&prefix={key.rstrip('/')}/"
            )
        return ""


class _AwsConsoleLink(BaseOperatorLink):
    """A console URL built from the value the operator pushed to XCom under ``key``."""

    name = ""
    key = ""
    field = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        value = _xcom_link_value(ti_key, self.key)
        if not value or not value.get(self.field):
            return ""
        return self.url(value, value.get("region") or "us-east-1")

    def url(self, value: dict, region: str) -> str:
        raise NotImplementedError


class LambdaMapReduceFunctionLink(_AwsConsoleLink):
    """The mapper function in the Lambda console (``aws`` runtime)."""

    name = "Lambda Function"
    key = "lambdamr_function"
    field = "function"

    def url(self, value: dict, region: str) -> str:
        return (f"https://{region}.console.aws.amazon.com/lambda/home?region={region}"
                f"#/functions/{value['function']}/aliases/{value.get('alias', '')}")


class LambdaMapReduceTraceLink(_AwsConsoleLink):
    """The job's X-Ray trace (when traced)."""

    name = "X-Ray Trace"
    key = "lambdamr_trace"
    field = "trace_id"

    def url(self, value: dict, region: str) -> str:
        return (f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
                f"#xray:traces/{value['trace_id']}")


class LambdaMapReduceReportLink(_AwsConsoleLink):
    """The job's HTML report (``lambdamr report``), written by the task that committed it,
    in the S3 console when the job directory is on S3. A local report has no link: the
    Airflow UI renders no ``file://`` link (the task's log names its path)."""

    name = "LambdaMR Report"
    key = "lambdamr_report"
    field = "uri"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        value = _xcom_link_value(ti_key, self.key)
        return super().get_link(operator, ti_key=ti_key) if value and st.is_s3(value.get("uri", "")) else ""

    def url(self, value: dict, region: str) -> str:
        bucket, key = st.split_s3(value["uri"])
        return f"https://{region}.console.aws.amazon.com/s3/object/{bucket}?region={region}&prefix={key}"


def _xcom_link_value(ti_key: TaskInstanceKey, key: str) -> dict | None:
    """What the operator pushed for a link: None when it pushed nothing (``_declare_links``)."""
    from airflow.sdk.execution_time.xcom import XCom

    return XCom.get_value(ti_key=ti_key, key=key)


def _declare_links(context: Context, links: Sequence[BaseOperatorLink]) -> None:
    """Push every link's XCom key, empty, before the task does anything: Airflow calls
    ``get_link`` however the task ended, and reading a key never pushed logs an
    ``XCom not found`` error (``airflow.sdk.api.client.XComOperations.get``)."""
    ti = context.get("ti")
    if ti is not None:
        for link in links:
            ti.xcom_push(key=link.key, value=None)


def _kwarg(f: dataclasses.Field) -> str:
    """The operator keyword of a JobSpec field."""
    return f.metadata["option"].kwarg or f.name


#: The JobSpec fields the map operator takes, as keywords of the same names (or ``Option.kwarg``).
#: ``keep_intermediates`` is not one: the reduce operator reads the map runs, cleanup removes them.
MAP_OPTIONS = tuple(f for f in dataclasses.fields(JobSpec) if f.name != "keep_intermediates")
#: The JobSpec fields a reduce task may set: runtime options (default: as the map task recorded
#: them in the manifest) and what happens after the commit.
REDUCE_OPTIONS = tuple(f for f in dataclasses.fields(JobSpec)
                       if f.metadata["option"].runtime or f.name in ("keep_intermediates", "recompute"))


def options_doc(cls: type, fields: Sequence[dataclasses.Field], overrides: Mapping[str, str], extra: str = "") -> str:
    """``cls``'s docstring with ``:param ...:`` lines for the keywords of ``fields`` appended.

    Each says the field's ``Option`` help (or the operator's own text in ``overrides``), then
    its default (or ``extra``), then whether it is templated.
    """
    lines = [(cls.__doc__ or "").rstrip()]
    for f in fields:
        opt = f.metadata["option"]
        text = (overrides.get(f.name) or opt.help).rstrip() + (extra or default_text(f))
        text += " (templated)" if opt.templated else ""
        lines.append(f"    :param {_kwarg(f)}: {text}")
    return "\n".join(lines) + "\n    "


def _templated(fields: Sequence[dataclasses.Field], *extra: str) -> tuple[str, ...]:
    return lambdamr_template_fields(*{_kwarg(f) for f in fields if f.metadata["option"].templated}, *extra)


#: How long a map task in coordinator mode waits for the job's commit without a job timeout.
COORDINATED_WAIT_S = 24 * 3600.0

#: Runtimes whose invocations outlive the task process that launched them (deferral needs one).
DEFERRABLE_RUNTIMES = ("aws", "service")

#: The deferral keywords' docs, appended to the map and reduce operators'.
DEFERRAL_DOC = """
    :param deferrable: Launch a wave of invocations, then wait in the triggerer without a
        worker slot; resume only to retry failed or lost tasks, start speculative twins, refill
        the concurrency window or start the next round, then defer again (default:
        ``[operators] default_deferrable``). Needs a runtime whose invocations outlive the task:
        ``service`` or ``aws`` (``local`` runs its workers inside the task and is refused).
    :param poll_interval: Seconds between the trigger's listings of the job's status records.
    :param cancel_on_kill: When the task is killed (or, deferred, marked failed or cleared),
        cancel the invocations in flight where the runtime can (``service``); Lambda cannot
        cancel an asynchronous invocation (``aws``: logged, they run to completion).
    """


class _LambdaMapReduceBase(LambdaMapReduceHookMixin, BaseOperator):
    """What the map and reduce operators share: the connection, progress logging, deferral, on_kill."""

    #: Whether this operator's work ends when step 1's map phase committed (else: the job).
    _stops_after_map = False

    def __init__(
        self,
        *,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_for_completion: bool = True,
        poll_interval: float = 10.0,
        cancel_on_kill: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.cancel_on_kill = cancel_on_kill
        self._runtime = None
        #: (runtime name, the invocations in flight) that this process knows of, for on_kill.
        self._in_flight: tuple[str, tuple[InFlight, ...]] | None = None

    def _store_options(self, fields: Sequence[dataclasses.Field], values: Mapping[str, Any]) -> None:
        """Keep the operator keywords of ``fields`` (from the caller's ``locals()``) as attributes."""
        for f in fields:
            setattr(self, _kwarg(f), values[_kwarg(f)])

    def _keeps_committed(self, spec: JobSpec, done: dict) -> bool:
        """Whether the job's committed result stands (``recompute`` is off); says which in the log."""
        finished = done.get("finished_at", "an unrecorded time")
        if spec.recompute:
            self.log.info("job %s already committed at %s; recomputing", spec.job_id, finished)
            return False
        self.log.info("job %s already committed at %s; not recomputed (pass recompute=True to recompute)",
                      spec.job_id, finished)
        return True

    def _progress(self, p: Progress) -> None:
        size = f", {p.bytes_done / 1e6:.1f}/{p.bytes_total / 1e6:.1f} MB" if p.bytes_total else ""
        self.log.info("%s: %d/%d tasks%s, %.1fs elapsed", p.phase, p.done, p.total, size, p.elapsed_s)

    def _run(self, spec: JobSpec, phase: Any, context: Context) -> Any:
        """Run ``phase(driver)`` with a runtime that on_kill can stop; the phase enters the trace."""
        runtime = self.hook.get_runtime(spec)
        self._runtime = runtime
        try:
            with runtime:
                driver = self.hook.get_driver(spec, runtime, progress=self._progress)
                try:
                    return phase(driver)
                finally:
                    driver.close()
                    self._push_links(context, spec, driver)
        except JobFailed as err:
            raise AirflowException(f"LambdaMR job {spec.job_id} failed: {err}") from None
        finally:
            self._runtime = None

    def _push_links(self, context: Context, spec: JobSpec, driver: Driver) -> None:
        ti = context.get("ti")
        if ti is None:
            return
        region = None
        if spec.runtime == "aws":
            region = self.region_name or self.hook.lambda_hook.conn.meta.region_name
        deployment = getattr(driver, "deployment", None) or {}
        mapper_fn = (deployment.get("functions") or {}).get("mapper") or {}
        if deployment.get("runtime") == "aws" and mapper_fn:
            ti.xcom_push(key=LambdaMapReduceFunctionLink.key,
                         value={"function": mapper_fn["name"], "alias": mapper_fn["alias"], "region": region})
        if driver.tracer.trace_id:
            ti.xcom_push(key=LambdaMapReduceTraceLink.key, value={"trace_id": driver.tracer.trace_id, "region": region})

    def on_kill(self) -> None:
        runtime = self._runtime
        if runtime is not None:
            self.log.info("stopping the local runtime's workers")
            runtime.close()
        if self._in_flight is not None and self.cancel_on_kill:
            name, in_flight = self._in_flight
            cancel_invocations(name, [f.request_id for f in in_flight], self.log)

    # -- launch, then defer ---------------------------------------------------------------
    def _check_deferrable(self, spec: JobSpec) -> None:
        if spec.runtime not in DEFERRABLE_RUNTIMES:
            asked = "deferrable=True" if self.deferrable else "wait_for_completion=False"
            undo = "deferrable=False" if self.deferrable else "wait_for_completion=True"
            raise AirflowException(
                f"task {self.task_id}: {asked} needs a runtime whose invocations outlive the task "
                f"process, 'service' (the local function service) or 'aws'; runtime {spec.runtime!r} runs its "
                f"workers inside the task. Pass runtime='service', or {undo}"
            )

    def _start(self, context: Context, spec: JobSpec, before: Any, *, in_flight: Sequence[InFlight] = (),
               budget_base: Mapping[str, int] | None = None) -> Any:
        """A launching task's first step: ``before(driver)`` (its result, when not None, is the
        task's: nothing to run), then the first ``_advance`` launches a wave, adopting
        ``in_flight`` (what a map task that did not wait launched)."""
        self._check_deferrable(spec)

        def phase(driver: Driver) -> tuple[Any, JobWaiting | None, dict[str, int]]:
            early = before(driver)
            if early is not None:
                return early, None, {}
            return None, *self._advance(driver, in_flight, budget_base, first=True)

        early, waiting, budget_base = self._run(spec, phase, context)
        if waiting is None:
            return early
        return self._defer_or_finish(context, spec, waiting, budget_base)

    def _defer_or_finish(self, context: Context, spec: JobSpec, waiting: JobWaiting,
                         budget_base: dict[str, int]) -> Any:
        """The task's result when its work is done (or, without ``wait_for_completion``,
        launched); otherwise defer to a trigger watching what the job waits for."""
        self._in_flight = (spec.runtime, waiting.in_flight)
        if waiting.stopped:
            return self._finished(context, spec, waiting)
        if not self.wait_for_completion:
            return self._launched(spec, waiting, budget_base)
        in_flight = [dataclasses.asdict(f) for f in waiting.in_flight]
        self.log.info("%s: %d invocations in flight; deferring", waiting.phase, len(in_flight))
        self.defer(
            trigger=LambdaMapReduceWaveTrigger(
                job_dir=spec.job_dir, job_id=spec.job_id, task_ref=f"{self.dag_id}.{self.task_id}",
                in_flight=in_flight, wake_at=waiting.wake_at, budget_base=budget_base,
                runtime=spec.runtime, cancel_on_kill=self.cancel_on_kill, poll_interval=self.poll_interval,
                **self.hook_parameters,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict | None = None) -> Any:
        """Resume after the trigger: advance the job from storage, then finish or defer again."""
        if not event:
            raise AirflowException(f"LambdaMR task {self.task_id} resumed without a trigger event")
        if event.get("status") != "ready":
            raise AirflowException(f"LambdaMR task {self.task_id}: {event.get('message', event)}")
        spec = self._resume_spec(context)
        budget_base = dict(event.get("budget_base") or {})
        in_flight = [InFlight(**f) for f in event.get("in_flight", [])]
        waiting, budget_base = self._run(
            spec, lambda driver: self._advance(driver, in_flight, budget_base, first=False), context)
        return self._defer_or_finish(context, spec, waiting, budget_base)

    def _advance(self, driver: Driver, in_flight: Sequence[InFlight], budget_base: Mapping[str, int] | None, *,
                 first: bool) -> tuple[JobWaiting, dict[str, int]]:
        """``Driver.advance`` this task's work; what it waits for, and the ``budget_base`` to
        pass back. The first step of a new run of a job that failed gives every task a fresh
        retry budget (``Driver.restart_after_failure``, over ``budget_base``)."""
        base = dict(budget_base or {})
        if first:
            base.update(driver.restart_after_failure())
        return driver.advance(in_flight=in_flight, budget_base=base, stop_after_map=self._stops_after_map), base

    def _launched(self, spec: JobSpec, waiting: JobWaiting, budget_base: dict[str, int]) -> dict:
        """The result of a task that launched and did not wait (``wait_for_completion=False``)."""
        raise NotImplementedError

    def _finished(self, context: Context, spec: JobSpec, waiting: JobWaiting) -> Any:
        raise NotImplementedError

    def _resume_spec(self, context: Context) -> JobSpec:
        raise NotImplementedError


@documents_connection
class LambdaMapOperator(_LambdaMapReduceBase):
    """
    Plan a LambdaMR job, deploy its code (only when that version is new) and run its map tasks.

    The map tasks fan out with bounded concurrency; a retried Airflow task resumes from the
    status records in storage, so completed map tasks are not re-run. Returns a small
    summary (XCom) whose ``job_dir`` the reduce operator and the sensor take.

    The job options are JobSpec's (``engine/spec.py``), as ``lambdamr run`` takes them; their
    documentation below is generated from the spec's field metadata.

    """

    template_fields: Sequence[str] = _templated(MAP_OPTIONS)
    operator_extra_links = (LambdaMapReduceFunctionLink(), LambdaMapReduceTraceLink())
    ui_color = "#f5b26b"
    _stops_after_map = True

    def __init__(
        self,
        *,
        job: str,
        inputs: str | Sequence[str] | dict[str, Any],
        output_uri: str,
        input_format: str | Mapping[str, str] | None = None,
        job_id: str = "",
        job_root: str = "",
        job_params: Mapping[str, Any] | None = None,
        partitions: int = 1,
        fan_in: int = 16,
        split_size: str | int = 64 * 1024 * 1024,
        max_files_per_task: int = 500,
        memory_mb: int = 1536,
        timeout_s: float = 900.0,
        max_attempts: int = 3,
        max_bad_records: int = 0,
        max_line_bytes: str | int = 1024 * 1024,
        vectorized: bool = True,
        output_format: str = "csv",
        allow_empty_input: bool = False,
        overwrite: bool = False,
        recompute: bool = False,
        tracing: bool = False,
        job_timeout_s: float | None = None,
        speculation: bool = True,
        speculation_factor: float = 3.0,
        speculation_min_s: float = 10.0,
        coordinator: bool = False,
        runtime: str = "local",
        workers: int | None = None,
        role_arn: str | None = None,
        function_prefix: str = "lambdamr",
        architecture: str = "x86_64",
        runtime_version: str = "python3.12",
        concurrency: int = 100,
        code_uri: str | None = None,
        layer: str | None = None,
        pyarrow_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)  # so map_task.output["job_dir"] works
        super().__init__(**kwargs)
        self._store_options(MAP_OPTIONS, locals())

    def build_spec(self, context: Context) -> JobSpec:
        """The job's spec: the keywords as they rendered; checking each value is the spec's."""
        values = {f.name: getattr(self, _kwarg(f)) for f in MAP_OPTIONS}
        try:
            values.update(
                inputs=normalize_inputs(self.inputs),
                params=encode_job_params(self.job_params),
                job_id=self.job_id or default_job_id(context),
                # the reduce operator reads them, cleanup removes them; in coordinator mode the
                # coordinator commits and removes them
                keep_intermediates=not self.coordinator,
            )
            return JobSpec(**values)
        except ValueError as err:
            raise AirflowException(f"Invalid LambdaMR job for task {self.task_id}: {err}") from None

    def execute(self, context: Context) -> dict:
        _declare_links(context, self.operator_extra_links)
        spec = self.build_spec(context)
        self.log.info("LambdaMR job %s: %s -> %s", spec.job_id, spec.job_ref, spec.output)
        # Before any work, so downstream cleanup finds the job even if this task fails.
        context["ti"].xcom_push(key="job_dir", value=spec.job_dir)

        def committed(driver: Driver) -> dict | None:
            done = driver.completed_summary()
            if done is not None and self._keeps_committed(spec, done):
                return {"job_id": spec.job_id, "job_dir": spec.job_dir, "output": spec.output,
                        "already_succeeded": True}
            return None

        if spec.coordinator:
            return self._coordinated(context, spec, committed)
        if self.deferrable or not self.wait_for_completion:
            def before(driver: Driver) -> dict | None:
                early = committed(driver)
                if early is None:
                    driver.prepare()
                return early

            return self._start(context, spec, before)

        def phase(driver: Driver) -> dict:
            early = committed(driver)
            if early is not None:
                return early
            with driver.tracer:
                manifest = driver.prepare()
                records = driver.run_map()
            return self._summary(spec, manifest, records, driver.stats["map"].summary()["invocations"])

        return self._run(spec, phase, context)

    # -- coordinator mode: this task launches; the coordinator runs the job to its commit
    def _coordinated(self, context: Context, spec: JobSpec, committed: Any) -> dict:
        """Launch the job and wait for its commit: deferred (the triggerer watches ``_SUCCESS``),
        in this worker, or not at all (``wait_for_completion=False``). No reduce task follows:
        the job's coordinator runs the reduce rounds and later steps, and commits."""
        launched = self._run(spec, lambda driver: committed(driver) or driver.launch(), context)
        if isinstance(launched, dict):
            return launched
        self.log.info("job %s launched in coordinator mode (%d map invocations)", spec.job_id, len(launched.launched))
        if not self.wait_for_completion:
            return {"job_id": spec.job_id, "job_dir": spec.job_dir, "output": spec.output, "coordinator": True}
        timeout = spec.job_timeout_s or COORDINATED_WAIT_S
        if self.deferrable:
            self.defer(trigger=LambdaMapReducePhaseTrigger(
                job_dir=spec.job_dir, phase="reduce", poll_interval=self.poll_interval, timeout=timeout,
                **self.hook_parameters), method_name="execute_coordinated_complete")
        deadline = time.monotonic() + timeout
        while True:
            state = jobstate.phase_state(spec.job_dir, "reduce")
            if state.failure or state.complete or time.monotonic() > deadline:
                return self.execute_coordinated_complete(context, {
                    "status": "error" if state.failure else "success" if state.complete else "timeout",
                    "message": (state.failure or {}).get("message", f"the job did not commit within {timeout:.0f} s"),
                    "job_dir": spec.job_dir})
            time.sleep(self.poll_interval)

    def execute_coordinated_complete(self, context: Context, event: dict | None = None) -> dict:
        """The job in coordinator mode committed (or failed): its ``_SUCCESS`` summary."""
        if not event or event.get("status") != "success":
            raise AirflowException(f"LambdaMR job {(event or {}).get('job_dir')}: {(event or {}).get('message', event)}")
        summary = jobdir.read_success(jobstate.read_manifest(event["job_dir"])["spec"]["output"]).summary
        self.log.info("job %s committed by its coordinator: %s", summary["job_id"], summary["counters"])
        return summary

    def _summary(self, spec: JobSpec, manifest: dict, records: list[dict], invocations: int) -> dict:
        stats = [r.get("stats", {}) for r in records]
        summary = {
            "job_id": spec.job_id,
            "job_dir": spec.job_dir,
            "output": spec.output,
            "code_version": manifest["code"]["version"],
            "map_tasks": len(records),
            "input_objects": manifest["plan"]["objects"],
            "input_bytes": sum(int(s.get("input_bytes", 0)) for s in stats),
            "input_records": sum(int(s.get("input_records", 0)) for s in stats),
            "map_output_records": sum(int(s.get("output_records", 0)) for s in stats),
            "bad_records": sum(int(s.get("bad_records", 0)) for s in stats),
            "map_modes": commit_mod.map_modes(stats),
            "invocations": invocations,
        }
        self.log.info("map phase done (map tasks: %s): %s", commit_mod.format_map_modes(summary["map_modes"]),
                      summary)
        return summary

    def _resume_spec(self, context: Context) -> JobSpec:
        return self.build_spec(context)

    def _finished(self, context: Context, spec: JobSpec, waiting: JobWaiting) -> dict:
        """The map phase committed (in this process or an earlier one): its summary, from storage."""
        records = jobstate.read_map_commit(spec.job_dir) or []
        # every process's (this task's resumes, an earlier try's), as the ledger recorded them
        invocations = jobstate.read_invocations(spec.job_dir).stats[MAP].invocations
        return self._summary(spec, jobstate.read_manifest(spec.job_dir), records, invocations)

    def _launched(self, spec: JobSpec, waiting: JobWaiting, budget_base: dict[str, int]) -> dict:
        self.log.info("launched %d map invocations; not waiting (wait_for_completion=False)",
                      len(waiting.in_flight))
        return {"job_id": spec.job_id, "job_dir": spec.job_dir, "output": spec.output,
                "in_flight": [dataclasses.asdict(f) for f in waiting.in_flight], "budget_base": budget_base}


#: What the map operator's keywords mean beyond the spec's help: how the operator converts them.
_MAP_DOCS = {
    'inputs': (
        'Input URI(s): a string, a list, or ``{name: uri or [uris]}``.'
    ),
    'job_id': (
        'Job id (default: ``<dag_id>__<run_id>``, made a valid job id: when the run id '
        'has characters a job id cannot hold, e.g. the ``:`` of ``manual__2024-01-01T00:00:00+00:00``, '
        'they become ``-`` and ``=`` and a hash of the (dag id, run id) pair follow, so distinct runs '
        'never share a job id).'
    ),
    'params': (
        'Job parameters, ``{name: value}`` with string names. A string value is '
        'passed as it is; an ``int``, ``float``, ``bool``, ``None``, list or dict (of those) is '
        'JSON-encoded with sorted keys (``True`` → ``"true"``, ``None`` → ``"null"``, '
        '``{"a": 1}`` → ``\'{"a": 1}\'``), also when templates render to native objects '
        '(``render_template_as_native_obj=True``). Other types (dates, sets, objects) are '
        "refused: format them in the template. Parameters are part of the job's identity. "
    ),
    'recompute': (
        'When this job id already committed (the task was cleared, or the run '
        "repeated), delete the job's state and result and run it again. By default the committed "
        'result stands: the task logs so and maps nothing.'
    ),
}
LambdaMapOperator.__doc__ = options_doc(LambdaMapOperator, MAP_OPTIONS, _MAP_DOCS)
LambdaMapOperator.__doc__ += DEFERRAL_DOC.strip("\n") + """
    :param wait_for_completion: Wait until the map phase committed (default). ``False``: return
        right after launching the first wave of map invocations, with the invocations in
        flight in the result (``in_flight``); a downstream deferrable ``LambdaReduceOperator``
        given ``launched=map_task.output`` then drives the job on (retries included).
    """


@documents_connection
class LambdaReduceOperator(_LambdaMapReduceBase):
    """
    Run the reducer rounds of a mapped LambdaMR job and commit its result.

    Merges up to ``fan_in`` runs per partition per round until one output per partition
    remains, writes ``part-NNNNN`` files and ``_SUCCESS``, and emits the result as an
    Asset event. A retried task resumes at the round it reached. When the job already
    committed, the task succeeds without running anything and emits no Asset event, unless
    ``recompute`` is set.

    The runtime options (``runtime``, ``workers``, ``role_arn``, ...) are the map task's, as its
    manifest recorded them; any given here (not ``None``) replace them for this task.

    :param job_dir: The job's directory, e.g. ``map_task.output["job_dir"]``. (templated)
    :param result_asset: URI of the Asset to emit (default: the output's URI, so every run
        that writes an output updates that output's Asset). Either way the event goes through
        the task's AssetAlias outlet, ``lambdamr-result:<dag_id>:<task_id>`` (one per task, not
        one shared by every DAG), which lets a run that computed nothing emit nothing: a
        concrete Asset in ``outlets`` gets an event on every successful run.
    """

    template_fields: Sequence[str] = _templated(
        [f for f in REDUCE_OPTIONS if f.metadata["option"].runtime], "job_dir", "launched")
    operator_extra_links = (
        LambdaMapReduceResultLink(),
        LambdaMapReduceReportLink(),
        LambdaMapReduceFunctionLink(),
        LambdaMapReduceTraceLink(),
    )
    ui_color = "#f7d08a"

    def __init__(
        self,
        *,
        job_dir: str,
        keep_intermediates: bool = False,
        recompute: bool = False,
        result_asset: str | None = None,
        memory_mb: int | None = None,
        timeout_s: float | None = None,
        tracing: bool | None = None,
        runtime: str | None = None,
        workers: int | None = None,
        role_arn: str | None = None,
        function_prefix: str | None = None,
        architecture: str | None = None,
        runtime_version: str | None = None,
        concurrency: int | None = None,
        code_uri: str | None = None,
        layer: str | None = None,
        pyarrow_layer: bool | None = None,
        launched: Mapping[str, Any] | None = None,
        report: bool = True,
        **kwargs: Any,
    ) -> None:
        self.report = report
        self._result_asset = Asset(result_asset) if result_asset else None  # validated at parse time
        outlets_given = "outlets" in kwargs
        super().__init__(**kwargs)
        if not self.wait_for_completion:
            raise ValueError(
                f"LambdaReduceOperator {self.task_id}: wait_for_completion=False would leave the job without a "
                f"driver between reduce rounds (nothing else retries failed tasks or starts the next round); "
                f"pass deferrable=True to free the worker slot while it waits")
        self.launched = launched
        # ":" is in no DAG or task id, so no two tasks share an alias
        self.alias = AssetAlias(f"lambdamr-result:{self.dag_id}:{self.task_id}")
        if not outlets_given:
            self.outlets = [self.alias]
        self.job_dir = job_dir
        self.result_asset = result_asset
        self._store_options(REDUCE_OPTIONS, locals())

    def load_spec(self) -> JobSpec:
        """The spec the map task recorded in the job directory, with this task's options over it."""
        try:
            return load_spec(self.job_dir, **{f.name: getattr(self, _kwarg(f)) for f in REDUCE_OPTIONS})
        except ValueError as err:
            raise AirflowException(f"LambdaMR reduce task {self.task_id}: {err}") from None

    def execute(self, context: Context) -> dict:
        _declare_links(context, self.operator_extra_links)
        spec = self.load_spec()

        if self.deferrable:
            launched = self.launched or {}

            def before(driver: Driver) -> dict | None:
                done = driver.completed_summary()
                if done is not None and self._keeps_committed(spec, done):
                    return self._result(context, done, False)
                if done is not None:  # recompute: start the job again from scratch
                    driver.prepare()
                return None

            return self._start(context, spec, before, in_flight=[InFlight(**f) for f in launched.get("in_flight", [])],
                               budget_base=launched.get("budget_base"))

        def phase(driver: Driver) -> tuple[dict, bool]:
            """The job's summary, and whether this task computed it."""
            done = driver.completed_summary()
            if done is not None:
                if self._keeps_committed(spec, done):
                    return done, False
                return driver.run(), True  # recompute the whole job (traced by run): its runs may be gone
            with driver.tracer:
                if not driver.map_only:  # a map-only job's map tasks wrote the result: commit it
                    driver.run_reduce()
                    driver.run_later_steps()  # a multi-step job's later steps run here too
                return driver.commit(), True

        return self._result(context, *self._run(spec, phase, context))

    def _resume_spec(self, context: Context) -> JobSpec:
        return self.load_spec()

    def _finished(self, context: Context, spec: JobSpec, waiting: JobWaiting) -> dict:
        return self._result(context, waiting.summary, True)

    def _result(self, context: Context, summary: dict, computed: bool) -> dict:
        """The task's result from the job's summary; an Asset event when this task computed it."""
        c = summary["counters"]
        result = {
            "job_id": summary["job_id"],
            "output": summary["output"],
            "files": len(summary["files"]),
            "output_records": c["output_records"],
            "output_bytes": c["output_bytes"],
            "input_records": c["input_records"],
            "bad_records": c["bad_records"],
            "reduce_tasks": summary["tasks"]["reduce"],
            "map_modes": summary["tasks"]["map_modes"],
            "duration_s": summary["durations_s"].get("total"),
            "cost_estimate": (summary.get("cost") or {}).get("total"),
            "cost_reference_formula": (summary.get("cost") or {}).get("reference_formula"),
        }
        context["ti"].xcom_push(
            key=LambdaMapReduceResultLink.key,
            value={"output": summary["output"], "region": self.region_name},
        )
        if computed:
            self._write_report(context, summary["job_dir"])
            asset = self._result_asset or Asset(summary["output"])
            context["outlet_events"][self.alias].add(asset, extra=result)
            self.log.info("LambdaMR job %s succeeded: %s", summary["job_id"], result)
        return result

    def _write_report(self, context: Context, job_dir: str) -> None:
        """Write the job's HTML report into its directory (``report=True``) and link to it."""
        if not self.report:
            return
        try:
            uri = report_mod.write(job_dir)
        except Exception as err:  # the job committed: a report it cannot write does not fail it
            self.log.warning("could not write the job's report into %s: %s: %s", job_dir, type(err).__name__, err)
            return
        self.log.info("the job's report (timeline of every task attempt, records, bytes, cost): %s", uri)
        context["ti"].xcom_push(key=LambdaMapReduceReportLink.key, value={"uri": uri, "region": self.region_name})


#: What a reduce task's keywords mean beyond the spec's help.
_REDUCE_DOCS = {
    'recompute': (
        'When the job already committed (the task was cleared, or the run '
        'repeated), run the whole job again, map phase included (its intermediates may be gone), '
        'and emit a new Asset event. By default the committed result stands: the task logs so, '
        'runs nothing and emits no event. A retry after the commit recomputes too.'
    ),
}
LambdaReduceOperator.__doc__ = options_doc(
    LambdaReduceOperator, [f for f in REDUCE_OPTIONS if not f.metadata["option"].runtime], _REDUCE_DOCS)
LambdaReduceOperator.__doc__ = options_doc(
    LambdaReduceOperator, [f for f in REDUCE_OPTIONS if f.metadata["option"].runtime], {},
    " Default: as the map task recorded it.")
LambdaReduceOperator.__doc__ += DEFERRAL_DOC.strip("\n") + """
    :param wait_for_completion: Must be True (the default): the reduce rounds need a driver
        between them. ``deferrable=True`` frees the worker slot while they run.
    :param launched: The result of a map task that did not wait (``wait_for_completion=False``),
        e.g. ``map_task.output``: this task adopts the map invocations still in flight and
        drives the whole job on, its map phase included. (templated)
    :param report: When this task commits the job, write its HTML report (``lambdamr report``:
        a timeline of every task attempt, records and bytes per phase, cost) into the job
        directory, linked from the task (``LambdaMR Report``) when the directory is on S3.
    """


@documents_connection
class LambdaMapReduceCleanupOperator(LambdaMapReduceHookMixin, BaseOperator):
    """
    Delete a LambdaMR job's intermediates (map and reduce runs), or everything the job wrote
    in its directory.

    Meant as a teardown (``trigger_rule="all_done"``): it succeeds when the job directory does
    not exist (nothing to delete), and refuses a directory that is not a job's (no manifest).

    :param job_dir: The job's directory. (templated)
    :param delete_job_dir: Also delete the manifest and status records.
    :param prune_functions: Delete old aliases and versions of the functions, keeping the
        newest alias (``aws`` runtime).
    :param delete_log_groups: Delete the functions' CloudWatch log groups.
    :param function_prefix: Functions are ``<prefix>-mapper`` / ``<prefix>-reducer``.
    """

    template_fields: Sequence[str] = lambdamr_template_fields("function_prefix", "job_dir")

    def __init__(
        self,
        *,
        job_dir: str,
        delete_job_dir: bool = False,
        prune_functions: bool = False,
        delete_log_groups: bool = False,
        function_prefix: str = "lambdamr",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_dir = job_dir
        self.delete_job_dir = delete_job_dir
        self.prune_functions = prune_functions
        self.delete_log_groups = delete_log_groups
        self.function_prefix = function_prefix

    def execute(self, context: Context) -> int:
        job_dir = st.normalize(self.job_dir)
        hook = self.hook
        hook.configure_storage_for(job_dir)
        if self.prune_functions or self.delete_log_groups:
            from airflow_provider_lambdamr.engine.runtimes import aws

            if self.prune_functions:
                self.log.info("pruned: %s", aws.prune_functions(hook.lambda_hook.conn, self.function_prefix))
            if self.delete_log_groups:
                from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook

                logs = AwsLogsHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name,
                                   verify=self.verify, config=self.botocore_config).conn
                self.log.info("deleted log groups: %s", aws.delete_log_groups(logs, self.function_prefix))
        try:
            report = jobdir.cleanup(job_dir, delete_job_dir=self.delete_job_dir)
        except jobdir.NotAJobDir as err:
            raise AirflowException(f"refusing to clean up: {err}") from None
        self.log.info("deleted %d objects under %s%s", report.deleted, job_dir,
                      f"; left {len(report.kept)} that the job did not write" if report.kept else "")
        return report.deleted
