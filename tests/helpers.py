"""Helpers shared by tests: run a job on the local runtime, read a result back."""

from __future__ import annotations

import csv
import io

from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import storage as st


def run_job(workers: int = 2, progress=None, env: dict[str, str] | None = None, **kwargs) -> dict:
    """Run a job on a local runtime of ``workers`` workers (``env``: added to their environment)."""
    spec = JobSpec(**kwargs)
    with LocalRuntime(workers=workers, memory_mb=spec.memory_mb, timeout_s=spec.timeout_s,
                      tracing=spec.tracing, env=env) as rt:
        return Driver(spec, rt, progress=progress).run()


def mapped_job(tmp_path, text: str, job_id: str) -> JobSpec:
    """A word-count job whose map phase is done and whose reduce phase has not run."""
    (tmp_path / "in.txt").write_text(text)
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
                   job_id=job_id, keep_intermediates=True)
    with LocalRuntime(workers=1) as rt:
        driver = Driver(spec, rt)
        driver.prepare()
        driver.run_map()
    return spec


def read_rows(output: str) -> list[list[str]]:
    """Every CSV row of every part file directly in ``output``."""
    output = st.normalize(output).rstrip("/")
    store = st.for_uri(output)
    rows: list[list[str]] = []
    for info in store.list(output):
        if st.basename(info.uri).startswith("part-") and st.relative_to(info.uri, output) == st.basename(info.uri):
            rows.extend(csv.reader(io.StringIO(store.read_bytes(info.uri).decode("utf-8"))))
    return rows


def read_counts(output: str) -> dict[str, int]:
    rows = read_rows(output)
    counts = {row[0]: int(row[1]) for row in rows}
    assert len(counts) == len(rows), "a key appears in more than one output row"
    return counts


def fake_pyarrow_wheel(directory, version: str = "99.0.0", python: str = "3.12",
                       platform: str = "manylinux_2_28_x86_64") -> str:
    """A small wheel named like pyarrow's (a module, a library, headers, tests): a layer fixture."""
    import zipfile

    cp = "cp" + python.replace(".", "")
    path = directory / f"pyarrow-{version}-{cp}-{cp}-{platform}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pyarrow/__init__.py", f"__version__ = {version!r}\n")
        zf.writestr("pyarrow/libarrow.so.9900", b"\x7fELF fake")
        zf.writestr("pyarrow/include/arrow/api.h", "// header\n")
        zf.writestr("pyarrow/src/arrow/python/common.cc", "// source\n")
        zf.writestr("pyarrow/tests/test_x.py", "")
        zf.writestr("pyarrow/lib.pyx", "# cython\n")
        zf.writestr(f"pyarrow-{version}.dist-info/METADATA", f"Name: pyarrow\nVersion: {version}\n")
    return str(path)


def stop_test_service(directory) -> None:
    """Stop the local function service a test started in ``directory`` (if any) and, failing
    that, kill it: no service or worker outlives the test that started it."""
    import contextlib
    import os
    import signal
    from pathlib import Path

    from airflow_provider_lambdamr.engine.runtimes import service

    pid_file = Path(directory) / service.PID_FILE
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(Exception):
        service.stop_service(directory, timeout_s=10)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
