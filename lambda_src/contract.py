"""The contract between the driver and the handlers: events, status records, the job layout.

Everything the two planes exchange is defined here and only here (docs/contract.md says
the same in prose, docs/schemas/ as JSON Schemas):

- the job directory's layout: every storage key a job writes, by step;
- the task event, as typed task specs (``MapTask``, ``ReduceTask``) that serialise
  themselves (``to_event``) and parse events (``from_event``), and know their status key;
- the status record a task commits (``StatusRecord``), and the record of a failed attempt,
  whose ``Failure`` says explicitly what kind of failure it was and whether a retry can help.

Runtimes receive a task spec, not a bare event: they serialise it, and ask it where its
status records are.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lambda_src import storage as st

# The environment a function's handlers read, declared apart so that the local runtime's
# launcher can start workers before it imports the contract (airflow_provider_lambdamr.prestart).
from lambda_src.function_env import ARROW_AT_INIT_ENV, ARROW_POOL_ENV, arrow_memory_pool  # noqa: F401

#: Bumped whenever the event's shape changes incompatibly.
EVENT_VERSION = 1
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


class EventError(ValueError):
    """An event that is not a valid task description."""


# -- the job layout ----------------------------------------------------------------------
MANIFEST = "jobdata.json"
FAILURE = "failed.json"
MAP_COMMIT = "map.json"
STEP_PLAN = "plan.json"
SUCCESS = "_SUCCESS"
CLAIM = "_LAMBDAMR_JOB"
STATUS = "status"
MAP = "map"
REDUCE = "reduce"
TASKS = "tasks"
#: The job's HTML report (``lambdamr report``), when written into the job directory.
REPORT = "report.html"
#: The invocation ledger: one entry per driver process that launched invocations.
LEDGER = "invocations"
#: Coordinator mode: how the coordinator reaches the job's functions (written at launch).
COORDINATOR = "coordinator.json"
#: Coordinator mode: one create-exclusive marker per task attempt launched.
LAUNCH = "launch"
#: The directories of intermediate data (runs, stored event lists), in every step's directory.
INTERMEDIATE = (MAP, REDUCE, TASKS)
#: Arrow IPC runs carry this suffix; runs without it are shuffle lines.
ARROW_SUFFIX = ".arrow"
PART_PREFIX = "part-"
#: The result formats (``--output-format``) and the extension of their part files; a CSV
#: part file has none, as before other formats existed.
OUTPUT_FORMATS = {"csv": "", "jsonl": ".jsonl", "parquet": ".parquet"}
_FAILED = ".failed-"
_JSON = ".json"
_STEP_DIR = re.compile(r"^step-\d{2,}$")


def step_name(index: int) -> str:
    """The directory (and status-key prefix) of a later step: ``step-02`` for index 1."""
    return f"step-{index + 1:02d}"


def step_dir(job_dir: str, index: int) -> str:
    """Where a step keeps its data: the job directory itself for step 1."""
    return job_dir if index == 0 else st.join(job_dir, step_name(index))


def step_scoped(index: int, key: str) -> str:
    """A status key (``map/00003``) in the namespace of step ``index`` (0-based)."""
    return key if index == 0 else f"{step_name(index)}/{key}"


def manifest_uri(job_dir: str) -> str:
    return st.join(job_dir, MANIFEST)


def report_uri(job_dir: str) -> str:
    """Where ``lambdamr report`` writes the job's report by default."""
    return st.join(job_dir, REPORT)


#: A ledger entry's name: a random uuid4, in hex.
_LEDGER_ENTRY = re.compile(rf"^[0-9a-f]{{32}}{re.escape(_JSON)}$")


def ledger_entry_uri(job_dir: str, name: str) -> str:
    """An entry of the invocation ledger: ``invocations/<name>.json``, one per driver process
    (``name``: a uuid4 in hex)."""
    return st.join(job_dir, LEDGER, name + _JSON)


def ledger_dir(job_dir: str) -> str:
    return st.join(job_dir, LEDGER)


