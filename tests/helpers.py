"""Helpers shared by tests: run a job on the local runtime, read a result back."""

from __future__ import annotations

import csv
import io

from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import storage as st


def run_job(workers: int = 2, progress=None, **kwargs) -> dict:
    spec = JobSpec(**kwargs)
    with LocalRuntime(workers=workers, memory_mb=spec.memory_mb, timeout_s=spec.timeout_s,
                      tracing=spec.tracing) as rt:
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
