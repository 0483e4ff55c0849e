"""JobSpec: everything that defines one job, validated once, before anything runs."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import lambda_src
from airflow_provider_lambdamr.engine.packaging import NODE_EXTENSIONS
from lambda_src import storage as st
from lambda_src.contract import OUTPUT_FORMATS
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
#: Built-in jobs written in JavaScript, run by the Node.js handlers: their modules' paths
#: relative to the directory holding ``lambda_src``.
BUILTIN_JAVASCRIPT_JOBS: dict[str, str] = {
    "wordcount-js": "lambda_src/nodejs/jobs/wordcount.mjs",
    "amplab-2a-js": "lambda_src/nodejs/jobs/amplab2a.mjs",
}


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)
_NAMED_INPUT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.+)$")
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
    """A built-in job name, ``package.module:ClassName``, or a JavaScript module's absolute path."""
    if job in BUILTIN_JOBS:
        return BUILTIN_JOBS[job]
    if job in BUILTIN_JAVASCRIPT_JOBS:
        return os.path.join(os.path.dirname(os.path.dirname(lambda_src.__file__)), BUILTIN_JAVASCRIPT_JOBS[job])
    if job.endswith(NODE_EXTENSIONS):
        path = os.path.abspath(os.path.expanduser(job))
        if not os.path.isfile(path):
            raise ValueError(f"JavaScript job module {job} does not exist")
        return path
    if JOB_REF_RE.match(job):
        return job
    raise ValueError(
        f"unknown job {job!r}: use a built-in job ({', '.join(sorted({**BUILTIN_JOBS, **BUILTIN_JAVASCRIPT_JOBS}))}), "
        f"'package.module:ClassName' or the path of a JavaScript module (.mjs, .cjs, .js)"
    )


def _location(uri: str, what: str) -> str:
    """The canonical URI of an output or job root; the file system root is refused.

    A bucket root is a place of its own (``s3://results``), but ``/`` would put part files,
    ``_SUCCESS`` and job state among the system's top-level directories.
    """
    uri = st.normalize(uri)
    if st.is_root(uri) and not st.is_s3(uri):
        raise ValueError(f"the {what} must not be the file system root ({uri}): name a directory")
    return uri.rstrip("/") if st.is_s3(uri) else uri


def _inside(uri: str, base: str) -> bool:
    """Whether ``uri`` is ``base`` or below it, as named or through symbolic links."""
    return (st.relative_to(uri, base) is not None
            or st.relative_to(st.resolved(uri), st.resolved(base)) is not None)


def _refuse_overlaps(inputs: dict[str, list[str]], output: str, job_root: str, job_dir: str) -> None:
    """Refuse a job that would read its own results or state, or one object twice.

    Two named inputs may name the same data (a self-join reads it once per name); within
    one named input, a location listed twice or inside another is refused.
    """
    for uri in (u for uris in inputs.values() for u in uris):
        if _inside(uri, output):
            raise ValueError(f"input {uri} lies inside the output {output}")
        if _inside(output, uri):
            raise ValueError(f"the output {output} lies inside the input {uri}: a rerun would read its own results")
        if _inside(job_root, uri):
            raise ValueError(f"the job root {job_root} lies inside the input {uri}: a rerun would read its own state")
        if _inside(uri, job_dir):
            raise ValueError(f"input {uri} lies inside the job directory {job_dir}")
    for name, uris in inputs.items():
        label = f"input {name!r}" if name else "the input"
        for key in (_segments, lambda u: _segments(st.resolved(u))):
            # Sorted by segments, a location sorts right before the first one below it.
            ordered = sorted(uris, key=key)
            for a, b in itertools.pairwise(ordered):
                if _inside(a, b) and _inside(b, a):
                    same = "twice" if a == b else f"and {b}, the same location"
                    raise ValueError(f"{label} lists {a} {same}: its objects would be read twice")
                if _inside(b, a):
                    raise ValueError(f"{label} lists {b} and {a}, which holds it: its objects would be read twice")


