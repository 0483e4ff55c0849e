"""The ``lambdamr`` command: run jobs and generate benchmark data, without Airflow."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from airflow_provider_lambdamr import __version__
from airflow_provider_lambdamr.engine.runtimes import create_runtime
from airflow_provider_lambdamr.engine.spec import (
    JobSpec,
    Option,
    check_option,
    default_text,
    option_default,
    parse_size,
)

log = logging.getLogger("lambdamr")

def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _print_progress(p) -> None:
    size = (
        f", {_human_bytes(p.bytes_done)}/{_human_bytes(p.bytes_total)}" if p.bytes_total else ""
    )
    retries = f", {p.retries} retried" if p.retries else ""
    print(f"{p.phase}: {p.done}/{p.total} tasks{size}, {p.elapsed_s:.1f}s{retries}",
          file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lambdamr",
        description="Run MapReduce jobs on AWS Lambda or the embedded local runtime.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job")
    aws = run.add_argument_group("AWS Lambda (--runtime aws)")
    for f in spec_options():
        group = aws if f.name in _AWS_OPTIONS else run
        _add_option(group, f, **_CONFIG_GIVES.get(f.name, {}))
    run.add_argument("--config", metavar="DRIVERCONFIG",
                     help="the reference architecture's driverconfig.json: its input, job bucket, concurrency, "
                          "memory and functions become the job (options given here win); see the README")
    aws.add_argument("--region", metavar="REGION", help="AWS region (default: the AWS config's)")
    run.add_argument("--prices", metavar="JSON", help="price table overrides (a JSON file)")
    run.add_argument("--json", action="store_true", help="print the _SUCCESS summary as JSON")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_detach_option(run)

    deploy = sub.add_parser("deploy", help="create or update the job's Lambda functions")
    deploy.add_argument("job", help="a built-in job or package.module:ClassName")
    for f in spec_options():
        if f.name in ("memory_mb", "timeout_s", *_AWS_OPTIONS):
            _add_option(deploy, f, **({"required": True} if f.name == "role_arn" else {}))
    deploy.add_argument("--region", metavar="REGION", help="AWS region (default: the AWS config's)")

    iam = sub.add_parser("iam", help="least-privilege execution role for the functions")
    iam_sub = iam.add_subparsers(dest="iam_command", required=True)
    for name, text in (("policy", "print the execution policy"),
                       ("create-role", "create or update the role and its policy")):
        cmd = iam_sub.add_parser(name, help=text)
        if name == "create-role":
            cmd.add_argument("--name", required=True, help="role name")
        cmd.add_argument("--input", action="append", default=[], metavar="S3URI", help="readable input (repeatable)")
        cmd.add_argument("--job-root", required=True, metavar="S3URI", help="job state and intermediates")
        cmd.add_argument("--output", action="append", default=[], metavar="S3URI", help="result location (repeatable)")
        cmd.add_argument("--function-prefix", default="lambdamr", metavar="P")
        cmd.add_argument("--no-tracing", dest="tracing", action="store_false", help="omit X-Ray permissions")
        cmd.add_argument("--coordinator", action="store_true",
                         help="coordinator mode: add invoking the functions and ending the job's watchdog rule")
        cmd.add_argument("--region", metavar="REGION")
    delete_role = iam_sub.add_parser("delete-role", help="delete the role and its policies")
    delete_role.add_argument("--name", required=True)
    delete_role.add_argument("--region", metavar="REGION")

    clean = sub.add_parser("cleanup", help="delete a job's intermediates; prune old function versions")
    clean.add_argument("--job-dir", metavar="URI", help="the job directory (<job root>/<job id>)")
    clean.add_argument("--delete-job-dir", action="store_true",
                       help="also delete the manifest and status records (only what the job wrote)")
    clean.add_argument("--functions", action="store_true",
                       help="delete old aliases and versions of the functions, keeping the live one, and "
                            "the pyarrow layer versions lambdamr published that no remaining version lists")
    clean.add_argument("--keep-alias", metavar="ALIAS", help="the alias to keep (default: the newest)")
    clean.add_argument("--log-groups", action="store_true", help="delete the functions' log groups")
    clean.add_argument("--function-prefix", default="lambdamr", metavar="P")
    clean.add_argument("--region", metavar="REGION")

    _add_service_commands(sub)

    report = sub.add_parser("report", help="write a job's HTML report: a timeline of every task attempt")
    report.add_argument("job_dir", metavar="JOB_DIR", help="the job directory (<job root>/<job id>)")
    report.add_argument("--output", metavar="FILE_OR_URI",
                        help="where to write the page (default: JOB_DIR/report.html)")

    gen = sub.add_parser("amplab-gen", help="generate Amplab uservisits/rankings data (CSV text or Parquet)")
    gen.add_argument("--output", required=True, metavar="URI",
                     help="directory URI; tables go to OUTPUT/<table>/")
    gen.add_argument("--table", choices=("uservisits", "rankings", "both"), default="both")
    gen.add_argument("--rows", type=int, required=True, help="uservisits rows (or rankings rows)")
    gen.add_argument("--rankings-rows", type=int, default=None,
                     help="rankings rows (default: rows / 10)")
    gen.add_argument("--files", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--gzip", action="store_true", help="gzip the CSV files")
    gen.add_argument("--format", choices=("csv", "parquet"), default="csv", dest="fmt",
                     help="csv: text without a header; parquet: typed columns named as in the Amplab "
                          "schema, in row groups. Default: csv.")
    gen.add_argument("--skew", type=float, default=0.0,
                     help="fraction of uservisits rows from a few hot source IPs")
    return parser


#: The options ``lambdamr run --help`` lists under "AWS Lambda".
_AWS_OPTIONS = ("role_arn", "function_prefix", "architecture", "runtime_version", "tracing", "concurrency",
                "code_uri", "layer", "pyarrow_layer")


#: ``run``'s required arguments, which ``--config`` may give instead.
_CONFIG_GIVES = {"job": {"nargs": "?", "default": argparse.SUPPRESS}, "inputs": {"required": False},
                 "output": {"required": False}}


def spec_options() -> list[dataclasses.Field]:
    """The JobSpec fields: every one is a user option."""
    return list(dataclasses.fields(JobSpec))


def _add_option(parser: Any, f: dataclasses.Field, **overrides: Any) -> None:
    """The CLI form of the JobSpec field ``f``, from its ``Option`` metadata.

    An option not given stays out of the namespace (``argparse.SUPPRESS``), so the spec's
    own default applies: defaults are declared once, on the field.
    """
    opt: Option = f.metadata["option"]
    default = option_default(f)
    flag = opt.flag_for(f.name, default)
    told = " On by default: this flag turns it off." if default is True else default_text(f)
    kwargs: dict[str, Any] = {"help": opt.help + told, **opt.cli}
    if flag.startswith("-"):
        kwargs.update(dest=f.name, default=argparse.SUPPRESS)
    if isinstance(default, bool):
        kwargs["action"] = "store_false" if default else "store_true"
    elif opt.choices is not None:
        kwargs["choices"] = opt.choices()
    else:
        kwargs["metavar"] = opt.metavar
        if "action" not in kwargs:
            kwargs["type"] = _value_parser(f, flag)
    kwargs.update(overrides)
    parser.add_argument(flag, **kwargs)


def _value_parser(f: dataclasses.Field, flag: str) -> Callable[[str], Any]:
    """The argparse ``type`` of a JobSpec field: the text converted, then checked by the spec's rule."""
    opt: Option = f.metadata["option"]
    kind = str(f.type).split(" ")[0]
    convert = {"int": int, "float": float}.get(kind, str)

    def parse(text: str) -> Any:
        try:
            value = parse_size(text, flag) if opt.size else convert(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err) if opt.size else f"{text!r} is not a{'n' if kind == 'int' else ''} "
                                             f"{'integer' if kind == 'int' else 'number'}") from None
        try:
            return check_option(f, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The JobSpec options given on the command line, parsed."""
    values = {}
    for f in spec_options():
        if hasattr(args, f.name):
            parse = f.metadata["option"].from_cli
            values[f.name] = parse(getattr(args, f.name)) if parse else getattr(args, f.name)
    return values


def _lambda_client(region: str | None, **settings: Any) -> Callable[[], Any]:
    """A Lambda client factory; ``settings``: botocore ``Config`` keywords."""
    def client() -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session(region_name=region).client("lambda", config=Config(**settings))

    return client


def _cmd_deploy(args: argparse.Namespace) -> int:
    from airflow_provider_lambdamr.engine import packaging
    from airflow_provider_lambdamr.engine.spec import resolve_job_ref

    fields = {f.name: f for f in spec_options()}
    options = {name: option_default(f) for name, f in fields.items() if f.metadata["option"].runtime}
    options.update(_given_options(args))
    options = {name: check_option(fields[name], value) for name, value in options.items()}
    runtime = create_runtime("aws", options, lambda_client=_lambda_client(args.region))
    package = packaging.build(resolve_job_ref(args.job), tracing=options["tracing"])
    print(json.dumps(runtime.deploy(package), indent=2, sort_keys=True))
    return 0


def _cmd_iam(args: argparse.Namespace) -> int:
    import boto3

    from airflow_provider_lambdamr.engine import iam

    client = boto3.session.Session(region_name=args.region).client("iam")
    if args.iam_command == "delete-role":
        deleted = iam.delete_role(client, role_name=args.name)
        print(json.dumps({"role_name": args.name, "deleted": deleted}))
        return 0
    policy = iam.execution_policy(
        inputs=args.input, job_root=args.job_root, outputs=args.output,
        function_prefix=args.function_prefix, tracing=args.tracing, coordinator=args.coordinator,
    )
    if args.iam_command == "policy":
        print(json.dumps(policy, indent=2))
        return 0
    print(json.dumps(iam.create_role(client, role_name=args.name, policy=policy), indent=2, sort_keys=True))
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from lambda_src import storage as st

    if not (args.job_dir or args.functions or args.log_groups):
        raise ValueError("nothing to clean: give --job-dir, --functions and/or --log-groups")
    report: dict = {}
    if args.job_dir:
        from airflow_provider_lambdamr.engine import jobdir

        report.update(jobdir.cleanup(st.normalize(args.job_dir), delete_job_dir=args.delete_job_dir,
                                     missing_ok=False).to_dict())
    if args.functions or args.log_groups:
        import boto3

        from airflow_provider_lambdamr.engine.runtimes import aws

        session = boto3.session.Session(region_name=args.region)
        if args.functions:
            report["functions"] = aws.prune_functions(session.client("lambda"), args.function_prefix, args.keep_alias)
        if args.log_groups:
            report["log_groups"] = aws.delete_log_groups(session.client("logs"), args.function_prefix)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


class Interrupted(BaseException):
    """A signal asked ``lambdamr run`` to stop.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way
    swallows it, and the runtime's context manager still stops the workers.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: Signals that stop ``lambdamr run`` in order: workers killed, the job left resumable.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into ``Interrupted`` (only the main thread can)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        for sig in STOP_SIGNALS:  # a second signal must not interrupt the shutdown
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _job_spec(args: argparse.Namespace) -> JobSpec:
    return _job_and_client(args)[0]


def _job_and_client(args: argparse.Namespace) -> tuple[JobSpec, dict[str, Any]]:
    """The job the command line (and ``--config``) describe, and its Lambda client settings."""
    values = _given_options(args)
    client: dict[str, Any] = {"region": args.region}
    if getattr(args, "config", None):
        from airflow_provider_lambdamr.engine import driverconfig

        values, settings = driverconfig.spec_values(driverconfig.load(args.config), values, args.config, os.environ)
        client = {**settings, **({"region": args.region} if args.region else {})}
    flags = {"job": "JOB", "inputs": "--input", "output": "--output"}
    missing = [flag for name, flag in flags.items() if name not in values]
    if missing:
        raise ValueError(f"lambdamr run needs {', '.join(missing)} (or --config driverconfig.json)")
    if "partitions" not in values and values.get("runtime", "local") in ("local", "service"):
        values["partitions"] = values.get("workers") or os.cpu_count() or 1
    return JobSpec(**values), client


def _cmd_run(args: argparse.Namespace) -> int:
    from airflow_provider_lambdamr.engine.commit import format_map_modes
    from airflow_provider_lambdamr.engine.driver import Driver, JobFailed

    spec, client = _job_and_client(args)
    region = client.pop("region", None)
    runtime = create_runtime(spec.runtime, spec.runtime_options(), lambda_client=_lambda_client(region, **client))
    progress = None if args.quiet else _print_progress
    started = time.time()
    try:
        with _stop_on_signals(), runtime:
            from airflow_provider_lambdamr.engine.cost import PriceTable

            prices = PriceTable.from_file(args.prices) if args.prices else None
            driver = Driver(spec, runtime, progress=progress, prices=prices)
            summary = driver.launch() if spec.coordinator else driver.run()
    except JobFailed as err:
        print(f"lambdamr: job {spec.job_id} failed: {err}", file=sys.stderr)
        if err.resumable:
            print(f"lambdamr: job state is in {spec.job_dir}; rerun with --job-id {spec.job_id} "
                  f"to resume", file=sys.stderr)
        return 1
    except Interrupted as sig:
        stopped = {"local": "its workers were stopped",
                   "service": "invocations already sent to the local function service run to completion",
                   }.get(runtime.name, "invocations already sent to Lambda run to completion")
        print(f"lambdamr: job {spec.job_id} interrupted by {sig}; {stopped}", file=sys.stderr)
        print(f"lambdamr: job state is in {spec.job_dir}; rerun with --job-id {spec.job_id} "
              f"to resume", file=sys.stderr)
        return 128 + sig.signum
    if not isinstance(summary, dict):  # coordinator mode: launched
        return _print_launched(spec, summary, args.json)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    if driver.reused:
        print(f"job {summary['job_id']} already committed at {summary.get('finished_at')}; not recomputed "
              f"(pass --recompute to run it again); output: {summary['output']}")
        return 0
    c = summary["counters"]
    print(
        f"job {summary['job_id']} succeeded in {time.time() - started:.1f}s: "
        f"{summary['tasks']['map']} map tasks ({format_map_modes(summary['tasks']['map_modes'])}), "
        f"{summary['tasks']['reduce']} reduce tasks, "
        f"{c['input_records']:,} input records ({_human_bytes(c['input_bytes'])}), "
        f"{c['output_records']:,} output rows"
        + (f", {c['bad_records']:,} bad records skipped" if c["bad_records"] else "")
    )
    if summary.get("cost"):
        from airflow_provider_lambdamr.engine.cost import format_estimate

        print(format_estimate(summary["cost"]) + (" (projection for Lambda)" if spec.runtime == "local" else ""))
    print(f"output: {summary['output']} ({', '.join(summary['files'][:4])}"
          f"{', ...' if len(summary['files']) > 4 else ''})")
    return 0


def _print_launched(spec: JobSpec, outcome, as_json: bool) -> int:
    """What ``run --coordinator`` did: the job launched; its coordinator runs the rest."""
    failed = outcome.state == "failed"
    if as_json:
        print(json.dumps({"job_id": spec.job_id, "job_dir": spec.job_dir, "output": spec.output,
                          **outcome.to_dict()}, indent=2, sort_keys=True))
        return int(failed)
    if failed:
        from airflow_provider_lambdamr.engine import jobstate

        print(f"lambdamr: job {spec.job_id} failed: {(jobstate.read_failure(spec.job_dir) or {}).get('message')}",
              file=sys.stderr)
        return 1
    print(f"job {spec.job_id} launched in coordinator mode ({len(outcome.launched)} map invocations); its "
          f"coordinator runs the rest and commits to {spec.output}; follow it with: "
          f"lambdamr status {spec.job_dir} --wait")
    return 0


# -- the local function service, detached runs and job status --------------------------------
def _add_detach_option(run: argparse.ArgumentParser) -> None:
    run.add_argument("--detach", action="store_true",
                     help="with --runtime service: start the job in the background and return at once; "
                          "follow it with: lambdamr status JOB_DIR --wait")


def _add_service_commands(sub) -> None:
    service = sub.add_parser("service", help="the local function service (shared warm workers)")
    service_sub = service.add_subparsers(dest="service_command", required=True)
    start = service_sub.add_parser("start", help="start the service unless it runs; print its state")
    start.add_argument("--workers", type=int, default=None, help="warm workers per function (default: CPUs)")
    start.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                       help="exit after S seconds with nothing to do (default 600)")
    service_sub.add_parser("stop", help="stop the service and its workers")
    service_sub.add_parser("status", help="print the service's state (exit 3 when it is not running)")

    status = sub.add_parser("status", help="a job's state: succeeded (exit 0), failed (1) or running (3)")
    status.add_argument("job_dir", metavar="JOB_DIR", help="the job directory (<job root>/<job id>)")
    status.add_argument("--wait", action="store_true", help="wait until the job succeeds or fails")
    status.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="with --wait: give up (exit 3) after S seconds")