def failure_uri(job_dir: str) -> str:
    """Why the job last failed, for sensors in other processes."""
    return st.join(job_dir, FAILURE)


def map_commit_uri(job_dir: str, step: int = 0) -> str:
    return st.join(step_dir(job_dir, step), MAP_COMMIT)


def step_plan_uri(job_dir: str, step: int) -> str:
    """The pinned map tasks of a later step."""
    return st.join(step_dir(job_dir, step), STEP_PLAN)


def map_status_key(step: int, index: int) -> str:
    return step_scoped(step, f"{MAP}/{index:05d}")


def reduce_status_key(step: int, rnd: int, partition: int, group: int) -> str:
    return step_scoped(step, f"{REDUCE}/r{rnd:03d}/p{partition:05d}-g{group:05d}")


def phase_of_status_key(key: str) -> str:
    """``map`` or ``reduce``: the phase a status key belongs to."""
    parts = key.split("/")
    if _STEP_DIR.match(parts[0]):
        parts = parts[1:]
    if parts[0] not in (MAP, REDUCE) or len(parts) < 2:
        raise ValueError(f"not a status key: {key!r}")
    return parts[0]


def status_prefix(step: int, phase: str) -> str:
    """The status-key prefix of a phase (``map``/``reduce``) of a step."""
    return step_scoped(step, phase)


def status_dir(job_dir: str, prefix: str = "") -> str:
    """The directory holding the status records whose keys start with ``prefix``."""
    return st.join(job_dir, STATUS, prefix) if prefix else st.join(job_dir, STATUS)


def status_uri(job_dir: str, key: str) -> str:
    """The commit record of the task with status key ``key``."""
    return st.join(job_dir, STATUS, key + _JSON)


def failed_attempt_uri(job_dir: str, key: str, token: str) -> str:
    """The record of a failed attempt (its token says which), beside the commit record."""
    return st.join(job_dir, STATUS, f"{key}{_FAILED}{token}{_JSON}")


def failed_attempt_prefix(job_dir: str, key: str, attempt: int) -> str:
    """What the failed-attempt records of attempt number ``attempt`` start with."""
    return st.join(job_dir, STATUS, f"{key}{_FAILED}a{attempt}-")


def committed_status_key(job_dir: str, uri: str) -> str | None:
    """The status key of a commit record's URI; None for a failed attempt's or other file."""
    name = st.basename(uri)
    if not name.endswith(_JSON) or _FAILED in name:
        return None
    rel = st.relative_to(uri, st.join(job_dir, STATUS))
    return rel[: -len(_JSON)] if rel else None


_FAILED_RECORD = re.compile(rf"^(?P<key>.+){re.escape(_FAILED)}a(?P<attempt>\d+)-")


def failed_attempt_of(job_dir: str, uri: str) -> tuple[str, int] | None:
    """(status key, attempt number) of a failed attempt's record URI; None for any other file."""
    m = _FAILED_RECORD.match(st.relative_to(uri, st.join(job_dir, STATUS)) or "")
    return (m["key"], int(m["attempt"])) if m else None


def coordinator_uri(job_dir: str) -> str:
    """Coordinator mode: the job's coordinator configuration (runtime, deployed functions)."""
    return st.join(job_dir, COORDINATOR)


def launch_dir(job_dir: str) -> str:
    return st.join(job_dir, LAUNCH)


def launch_uri(job_dir: str, key: str, attempt: int) -> str:
    """Coordinator mode: the marker of attempt ``attempt`` of the task ``key``; whoever creates
    it (exclusively) is the one that invokes that attempt."""
    return st.join(job_dir, LAUNCH, f"{key}.a{attempt}{_JSON}")


_LAUNCH_MARKER = re.compile(rf"^(?P<key>.+)\.a(?P<attempt>\d+){re.escape(_JSON)}$")


def launch_of(job_dir: str, uri: str) -> tuple[str, int] | None:
    """(status key, attempt number) of a launch marker's URI; None for any other file."""
    m = _LAUNCH_MARKER.match(st.relative_to(uri, launch_dir(job_dir)) or "")
    return (m["key"], int(m["attempt"])) if m else None