def _segments(uri: str) -> tuple[str, ...]:
    """``uri`` as (kind, names...), for ordering locations so each precedes what it holds."""
    uri = st.normalize(uri)
    if st.is_s3(uri):
        bucket, key = st.split_s3(uri)
        return ("s3", bucket, *[p for p in key.split("/") if p])
    return ("file", *[p for p in st.local_path(uri).split("/") if p])


def _check_input_formats(named: dict[str, str], inputs: Mapping[str, list[str]]) -> dict[str, str]:
    from lambda_src import formats

    for name, fmt in named.items():
        formats.get(fmt)  # an unknown format is refused, naming the known ones
        if name and name not in inputs:
            raise ValueError(f"--input-format {name}={fmt} names no input (the inputs: "
                             f"{', '.join(n or '<unnamed>' for n in inputs)})")
    return named


def option_default(f: dataclasses.Field) -> Any:
    """The default of the JobSpec field ``f`` (``dataclasses.MISSING`` for a required one)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def default_text(f: dataclasses.Field) -> str:
    """`` Default: 64MB.``, or ``""`` when the help says it or there is nothing to say."""
    opt: Option = f.metadata["option"]
    default = option_default(f)
    if opt.default_text:
        return f" {opt.default_text}"
    if default in (None, "", {}) or default is dataclasses.MISSING:
        return ""
    if isinstance(default, bool):
        return " Default: on." if default else ""
    if opt.size:
        unit, size = next((u, n) for u, n in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024), ("", 1))
                          if default % n == 0)
        return f" Default: {default // size}{unit}."
    return f" Default: {default:g}." if isinstance(default, float) else f" Default: {default}."


def check_option(f: dataclasses.Field, value: Any) -> Any:
    """``value`` for the JobSpec field ``f``, checked against its ``Option`` (sizes parsed)."""
    opt: Option = f.metadata["option"]
    if value is None and f.default is None:
        return None
    if opt.size:
        return parse_size(value, f.name)
    if opt.choices is not None and value not in opt.choices():
        raise ValueError(f"{f.name} must be one of {', '.join(opt.choices())}, got {value!r}")
    if opt.low is None and opt.high is None:
        return value
    integer = str(f.type).startswith("int")
    low = -math.inf if opt.low is None else opt.low
    high = math.inf if opt.high is None else opt.high
    ok = low < value <= high if opt.above_low else low <= value <= high
    lowest = f"above {opt.low:g}" if opt.above_low else f"at least {opt.low:g}"
    span = f"{lowest} and at most {opt.high:g}" if opt.high is not None else lowest
    if integer and opt.low is not None and opt.high is not None:
        span = f"from {opt.low:g} to {opt.high:g}"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float) or not ok:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{f.name} must be {kind} {span}, got {value!r}")
    return value


def new_job_id(name: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = re.sub(r"[^A-Za-z0-9]+", "-", os.path.basename(name).rsplit(":", 1)[-1]).strip("-").lower() or "job"
    return f"{base}-{stamp}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Option:
    """How one JobSpec field is offered to users: ``lambdamr run`` flags and operator kwargs.

    The field's default is the default everywhere (the CLI leaves an option it was not given
    to the spec); ``JobSpec`` checks each value against ``low``/``high``/``choices``.
    """

    #: One sentence or two, for ``--help`` and the operators' docstrings.
    help: str
    low: float | None = None
    high: float | None = None
    #: Whether ``low`` itself is refused (a time limit of 0 s is no time limit).
    above_low: bool = False
    #: The allowed values, looked up when checked (registries live in other modules).
    choices: Callable[[], Sequence[str]] | None = None
    #: A byte size: ``64MB`` or a number of bytes.
    size: bool = False
    #: The CLI flag (default ``--name-with-dashes``; a bool that defaults to true gets
    #: ``--no-...``); a name without dashes is the positional argument.
    flag: str = ""
    metavar: str | None = None
    #: argparse keyword arguments beyond the generated ones, and the parser of the values.
    cli: Mapping[str, Any] = field(default_factory=dict)
    from_cli: Callable[[Any], Any] | None = None
    #: The operator keyword (default: the field name).
    kwarg: str = ""
    templated: bool = False
    #: Where and how the job runs (``engine.runtimes``): recorded in the manifest, so later
    #: tasks need only the job directory, and a later task may override it.
    runtime: bool = False
    #: Says what the default is, where the generated "Default: ..." would not say it all.
    default_text: str = ""

    def flag_for(self, name: str, default: object) -> str:
        if self.flag:
            return self.flag
        return ("--no-" if default is True else "--") + name.replace("_", "-")


def option(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, **meta: Any) -> Any:
    """A JobSpec field with its ``Option`` metadata."""
    metadata = {"option": Option(**meta)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_inputs(values: Sequence[str]) -> dict[str, list[str]]:
    """``--input [NAME=]URI`` values → ``{name: [uris]}`` (``""`` for unnamed ones)."""
    inputs: dict[str, list[str]] = {}
    for value in values:
        m = _NAMED_INPUT.match(value)
        name, uri = (m.group(1), m.group(2)) if m else ("", value)
        inputs.setdefault(name, []).append(uri)
    if "" in inputs and len(inputs) > 1:
        raise ValueError("mix of named (NAME=URI) and unnamed --input values: name them all")
    return inputs


def parse_input_formats(values: Sequence[str] | str | Mapping[str, str] | None) -> dict[str, str]:
    """``--input-format [NAME=]FORMAT`` values (or an operator's string or mapping) → ``{name: format}``;
    ``""`` names every input without a format of its own."""
    if values is None:
        return {}
    if isinstance(values, str):
        values = [values]
    if isinstance(values, Mapping):
        return {str(name): str(fmt) for name, fmt in values.items()}
    out: dict[str, str] = {}
    for value in values:
        m = _NAMED_INPUT.match(value)
        name, fmt = (m.group(1), m.group(2)) if m else ("", value)
        if name in out and out[name] != fmt:
            raise ValueError(f"--input-format names two formats for {name or 'the input'}: {out[name]} and {fmt}")
        out[name] = fmt
    return out


def parse_params(values: Sequence[str]) -> dict[str, str]:
    """``--param KEY=VALUE`` values → ``{key: value}``."""
    params = {}
    for value in values:
        name, sep, val = value.partition("=")
        if not sep or not name:
            raise ValueError(f"invalid --param {value!r}: expected KEY=VALUE")
        params[name] = val
    return params


def _runtime_names() -> Sequence[str]:
    from airflow_provider_lambdamr.engine.runtimes import RUNTIMES

    return tuple(RUNTIMES)


def _architectures() -> Sequence[str]:
    from airflow_provider_lambdamr.engine.packaging import ARCHITECTURES

    return ARCHITECTURES


def _runtime_versions() -> Sequence[str]:
    from airflow_provider_lambdamr.engine.packaging import RUNTIME_VERSIONS

    return RUNTIME_VERSIONS


@dataclass
class JobSpec:
    """One MapReduce job. Inputs are named; a job with one input uses the name ``""``.

    Every field's ``metadata["option"]`` (an ``Option``) declares its help text, CLI flag,
    operator keyword and bounds: ``lambdamr run`` and the operators are generated from it.
    """

    job: str = option(
        flag="job", templated=True,
        help=f"A built-in job ({', '.join(sorted({**BUILTIN_JOBS, **BUILTIN_JAVASCRIPT_JOBS}))}), package.module:ClassName, or the "
             f"path of a JavaScript job module (.mjs, .cjs, .js: run by the Node.js handlers).")
    inputs: dict[str, list[str]] = option(  # noqa: RUF009 - option() is dataclasses.field()
        flag="--input", metavar="[NAME=]URI", cli={"action": "append", "required": True},
        from_cli=parse_inputs, templated=True,
        help="Input objects, directories or s3:// prefixes, optionally named (NAME=URI; on the "
             "command line repeat the flag; operators take a string, a list, or {name: uri or [uris]}).")
    output: str = option(
        flag="--output", metavar="URI", cli={"required": True}, kwarg="output_uri", templated=True,
        help="Where the part-NNNNN files and _SUCCESS go.")
    input_format: dict[str, str] = option(  # noqa: RUF009 - option() is dataclasses.field()
        factory=dict, flag="--input-format", metavar="[NAME=]FORMAT", cli={"action": "append"},
        from_cli=parse_input_formats, templated=True,
        help="The input's format (text, jsonl, csv or parquet), or input NAME's (NAME=FORMAT; repeat the "
             "flag; operators take a string or {name: format}). Default: what the job declares, else "
             "each object's extension and first bytes.")
    job_id: str = option(
        "", metavar="ID", templated=True,
        help="Job id; reusing one resumes that job (default: generated; operators: from the DAG run).")
    job_root: str = option(
        "", metavar="URI", templated=True,
        help="Where job state and intermediates go (default: OUTPUT/_jobs).")
    params: dict[str, str] = option(  # noqa: RUF009 - option() is dataclasses.field()
        factory=dict, flag="--param", metavar="KEY=VALUE", cli={"action": "append"},
        from_cli=parse_params, kwarg="job_params", templated=True,
        help="Job parameters, part of the job's identity (on the command line repeat the flag).")
    partitions: int = option(
        1, low=1, high=100_000, metavar="R",
        help="Reduce partitions, i.e. result files.",
        default_text="Default: 1; lambdamr run on the local runtime: the worker count.")
    fan_in: int = option(16, low=2, high=10_000, metavar="F", help="Runs merged per reduce task per round.")
    split_size: int = option(64 * 1024 * 1024, size=True, metavar="SIZE", help="Bytes per map split, e.g. 64MB.")
    max_files_per_task: int = option(
        500, low=1, high=100_000, metavar="N", help="Most input files one map task reads.")
    memory_mb: int = option(1536, low=128, high=10_240, metavar="MB", runtime=True,
                            help="Function memory, MB.")
    timeout_s: float = option(900.0, low=0, above_low=True, high=900, metavar="S", runtime=True,
                              help="Function timeout, seconds (Lambda's limit is 900).")
    max_attempts: int = option(3, low=1, high=100, metavar="N", help="Attempts per task before the job fails.")
    max_bad_records: int = option(0, low=0, metavar="N",
                                  help="Unparsable records to skip (counted) before failing.")
    max_line_bytes: int = option(1024 * 1024, size=True, metavar="SIZE", help="Longest line accepted.")
    vectorized: bool = option(True, help="Use the job's pyarrow mapper when pyarrow is available.")
    output_format: str = option(
        "csv", choices=lambda: tuple(OUTPUT_FORMATS), metavar="FORMAT",
        help="The result files' format: csv (no header), jsonl (one JSON object per row) or parquet "
             "(columns typed as the job declares or as the values are); one file per partition.")
    allow_empty_input: bool = option(False, help="Give an empty result for empty input instead of failing.")
    keep_intermediates: bool = option(False, help="Keep map and reduce runs after success.")
    overwrite: bool = option(
        False, help="Replace a result another job left in the output (deletes only the files its "
                    "_SUCCESS lists, and that _SUCCESS).")
    recompute: bool = option(
        False, help="Run a job id that already committed again from scratch (its state and result "
                    "are deleted first); without it, rerunning a committed job returns its result.")
    tracing: bool = option(False, flag="--trace", runtime=True,
                           help="X-Ray tracing (segments go to AWS_XRAY_DAEMON_ADDRESS; works locally too).")
    job_timeout_s: float | None = option(
        None, low=0, above_low=True, metavar="S",
        help="Fail (resumably) if the job has not finished after this many seconds (default: no limit).")
    speculation: bool = option(True, help="Second attempts for stragglers (after speculation_factor times "
                                          "the median task time, at least speculation_min_s).")
    speculation_factor: float = option(
        3.0, low=1, metavar="X",
        help="A task still running after this many times the median task time of its phase "
             "gets a second attempt.")
    speculation_min_s: float = option(
        10.0, low=0, metavar="S", help="A straggler's second attempt waits at least this many seconds.")
    coordinator: bool = option(
        False, flag="--coordinator",
        help="Coordinator mode (runtimes service and aws): the driver launches the map tasks and returns; a "
             "coordinator function, invoked as each task ends, runs the rest and commits "
             "(follow the job with: lambdamr status JOB_DIR --wait).")
    runtime: str = option("local", choices=_runtime_names, runtime=True, templated=True,
                          help="Where functions run: local (worker processes) or aws (Lambda).")
    workers: int | None = option(None, low=1, metavar="N", runtime=True,
                                 help="Local worker processes (default: CPU count).")
    role_arn: str | None = option(None, flag="--role", metavar="ARN", runtime=True, templated=True,
                                  help="The functions' execution role (aws runtime).")
    function_prefix: str = option("lambdamr", metavar="P", runtime=True, templated=True,
                                  help="Functions are P-mapper and P-reducer.")
    architecture: str = option("x86_64", choices=_architectures, runtime=True,
                               help="Function architecture (aws runtime).")
    runtime_version: str = option("python3.12", choices=_runtime_versions, runtime=True,
                                  help="Lambda Python runtime (aws runtime).")
    concurrency: int = option(100, low=1, metavar="N", runtime=True,
                              help="Lambda invocations in flight at once (aws runtime).")
    code_uri: str | None = option(None, metavar="S3URI", runtime=True,
                                  help="s3:// prefix for zips above Lambda's direct upload limit (aws runtime).")
    layer: str | None = option(None, metavar="ARN", runtime=True, templated=True,
                               help="A Lambda layer version holding pyarrow (e.g. AWS SDK for pandas) for the "
                                    "functions, so vectorized jobs run vectorized (aws runtime).")
    pyarrow_layer: bool = option(
        False, runtime=True,
        help="Build the pinned pyarrow into a Lambda layer for the functions' architecture and Python, "
             "publish it once per content hash (through --code-uri: it is above the direct upload "
             "limit) and attach it (aws runtime).")

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
        self.output = _location(self.output, "output")
        self.job_root = _location(self.job_root, "job root") if self.job_root else st.join(self.output, "_jobs")
        self.job_id = validate_job_id(self.job_id or new_job_id(self.job))
        self.params = validate_params(dict(self.params))
        self.input_format = _check_input_formats(parse_input_formats(self.input_format), self.inputs)
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_option(f, getattr(self, f.name)))
        _refuse_overlaps(self.inputs, self.output, self.job_root, self.job_dir)
        if self.coordinator and self.runtime == "local":
            raise ValueError("coordinator mode needs a runtime whose functions outlive the driver: "
                             "--runtime service or aws, not local")

    def runtime_options(self) -> dict[str, Any]:
        """What ``engine.runtimes.create_runtime`` takes: the fields marked ``runtime``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["option"].runtime}

    @property
    def job_dir(self) -> str:
        return st.join(self.job_root, self.job_id)

    def identity(self) -> dict:
        """What must match for a rerun with the same job id to resume this job."""
        named = {"input_format": self.input_format} if self.input_format else {}
        return {
            **named,
            "job": self.job_ref,
            "inputs": self.inputs,
            "output": self.output,
            "params": self.params,
            "partitions": self.partitions,
            "fan_in": self.fan_in,
            "split_size": self.split_size,
            "max_files_per_task": self.max_files_per_task,
            "output_format": self.output_format,
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

    from lambda_src.contract import manifest_uri

    uri = manifest_uri(st.normalize(job_dir))
    try:
        manifest = json.loads(st.for_uri(uri).read_bytes(uri))
    except st.NotFound:
        raise ValueError(f"no job at {job_dir}: {uri} does not exist (has the map phase run?)") from None
    return JobSpec.from_dict(manifest["spec"], **overrides)