def _detached_dir():
    from airflow_provider_lambdamr.engine.runtimes import service

    path = service.prepare_dir(service.service_dir()) / "jobs"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _cmd_run_detached(args: argparse.Namespace, argv: list[str]) -> int:
    """Start a driver for the job in its own session (it outlives this command), on the service.

    The interim shape of a detached job: a background driver process advances it, and the
    service runs its invocations; ``lambdamr status JOB_DIR --wait`` follows it from anywhere.
    """
    import subprocess

    from airflow_provider_lambdamr.engine.runtimes import service

    spec = _job_spec(args)
    if spec.runtime != "service":
        raise ValueError("--detach needs --runtime service: a detached job's work must outlive this command")
    if argv.count("--detach") != 1:
        raise ValueError("spell --detach in full, once")
    with service.connect(workers=spec.workers):  # started here, so that its errors show here
        pass
    child_argv = [a for a in argv if a != "--detach"]
    if "job_id" not in _given_options(args):
        child_argv += ["--job-id", spec.job_id]
    where = _detached_dir()
    log_path = where / f"{spec.job_id}.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "airflow_provider_lambdamr.cli", *child_argv],
                                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
    finally:
        os.close(fd)
    record = {"job_id": spec.job_id, "job_dir": spec.job_dir, "output": spec.output, "pid": proc.pid,
              "log": str(log_path)}
    (where / f"{spec.job_id}.json").write_text(json.dumps(record))
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        print(f"job {spec.job_id} detached (driver pid {proc.pid}, log {log_path}); follow it with: "
              f"lambdamr status {spec.job_dir} --wait")
    return 0


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie nobody reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _job_state(job_dir: str) -> tuple[int, dict]:
    """(exit status, report) of the job in ``job_dir``: 0 succeeded, 1 failed, 3 not finished."""
    from airflow_provider_lambdamr.engine import jobdir
    from airflow_provider_lambdamr.engine.driver import phase_state
    from lambda_src import contract
    from lambda_src import storage as st

    job_id = st.basename(job_dir.rstrip("/"))
    report: dict = {"job_id": job_id, "job_dir": job_dir}
    job = phase_state(job_dir, "reduce")
    if job.complete:
        output = jobdir.require_job_dir(job_dir)["spec"]["output"]
        return 0, {**report, "state": "succeeded", "summary": jobdir.read_success(output).summary}
    if job.failure is not None:
        return 1, {**report, "state": "failed", "failure": job.failure}
    maps = phase_state(job_dir, "map")
    report.update(state="running" if maps.total else "pending", map={"done": maps.done, "total": maps.total})
    detached = _detached_dir() / f"{job_id}.json"
    coordinated = st.for_uri(job_dir).exists(contract.coordinator_uri(job_dir))  # its driver exits at launch
    if detached.exists() and not coordinated:
        record = json.loads(detached.read_text())
        # Read again after the pid: the driver may have committed, then exited, since the first read.
        if record["job_dir"] == job_dir and not _alive(record["pid"]) and not phase_state(job_dir, "reduce").complete:
            return 1, {**report, "state": "failed", "failure": {
                "message": f"the detached driver (pid {record['pid']}) exited without committing the job or "
                           f"recording a failure; see {record['log']}"}}
    return 3, report