def attempt_token(attempt: int, nonce: str) -> str:
    """An attempt's token: its number (for ``failed_attempt_prefix``) and a random part."""
    return f"a{attempt}-{nonce}"


def map_run_uri(job_dir: str, step: int, index: int, token: str, partition: int, arrow: bool = False) -> str:
    """A map attempt's sorted run of one partition."""
    return st.join(step_dir(job_dir, step), MAP, f"{index:05d}", token,
                   f"{PART_PREFIX}{partition:05d}{ARROW_SUFFIX if arrow else ''}")


def reduce_run_uri(job_dir: str, step: int, rnd: int, partition: int, group: int, token: str,
                   name: str, arrow: bool = False) -> str:
    """A reduce attempt's output run: ``run`` (merged) or ``pairs`` (a step's final pairs)."""
    return st.join(step_dir(job_dir, step), REDUCE, f"r{rnd:03d}", f"p{partition:05d}-g{group:05d}", token,
                   name + (ARROW_SUFFIX if arrow else ""))


def is_arrow_run(uri: str) -> bool:
    return uri.endswith(ARROW_SUFFIX)


def success_uri(output: str) -> str:
    """A committed result's ``_SUCCESS`` (JSON: the files of the result, counts, statistics)."""
    return st.join(output, SUCCESS)


def part_uri(output: str, partition: int, fmt: str = "csv") -> str:
    """A reduce partition's final result file in format ``fmt``."""
    return st.join(output, f"{PART_PREFIX}{partition:05d}{OUTPUT_FORMATS[fmt]}")


def map_only_part_uri(output: str, index: int, fmt: str = "csv") -> str:
    """A map-only job's result file of map task ``index`` in format ``fmt``."""
    return st.join(output, f"{PART_PREFIX}m-{index:05d}{OUTPUT_FORMATS[fmt]}")


def is_part_name(name: str) -> bool:
    """Whether a file name in an output is (or looks like) a result part file."""
    return name.startswith(PART_PREFIX)


_RESULT_FILE = re.compile(
    rf"^{PART_PREFIX}(m-)?\d{{5}}({'|'.join(re.escape(x) for x in OUTPUT_FORMATS.values() if x)})?$"
)


def is_result_file_name(name: str) -> bool:
    """Whether ``name`` is one a job writes into its output (``part-NNNNN``, ``part-m-NNNNN``,
    each with its format's extension: ``part-00000.parquet``)."""
    return bool(_RESULT_FILE.match(name))


def claim_uri(output: str) -> str:
    """The output's claim, created exclusively by the job writing there until it commits."""
    return st.join(output, CLAIM)


def stored_list_uri(job_dir: str, key: str) -> str:
    """Where a task's list too large for its event is stored: ``tasks/<status key, dashed>.json``."""
    return st.join(job_dir, TASKS, key.replace("/", "-") + _JSON)


def intermediate_dirs(job_dir: str, steps: int) -> list[str]:
    """The directories of a job's intermediate data (runs, stored event lists), every step."""
    return [st.join(step_dir(job_dir, k), sub) for k in range(steps) for sub in INTERMEDIATE]


def written_by_job(rel: str) -> bool:
    """Whether a path relative to a job directory is one the job's layout writes."""
    parts = rel.split("/")
    if _STEP_DIR.match(parts[0]) and len(parts) > 1:
        parts = parts[1:]
        return (parts[0] in INTERMEDIATE and len(parts) > 1) or parts == [STEP_PLAN] or parts == [MAP_COMMIT]
    if parts[0] == LEDGER:
        return len(parts) == 2 and bool(_LEDGER_ENTRY.match(parts[1]))
    if parts[0] == LAUNCH:
        return len(parts) > 1 and bool(_LAUNCH_MARKER.match("/".join(parts[1:])))
    if parts[0] in (*INTERMEDIATE, STATUS):
        return len(parts) > 1
    return parts in ([MANIFEST], [FAILURE], [MAP_COMMIT], [REPORT], [COORDINATOR])


