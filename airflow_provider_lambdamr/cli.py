"""The ``lambdamr`` command: run jobs and generate benchmark data, without Airflow."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from airflow_provider_lambdamr import __version__
from airflow_provider_lambdamr.engine.spec import BUILTIN_JOBS, JobSpec, parse_size

log = logging.getLogger("lambdamr")

_NAMED_INPUT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.+)$")


def _parse_inputs(values: Sequence[str]) -> dict[str, list[str]]:
    inputs: dict[str, list[str]] = {}
    for value in values:
        m = _NAMED_INPUT.match(value)
        name, uri = (m.group(1), m.group(2)) if m else ("", value)
        inputs.setdefault(name, []).append(uri)
    if "" in inputs and len(inputs) > 1:
        raise ValueError("mix of named (NAME=URI) and unnamed --input values: name them all")
    return inputs


def _parse_params(values: Sequence[str]) -> dict[str, str]:
    params = {}
    for value in values:
        name, sep, val = value.partition("=")
        if not sep or not name:
            raise ValueError(f"invalid --param {value!r}: expected KEY=VALUE")
        params[name] = val
    return params


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
    run.add_argument(
        "job",
        help=f"a built-in job ({', '.join(sorted(BUILTIN_JOBS))}) or package.module:ClassName",
    )
    run.add_argument("--input", action="append", required=True, metavar="[NAME=]URI",
                     help="input object, directory or s3:// prefix (repeatable)")
    run.add_argument("--output", required=True, metavar="URI", help="where part files go")
    run.add_argument("--job-root", metavar="URI",
                     help="where job state and intermediates go (default: OUTPUT/_jobs)")
    run.add_argument("--runtime", choices=("local", "aws"), default="local")
    run.add_argument("--workers", type=int, default=None,
                     help="local worker processes (default: CPU count)")
    run.add_argument("--partitions", type=int, default=None, metavar="R",
                     help="reduce partitions = output part files (default: the local worker "
                          "count; 1 on aws)")
    run.add_argument("--fan-in", type=int, default=16, metavar="F",
                     help="runs merged per reduce task per round (default 16)")
    run.add_argument("--split-size", default="64MB", metavar="SIZE",
                     help="bytes per map split, e.g. 64MB (default 64MB)")
    run.add_argument("--memory-mb", type=int, default=1536, metavar="MB")
    run.add_argument("--timeout-s", type=float, default=900.0, metavar="S")
    run.add_argument("--max-attempts", type=int, default=3, metavar="N")
    run.add_argument("--no-speculation", dest="speculation", action="store_false",
                     help="no second attempts for stragglers (3x the median task time, >= 10 s)")
    run.add_argument("--job-timeout-s", type=float, default=None, metavar="S",
                     help="fail (resumably) if the job has not finished after S seconds")
    run.add_argument("--max-bad-records", type=int, default=0, metavar="N",
                     help="unparsable records to skip (counted) before failing (default 0)")
    run.add_argument("--max-line-bytes", default="1MB", metavar="SIZE",
                     help="longest line accepted (default 1MB)")
    run.add_argument("--job-id", default="", metavar="ID",
                     help="job id; reusing one resumes that job (default: generated)")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="job parameter (repeatable)")
    run.add_argument("--no-vectorized", dest="vectorized", action="store_false",
                     help="use the record-mode mapper even when pyarrow is available")
    run.add_argument("--allow-empty-input", action="store_true",
                     help="produce an empty result for empty input instead of failing")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a result another job left in --output (deletes only the files "
                          "its _SUCCESS lists, and that _SUCCESS)")
    run.add_argument("--recompute", action="store_true",
                     help="run a job id that already committed again from scratch (deletes its "
                          "own state and result first)")
    run.add_argument("--keep-intermediates", action="store_true",
                     help="keep map and reduce runs after success")
    _add_aws_options(run)
    run.add_argument("--prices", metavar="JSON", help="price table overrides (a JSON file)")
    run.add_argument("--json", action="store_true", help="print the _SUCCESS summary as JSON")
    run.add_argument("--quiet", action="store_true", help="no progress lines")

    deploy = sub.add_parser("deploy", help="create or update the job's Lambda functions")
    deploy.add_argument("job", help="a built-in job or package.module:ClassName")
    deploy.add_argument("--memory-mb", type=int, default=1536, metavar="MB")
    deploy.add_argument("--timeout-s", type=float, default=900.0, metavar="S")
    _add_aws_options(deploy, role_required=True)

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
        cmd.add_argument("--region", metavar="REGION")
    delete_role = iam_sub.add_parser("delete-role", help="delete the role and its policies")
    delete_role.add_argument("--name", required=True)
    delete_role.add_argument("--region", metavar="REGION")

    clean = sub.add_parser("cleanup", help="delete a job's intermediates; prune old function versions")
    clean.add_argument("--job-dir", metavar="URI", help="the job directory (<job root>/<job id>)")
    clean.add_argument("--delete-job-dir", action="store_true",
                       help="also delete the manifest and status records (only what the job wrote)")
    clean.add_argument("--functions", action="store_true",
                       help="delete old aliases and versions of the functions, keeping the live one")
    clean.add_argument("--keep-alias", metavar="ALIAS", help="the alias to keep (default: the newest)")
    clean.add_argument("--log-groups", action="store_true", help="delete the functions' log groups")
    clean.add_argument("--function-prefix", default="lambdamr", metavar="P")
    clean.add_argument("--region", metavar="REGION")

    report = sub.add_parser("report", help="write a job's HTML report: a timeline of every task attempt")
    report.add_argument("job_dir", metavar="JOB_DIR", help="the job directory (<job root>/<job id>)")
    report.add_argument("--output", metavar="FILE_OR_URI",
                        help="where to write the page (default: JOB_DIR/report.html)")

    gen = sub.add_parser("amplab-gen", help="generate Amplab uservisits/rankings text data")
    gen.add_argument("--output", required=True, metavar="URI",
                     help="directory URI; tables go to OUTPUT/<table>/")
    gen.add_argument("--table", choices=("uservisits", "rankings", "both"), default="both")
    gen.add_argument("--rows", type=int, required=True, help="uservisits rows (or rankings rows)")
    gen.add_argument("--rankings-rows", type=int, default=None,
                     help="rankings rows (default: rows / 10)")
    gen.add_argument("--files", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--gzip", action="store_true")
    gen.add_argument("--skew", type=float, default=0.0,
                     help="fraction of uservisits rows from a few hot source IPs")
    return parser


def _add_aws_options(parser: argparse.ArgumentParser, role_required: bool = False) -> None:
    aws = parser.add_argument_group("AWS Lambda (--runtime aws)")
    aws.add_argument("--role", required=role_required, metavar="ARN", help="the functions' execution role")
    aws.add_argument("--function-prefix", default="lambdamr", metavar="P",
                     help="functions are P-mapper and P-reducer (default lambdamr)")
    aws.add_argument("--architecture", choices=("x86_64", "arm64"), default="x86_64")
    aws.add_argument("--runtime-version", choices=("python3.11", "python3.12", "python3.13"),
                     default="python3.12")
    aws.add_argument("--trace", action="store_true",
                     help="X-Ray tracing (segments go to AWS_XRAY_DAEMON_ADDRESS; works locally too)")
    aws.add_argument("--concurrency", type=int, default=100, metavar="N",
                     help="Lambda invocations in flight at once (default 100)")
    aws.add_argument("--code-uri", metavar="S3URI", help="s3:// prefix for zips above 50 MB")
    aws.add_argument("--region", metavar="REGION", help="AWS region (default: the AWS config's)")


def _aws_runtime(args: argparse.Namespace, memory_mb: int, timeout_s: float):
    import boto3

    from airflow_provider_lambdamr.engine.runtimes.aws import AwsRuntime

    if not args.role:
        raise ValueError("--runtime aws needs --role ARN (see: lambdamr iam create-role)")
    client = boto3.session.Session(region_name=args.region).client("lambda")
    return AwsRuntime(
        client, role_arn=args.role, function_prefix=args.function_prefix, memory_mb=memory_mb,
        timeout_s=timeout_s, architecture=args.architecture, runtime_version=args.runtime_version,
        tracing=args.trace, concurrency=args.concurrency, code_uri=args.code_uri,
    )


def _cmd_deploy(args: argparse.Namespace) -> int:
    from airflow_provider_lambdamr.engine import packaging
    from airflow_provider_lambdamr.engine.spec import resolve_job_ref

    runtime = _aws_runtime(args, args.memory_mb, args.timeout_s)
    package = packaging.build(resolve_job_ref(args.job), tracing=args.trace)
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
        function_prefix=args.function_prefix, tracing=args.tracing,
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


def _cmd_run(args: argparse.Namespace) -> int:
    from airflow_provider_lambdamr.engine.driver import Driver, JobFailed

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    workers = args.workers or os.cpu_count() or 1
    partitions = args.partitions
    if partitions is None:
        partitions = workers if args.runtime == "local" else 1
    spec = JobSpec(
        job=args.job,
        inputs=_parse_inputs(args.input),
        output=args.output,
        job_id=args.job_id,
        job_root=args.job_root or "",
        params=_parse_params(args.param),
        partitions=partitions,
        fan_in=args.fan_in,
        split_size=parse_size(args.split_size, "--split-size"),
        memory_mb=args.memory_mb,
        timeout_s=args.timeout_s,
        max_attempts=args.max_attempts,
        max_bad_records=args.max_bad_records,
        max_line_bytes=parse_size(args.max_line_bytes, "--max-line-bytes"),
        vectorized=args.vectorized,
        allow_empty_input=args.allow_empty_input,
        keep_intermediates=args.keep_intermediates,
        overwrite=args.overwrite,
        recompute=args.recompute,
        tracing=args.trace,
        job_timeout_s=args.job_timeout_s,
        speculation=args.speculation,
    )
    runtime = _make_runtime(args, spec, workers)
    progress = None if args.quiet else _print_progress
    started = time.time()
    try:
        with _stop_on_signals(), runtime:
            from airflow_provider_lambdamr.engine.cost import PriceTable

            prices = PriceTable.from_file(args.prices) if args.prices else None
            driver = Driver(spec, runtime, progress=progress, prices=prices)
            summary = driver.run()
    except JobFailed as err:
        print(f"lambdamr: job {spec.job_id} failed: {err}", file=sys.stderr)
        if err.resumable:
            print(f"lambdamr: job state is in {spec.job_dir}; rerun with --job-id {spec.job_id} "
                  f"to resume", file=sys.stderr)
        return 1
    except Interrupted as sig:
        stopped = ("its workers were stopped" if runtime.name == "local"
                   else "invocations already sent to Lambda run to completion")
        print(f"lambdamr: job {spec.job_id} interrupted by {sig}; {stopped}", file=sys.stderr)
        print(f"lambdamr: job state is in {spec.job_dir}; rerun with --job-id {spec.job_id} "
              f"to resume", file=sys.stderr)
        return 128 + sig.signum
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
        f"{summary['tasks']['map']} map tasks, {summary['tasks']['reduce']} reduce tasks, "
        f"{c['input_records']:,} input records ({_human_bytes(c['input_bytes'])}), "
        f"{c['output_records']:,} output rows"
        + (f", {c['bad_records']:,} bad records skipped" if c["bad_records"] else "")
    )
    if summary.get("cost"):
        from airflow_provider_lambdamr.engine.cost import format_estimate

        print(format_estimate(summary["cost"]) + (" (projection for Lambda)" if args.runtime == "local" else ""))
    print(f"output: {summary['output']} ({', '.join(summary['files'][:4])}"
          f"{', ...' if len(summary['files']) > 4 else ''})")
    return 0


def _make_runtime(args: argparse.Namespace, spec: JobSpec, workers: int):
    if args.runtime == "aws":
        return _aws_runtime(args, spec.memory_mb, spec.timeout_s)
    from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime

    return LocalRuntime(workers=workers, memory_mb=spec.memory_mb, timeout_s=spec.timeout_s,
                        tracing=spec.tracing)


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
        if args.command == "run":
            return _cmd_run(args)
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
        from lambda_src.storage import StorageError

        if isinstance(err, PackagingError | StorageError) or type(err).__module__.startswith("botocore"):
            print(f"lambdamr: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("lambdamr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