def _cmd_status(args: argparse.Namespace) -> int:
    from lambda_src import storage as st

    job_dir = st.normalize(args.job_dir)
    end = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        code, report = _job_state(job_dir)
        if code != 3 or not args.wait or (end is not None and time.monotonic() >= end):
            print(json.dumps(report, indent=2, sort_keys=True))
            return code
        time.sleep(0.2)


def _cmd_service(args: argparse.Namespace) -> int:
    from airflow_provider_lambdamr.engine.runtimes import service

    if args.service_command == "stop":
        print(json.dumps({"stopped": service.stop_service()}))
        return 0
    if args.service_command == "status":
        directory = service.service_dir()
        if not directory.exists() or service.running_pid(directory) is None:
            print(json.dumps({"running": False, "dir": str(directory)}))
            return 3
        with service.ServiceClient(directory) as client:
            print(json.dumps({"running": True, **client.request("stats")}, indent=2, sort_keys=True))
        return 0
    idle = service.DEFAULT_IDLE_TIMEOUT_S if args.idle_timeout is None else args.idle_timeout
    with service.connect(workers=args.workers, idle_timeout_s=idle) as client:
        print(json.dumps({"running": True, **client.request("stats")}, indent=2, sort_keys=True))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from airflow_provider_lambdamr.engine import report
    from lambda_src import storage as st

    print(report.write(st.normalize(args.job_dir), args.output))
    return 0