# -- the event ---------------------------------------------------------------------------
def validate_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id) or ".." in job_id:
        raise EventError(
            f"invalid job id {job_id!r}: use 1-200 letters, digits and . _ = + - "
            f"(starting with a letter or digit)"
        )
    return job_id


def validate_params(params: object) -> dict[str, str]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise EventError(f"job params must be a mapping of names to strings, got {params!r}")
    out = {}
    for name, value in params.items():
        if not isinstance(name, str) or not PARAM_NAME_RE.match(name):
            raise EventError(f"invalid job parameter name {name!r}")
        if not isinstance(value, str):
            raise EventError(f"job parameter {name!r} must be a string, got {type(value).__name__}")
        out[name] = value
    return out


@dataclass
class JobConfig:
    ref: str
    params: dict[str, str]
    partitions: int
    max_bad_records: int = 0
    vectorized: bool = True
    max_line_bytes: int = 1024 * 1024
    #: A Join step's strategy, chosen by the planner: the input broadcast to every map
    #: task, or None for a partitioned join (and for a job without a Join).
    broadcast: str | None = None
    #: The result files' format, a key of ``OUTPUT_FORMATS``.
    output_format: str = "csv"

    @classmethod
    def from_event(cls, data: object) -> JobConfig:
        if not isinstance(data, dict):
            raise EventError("event field 'job' must be an object")
        try:
            cfg = cls(
                ref=str(data["ref"]),
                params=validate_params(data.get("params")),
                partitions=int(data["partitions"]),
                max_bad_records=int(data.get("max_bad_records", 0)),
                vectorized=bool(data.get("vectorized", True)),
                max_line_bytes=int(data.get("max_line_bytes", 1024 * 1024)),
                broadcast=data.get("broadcast"),
                output_format=str(data.get("output_format", "csv")),
            )
        except KeyError as err:
            raise EventError(f"event field 'job' lacks {err}") from None
        except (TypeError, ValueError) as err:
            raise EventError(f"event field 'job' is malformed: {err}") from None
        if not 1 <= cfg.partitions <= 100_000:
            raise EventError(f"partitions must be between 1 and 100000, got {cfg.partitions}")
        if cfg.max_bad_records < 0:
            raise EventError(f"max_bad_records must be >= 0, got {cfg.max_bad_records}")
        if cfg.broadcast is not None and (not isinstance(cfg.broadcast, str) or not cfg.broadcast):
            raise EventError(f"broadcast must name an input, got {cfg.broadcast!r}")
        if cfg.output_format not in OUTPUT_FORMATS:
            raise EventError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {cfg.output_format!r}")
        return cfg

    def to_event(self) -> dict:
        return {
            "ref": self.ref,
            "params": self.params,
            "partitions": self.partitions,
            "max_bad_records": self.max_bad_records,
            "vectorized": self.vectorized,
            "max_line_bytes": self.max_line_bytes,
            **({"broadcast": self.broadcast} if self.broadcast is not None else {}),
            "output_format": self.output_format,
        }


def _int_field(task: dict, name: str, what: str, default: int | None = None) -> int:
    """An integer member of the event's ``task``; ``what`` says which (``non-negative``, ``positive``)."""
    value = task.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < (1 if what == "positive" else 0):
        raise EventError(f"task {name} must be a {what} integer, got {value!r}")
    return value


