"""The harness of the handler conformance suite: the only place that knows the implementation.

The tests drive a handler implementation through events (JSON, as docs/schemas/event.schema.json
describes them) and storage (files they read themselves); they import nothing of lambda_src.
This harness runs each implementation's handlers in the local runtime from a built package:
the Python ones (``lambda_src``) and the Node.js ones (``lambda_src/nodejs``), each with the
suite's jobs written in its language; every test runs against both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
PATIENCE_S = 60
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: The suite's jobs by name, in each language: what a job's ``ref`` in an event is. The first
#: names the module the package is built from; the package holds the others too.
JOBS = {
    "python": {"pairs": "userjobs.conformance:Pairs", "key-changing-combiner": "userjobs.lifetimes:KeyChangingCombiner"},
    "nodejs": {"pairs": "job/conformance.mjs", "key-changing-combiner": "job/keychanging.mjs"},
}
PACKAGE_JOB = {"python": JOBS["python"]["pairs"], "nodejs": str(FIXTURES / "nodejobs" / "conformance.mjs")}


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


EVENT = _validator("event.schema.json")
RECORD = _validator("status-record.schema.json")


class _Sent:
    """A task as the runtime takes it, sending exactly the event the test built.

    The runtime locates the task's status records through a task spec; an event the handler
    must refuse (a wrong version, say) is located as if it were valid, and sent as it is.
    """

    def __init__(self, event: dict) -> None:
        from lambda_src import contract

        self._event = event
        self._spec = contract.task_from_event({**event, "version": contract.EVENT_VERSION})

    def to_event(self) -> dict:
        return json.loads(json.dumps(self._event))

    def __getattr__(self, name: str):
        return getattr(self._spec, name)


class Implementation:
    """Invokes a handler with an event and reports the outcome as Lambda would."""

    def __init__(self, runtime, language: str) -> None:
        self.runtime = runtime
        self.language = language

    def ref(self, job: str) -> str:
        """The event's ``job.ref`` of the suite's job ``job`` in this implementation (a
        Python-only test names its Python job by its ref)."""
        return JOBS[self.language].get(job, job)

    def invoke(self, event: dict):
        request_id = self.runtime.invoke(_Sent(event))
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            for result in self.runtime.poll(1.0):
                if result.request_id == request_id:
                    return result
        raise AssertionError(f"no outcome of {event['task']} within {PATIENCE_S} s")


@pytest.fixture(scope="module", params=sorted(JOBS))
def implementation(request, fixture_jobs_path) -> Iterator[Implementation]:
    from airflow_provider_lambdamr.engine import packaging
    from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime

    if request.param == "nodejs":
        request.getfixturevalue("node")  # skipped, saying why, without Node.js
    with LocalRuntime(workers=1, timeout_s=PATIENCE_S) as runtime:
        runtime.deploy(packaging.build(PACKAGE_JOB[request.param]))
        yield Implementation(runtime, request.param)