def _cmd_amplab_gen(args: argparse.Namespace) -> int:
    from airflow_provider_lambdamr.engine import amplab_gen
    from lambda_src import storage as st

    tables = ("rankings", "uservisits") if args.table == "both" else (args.table,)
    out = st.normalize(args.output)
    rankings_rows = args.rankings_rows
    if rankings_rows is None:
        rankings_rows = max(1, args.rows // 10) if args.table != "rankings" else args.rows
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.time()
        if now - last[0] >= 2 or done == total:
            last[0] = now
            print(f"  {done:,}/{total:,} rows", file=sys.stderr, flush=True)

    for table in tables:
        rows = rankings_rows if table == "rankings" else args.rows
        print(f"generating {table}: {rows:,} rows in {args.files} files", file=sys.stderr)
        files = amplab_gen.generate(
            st.join(out, table),
            table=table,
            rows=rows,
            files=args.files,
            seed=args.seed,
            gzip=args.gzip,
            fmt=args.fmt,
            rankings_rows=rankings_rows if table == "uservisits" else None,
            skew=args.skew if table == "uservisits" else 0.0,
            progress=progress,
        )
        total = sum(f["bytes"] for f in files)
        print(f"{table}: {len(files)} files, {_human_bytes(total)} in {st.join(out, table)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "run" and args.detach:
            return _cmd_run_detached(args, sys.argv[1:] if argv is None else list(argv))
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "service":
            return _cmd_service(args)
        if args.command == "status":
            return _cmd_status(args)
        if args.command == "deploy":
            return _cmd_deploy(args)
        if args.command == "cleanup":
            return _cmd_cleanup(args)
        if args.command == "iam":
            return _cmd_iam(args)
        if args.command == "report":
            return _cmd_report(args)
        return _cmd_amplab_gen(args)
    except (ValueError, OSError) as err:
        print(f"lambdamr: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # Storage, packaging and AWS client errors: a message, not a traceback.
        from airflow_provider_lambdamr.engine.packaging import PackagingError
        from airflow_provider_lambdamr.engine.runtimes.aws import DeployError
        from lambda_src.storage import StorageError

        if isinstance(err, PackagingError | StorageError | DeployError) or type(err).__module__.startswith("botocore"):
            print(f"lambdamr: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("lambdamr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