@dataclass(frozen=True)
class TaskSpec:
    """What every task event carries. Subclasses add the task's coordinates and its list."""

    #: The handler kind that runs it (a key of the runtimes' HANDLERS) and its phase.
    function: ClassVar[str]
    phase: ClassVar[str]

    job_id: str
    job_dir: str
    job: JobConfig
    step: int = field(default=0, kw_only=True)
    attempt: int = field(default=1, kw_only=True)
    #: The task's list (map splits, later-step runs, reduce inputs), inline ...
    items: list | None = field(default=None, kw_only=True)
    #: ... or stored at this URI under the job directory (events have a size limit).
    items_uri: str | None = field(default=None, kw_only=True)
    #: Where a task writing final results writes them.
    output: str | None = field(default=None, kw_only=True)

    # -- what a concrete spec defines
    @property
    def list_name(self) -> str:
        raise NotImplementedError

    def status_key(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def _task_fields(self) -> dict:
        raise NotImplementedError

    # -- shared
    @property
    def step_dir(self) -> str:
        return step_dir(self.job_dir, self.step)

    def status_uri(self) -> str:
        return status_uri(self.job_dir, self.status_key())

    def failed_attempt_uri(self, token: str) -> str:
        return failed_attempt_uri(self.job_dir, self.status_key(), token)

    def status_dir(self) -> str:
        """The directory holding this task's commit record and failed-attempt records."""
        return status_dir(self.job_dir, self.status_key().rpartition("/")[0])

    def failed_attempt_prefix(self) -> str:
        return failed_attempt_prefix(self.job_dir, self.status_key(), self.attempt)

    def stored_list_uri(self) -> str:
        return stored_list_uri(self.job_dir, self.status_key())

    def with_attempt(self, attempt: int) -> TaskSpec:
        return dataclasses.replace(self, attempt=attempt)

    def with_stored_list(self, uri: str) -> TaskSpec:
        return dataclasses.replace(self, items=None, items_uri=uri)

    def _where(self, text: str) -> str:
        return f"step {self.step + 1} {text}" if self.step else text

    def task_dict(self) -> dict:
        """The event's ``task`` member (also copied into every status record)."""
        task: dict[str, Any] = {"phase": self.phase, **self._task_fields()}
        if self.step:
            task["step"] = self.step
        task["attempt"] = self.attempt
        return task

    def to_event(self) -> dict:
        event: dict[str, Any] = {
            "version": EVENT_VERSION,
            "job_id": self.job_id,
            "job_dir": self.job_dir,
            "job": self.job.to_event(),
            "task": self.task_dict(),
        }
        if self.output is not None:
            event["output"] = self.output
        if self.items_uri is not None:
            event[f"{self.list_name}_uri"] = self.items_uri
        else:
            event[self.list_name] = self.items if self.items is not None else []
        return event

    @staticmethod
    def _common(event: object, phase: str) -> tuple[dict, dict]:
        if not isinstance(event, dict):
            raise EventError(f"event must be a JSON object, got {type(event).__name__}")
        if event.get("version") != EVENT_VERSION:
            raise EventError(
                f"event version {event.get('version')!r} is not {EVENT_VERSION}: the deployed "
                f"handler and the driver are from different releases"
            )
        job_dir = event.get("job_dir")
        if not isinstance(job_dir, str) or not job_dir:
            raise EventError("event field 'job_dir' must be a storage URI")
        task = event.get("task")
        if not isinstance(task, dict) or task.get("phase") != phase:
            raise EventError(f"event field 'task' must describe a {phase} task")
        common = {
            "job_id": validate_job_id(event.get("job_id")),
            "job_dir": job_dir,
            "job": JobConfig.from_event(event.get("job")),
            "attempt": _int_field(task, "attempt", "positive", default=1),
            "step": _int_field(task, "step", "non-negative", default=0),
        }
        output = event.get("output")
        if output is not None:
            if not isinstance(output, str) or not output:
                raise EventError(f"event field 'output' must be a storage URI, got {output!r}")
            common["output"] = output
        return task, common

    @staticmethod
    def _items(event: dict, name: str) -> dict:
        if name in event:
            if not isinstance(event[name], list):
                raise EventError(f"event field {name!r} must be a list")
            return {"items": event[name]}
        if f"{name}_uri" in event:
            uri = event[f"{name}_uri"]
            if not isinstance(uri, str):
                raise EventError(f"event field '{name}_uri' must be a storage URI, got {uri!r}")
            return {"items_uri": uri}
        return {}


@dataclass(frozen=True)
class MapTask(TaskSpec):
    function: ClassVar[str] = "mapper"
    phase: ClassVar[str] = MAP

    index: int = field(default=0, kw_only=True)
    count: int = field(default=0, kw_only=True)

    @property
    def list_name(self) -> str:
        """Step 1 maps input splits; a later step maps the previous step's final runs."""
        return "splits" if self.step == 0 else "runs"

    def status_key(self) -> str:
        return map_status_key(self.step, self.index)

    def describe(self) -> str:
        return self._where(f"map task {self.index}" + (f" of {self.count}" if self.count else ""))

    def _task_fields(self) -> dict:
        return {"index": self.index, "count": self.count}

    def run_uri(self, token: str, partition: int, arrow: bool = False) -> str:
        return map_run_uri(self.job_dir, self.step, self.index, token, partition, arrow)

    def map_only_part_uri(self, output: str) -> str:
        return map_only_part_uri(output, self.index, self.job.output_format)

    @classmethod
    def from_event(cls, event: object) -> MapTask:
        task, common = cls._common(event, MAP)
        index = task.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise EventError(f"map task index must be a non-negative integer, got {index!r}")
        spec = cls(**common, index=index, count=_int_field(task, "count", "non-negative", default=0))
        return dataclasses.replace(spec, **cls._items(event, spec.list_name))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ReduceTask(TaskSpec):
    function: ClassVar[str] = "reducer"
    phase: ClassVar[str] = REDUCE

    round: int = field(default=1, kw_only=True)
    partition: int = field(default=0, kw_only=True)
    group: int = field(default=0, kw_only=True)
    final: bool = field(default=False, kw_only=True)

    @property
    def list_name(self) -> str:
        return "inputs"

    def status_key(self) -> str:
        return reduce_status_key(self.step, self.round, self.partition, self.group)

    def describe(self) -> str:
        kind = "final reduce" if self.final else "reduce"
        return self._where(f"{kind} task (round {self.round}, partition {self.partition}, group {self.group})")

    def _task_fields(self) -> dict:
        return {"round": self.round, "partition": self.partition, "group": self.group, "final": self.final}

    def run_uri(self, token: str, name: str, arrow: bool = False) -> str:
        return reduce_run_uri(self.job_dir, self.step, self.round, self.partition, self.group, token, name, arrow)

    def part_uri(self, output: str) -> str:
        return part_uri(output, self.partition, self.job.output_format)

    @classmethod
    def from_event(cls, event: object) -> ReduceTask:
        task, common = cls._common(event, REDUCE)
        try:
            rnd, part, group = int(task["round"]), int(task["partition"]), int(task["group"])
        except (KeyError, TypeError, ValueError) as err:
            raise EventError(f"reduce task needs integer round/partition/group: {err}") from None
        if rnd < 1 or part < 0 or group < 0:
            raise EventError(f"reduce task coordinates out of range: {task!r}")
        return cls(**common, round=rnd, partition=part, group=group, final=bool(task.get("final")),
                   **cls._items(event, "inputs"))


SPECS: dict[str, type[TaskSpec]] = {MAP: MapTask, REDUCE: ReduceTask}


def task_from_event(event: object) -> TaskSpec:
    """The spec of any task event (its ``task.phase`` says which kind)."""
    phase = event.get("task", {}).get("phase") if isinstance(event, dict) and isinstance(
        event.get("task"), dict) else None
    if phase not in SPECS:
        raise EventError(f"event field 'task' must describe a map or reduce task, got phase {phase!r}")
    return SPECS[phase].from_event(event)  # type: ignore[attr-defined]


# -- status records ----------------------------------------------------------------------
#: Failure kinds, and whether a retry can help.
RETRYABLE = {
    "input": False,  # the input or the event is at fault: a retry reads the same input
    "job": False,  # a bug in the job's code (or code that cannot be imported)
    "cancelled": False,  # the driver or the runtime stopped the attempt
    "task": True,  # the task raised something else (a storage error, say): may pass next time
    "platform": True,  # the runtime lost the attempt: a timeout, out of memory, a crash
}
_WHY = {
    "input": "the input itself is at fault",
    "job": "a bug in the job's code, which a retry cannot fix",
}
#: Error types that runtimes report (Lambda's own spelling) when no handler record exists.
IMPORT_ERROR = "Runtime.ImportModuleError"
CANCELLED = "Runtime.Cancelled"
_RUNTIME_KINDS = {IMPORT_ERROR: "job", CANCELLED: "cancelled"}
_LEGACY_KINDS = {"TaskInputError": "input", "TaskJobError": "job"}


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed: its kind decides whether it is retried."""

    kind: str
    type: str
    message: str
    #: The handler's exception class (TaskError, TaskInputError, TaskJobError), as Lambda reports it.
    failure: str = "TaskError"
    traceback: str = ""

    def __post_init__(self) -> None:
        if self.kind not in RETRYABLE:
            raise ValueError(f"unknown failure kind {self.kind!r}: one of {', '.join(RETRYABLE)}")

    @property
    def retryable(self) -> bool:
        return RETRYABLE[self.kind]

    @property
    def text(self) -> str:
        """``Type: message``: the failure as the driver reports it."""
        return f"{self.type}: {self.message}"

    def verdict(self) -> str:
        """What happened to a task that failed this way without retries: ``failed (not retried: ...)``."""
        if self.kind == "cancelled":
            return "was cancelled"
        if self.retryable:
            return "failed"
        if self.type == IMPORT_ERROR:
            return "failed (not retried: the job's code cannot be imported)"
        return f"failed (not retried: {_WHY[self.kind]})"

    def to_dict(self) -> dict:
        return {"type": self.type, "message": self.message, "traceback": self.traceback,
                "failure": self.failure, "kind": self.kind, "retryable": self.retryable}

    @classmethod
    def from_dict(cls, data: dict) -> Failure:
        # Records of releases before ``kind`` existed name the handler's exception class.
        kind = data.get("kind") or _LEGACY_KINDS.get(data.get("failure", ""), "task")
        return cls(kind=kind, type=data["type"], message=data["message"],
                   failure=data.get("failure", "TaskError"), traceback=data.get("traceback", ""))

    @classmethod
    def from_runtime(cls, error_type: str, message: str) -> Failure:
        """A failure the runtime reports itself (no handler record): kind by Lambda's error type."""
        return cls(kind=_RUNTIME_KINDS.get(error_type, "platform"), type=error_type, message=message,
                   failure=error_type)


@dataclass
class StatusRecord:
    """A task attempt's record: ``succeeded`` (the commit) or ``failed`` (with its Failure)."""

    job_id: str
    task: dict
    state: str
    attempt: int
    attempt_token: str
    request_id: str | None = None
    #: A succeeded attempt's outputs and statistics (and anything else its handler reports).
    result: dict = field(default_factory=dict)
    error: Failure | None = None
    where: str | None = None
    duration_ms: float | None = None

    def to_dict(self) -> dict:
        record = {"job_id": self.job_id, "task": self.task, "state": self.state, "attempt": self.attempt,
                  "attempt_token": self.attempt_token, "request_id": self.request_id}
        if self.error is not None:
            record.update(error=self.error.to_dict(), where=self.where, duration_ms=self.duration_ms)
        return {**record, **self.result}

    @classmethod
    def from_dict(cls, data: dict) -> StatusRecord:
        known = {"job_id", "task", "state", "attempt", "attempt_token", "request_id", "error", "where",
                 "duration_ms"}
        error = data.get("error")
        return cls(
            job_id=data["job_id"], task=data["task"], state=data["state"], attempt=data["attempt"],
            attempt_token=data["attempt_token"], request_id=data.get("request_id"),
            result={k: v for k, v in data.items() if k not in known},
            error=Failure.from_dict(error) if isinstance(error, dict) else None,
            where=data.get("where"), duration_ms=data.get("duration_ms"),
        )
