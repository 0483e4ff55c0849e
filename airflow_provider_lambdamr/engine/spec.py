"""JobSpec: everything that defines one job, validated once, before anything runs."""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from dataclasses import asdict, dataclass, field

from lambda_src import storage as st
from lambda_src.task import JOB_REF_RE, validate_job_id, validate_params

BUILTIN_JOBS: dict[str, str] = {
    "wordcount": "lambda_src.jobs.wordcount:WordCount",
    "amplab-1a": "lambda_src.jobs.amplab:Query1a",
    "amplab-1b": "lambda_src.jobs.amplab:Query1b",
    "amplab-1c": "lambda_src.jobs.amplab:Query1c",
    "amplab-2a": "lambda_src.jobs.amplab:Query2a",
    "amplab-2b": "lambda_src.jobs.amplab:Query2b",
    "amplab-2c": "lambda_src.jobs.amplab:Query2c",
    "amplab-3a": "lambda_src.jobs.amplab:Query3a",
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str | int, what: str = "size") -> int:
    """``64MB`` / ``64MiB`` / ``512k`` / ``1048576`` → bytes (binary multiples)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ValueError(f"invalid {what} {text!r}: use a number of bytes or e.g. 64MB, 512KB, 1GB")
        unit = (m.group(2) or "").upper().replace("I", "").rstrip("B")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"invalid {what} {text!r}: must be positive")
    return value


def resolve_job_ref(job: str) -> str:
    """A built-in job name or ``package.module:ClassName``."""
    if job in BUILTIN_JOBS:
        return BUILTIN_JOBS[job]
    if JOB_REF_RE.match(job):
        return job
    raise ValueError(
        f"unknown job {job!r}: use a built-in job ({', '.join(sorted(BUILTIN_JOBS))}) "
        f"or 'package.module:ClassName'"
    )


def new_job_id(name: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = re.sub(r"[^A-Za-z0-9]+", "-", name.rsplit(":", 1)[-1]).strip("-").lower() or "job"
    return f"{base}-{stamp}-{secrets.token_hex(3)}"


@dataclass
class JobSpec:
    """One MapReduce job. Inputs are named; a job with one input uses the name ``""``."""

    job: str
    inputs: dict[str, list[str]]
    output: str
    job_id: str = ""
    job_root: str = ""
    params: dict[str, str] = field(default_factory=dict)
    partitions: int = 1
    fan_in: int = 16
    split_size: int = 64 * 1024 * 1024
    max_files_per_task: int = 500
    memory_mb: int = 1536
    timeout_s: float = 900.0
    max_attempts: int = 3
    max_bad_records: int = 0
    max_line_bytes: int = 1024 * 1024
    vectorized: bool = True
    allow_empty_input: bool = False
    keep_intermediates: bool = False
    overwrite: bool = False
    #: When this job id already committed: delete the job's own state and result and run it
    #: again (False: return the committed summary without recomputing).
    recompute: bool = False
    tracing: bool = False
    #: The whole run of this driver must finish within this many seconds (None: no limit).
    job_timeout_s: float | None = None
    #: Second attempts for stragglers: after factor x the median task time, at least min_s.
    speculation: bool = True
    speculation_factor: float = 3.0
    speculation_min_s: float = 10.0

    def __post_init__(self) -> None:
        self.job_ref = resolve_job_ref(self.job)
        if not self.inputs or not any(self.inputs.values()):
            raise ValueError("at least one --input is required")
        for name in self.inputs:
            if name and not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", name):
                raise ValueError(f"invalid input name {name!r}: use letters, digits and _")
        self.inputs = {
            name: [st.normalize(u) for u in uris] for name, uris in self.inputs.items()
        }
        self.output = st.normalize(self.output).rstrip("/")
        self.job_root = st.normalize(self.job_root).rstrip("/") if self.job_root else st.join(
            self.output, "_jobs"
        )
        self.job_id = validate_job_id(self.job_id or new_job_id(self.job))
        self.params = validate_params(dict(self.params))
        for name, low, high in (
            ("partitions", 1, 100_000),
            ("fan_in", 2, 10_000),
            ("max_attempts", 1, 100),
            ("memory_mb", 128, 10_240),
            ("max_files_per_task", 1, 100_000),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        if not 0 < self.timeout_s <= 900:
            raise ValueError(f"timeout_s must be in (0, 900] seconds (Lambda's limit), got {self.timeout_s}")
        if self.max_bad_records < 0:
            raise ValueError(f"max_bad_records must be >= 0, got {self.max_bad_records}")
        self.split_size = parse_size(self.split_size, "split size")
        self.max_line_bytes = parse_size(self.max_line_bytes, "max line bytes")
        for uri in [u for uris in self.inputs.values() for u in uris]:
            if uri.rstrip("/") == self.output or uri.startswith(self.output + "/"):
                raise ValueError(f"input {uri} lies inside the output {self.output}")

    @property
    def job_dir(self) -> str:
        return st.join(self.job_root, self.job_id)

    def identity(self) -> dict:
        """What must match for a rerun with the same job id to resume this job."""
        return {
            "job": self.job_ref,
            "inputs": self.inputs,
            "output": self.output,
            "params": self.params,
            "partitions": self.partitions,
            "fan_in": self.fan_in,
            "split_size": self.split_size,
            "max_files_per_task": self.max_files_per_task,
        }

    def to_dict(self) -> dict:
        out = asdict(self)
        out["job_ref"] = self.job_ref
        return out

    @classmethod
    def from_dict(cls, data: dict, **overrides: object) -> JobSpec:
        """The spec a manifest recorded (``to_dict``), with run-time settings overridden."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)


def load_spec(job_dir: str, **overrides: object) -> JobSpec:
    """The spec of the job whose directory (``<job root>/<job id>``) is ``job_dir``."""
    import json

    uri = st.join(st.normalize(job_dir), "jobdata.json")
    try:
        manifest = json.loads(st.for_uri(uri).read_bytes(uri))
    except st.NotFound:
        raise ValueError(f"no job at {job_dir}: {uri} does not exist (has the map phase run?)") from None
    return JobSpec.from_dict(manifest["spec"], **overrides)
