"""X-Ray tracing for the driver: one segment per job, a subsegment per phase.

With tracing off nothing is imported or configured, so nothing is printed or slowed down.
With it on, sampling rules are not polled (every job is traced), boto3 calls become
subsegments, and segments go to ``AWS_XRAY_DAEMON_ADDRESS`` (default 127.0.0.1:2000) over
UDP: with no daemon listening they are simply dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

_configured = False


class JobTracer:
    """Trace one job; a no-op when disabled."""

    def __init__(self, enabled: bool, job_id: str, service: str = "lambdamr") -> None:
        self.enabled = enabled
        self.job_id = job_id
        self.service = service
        self.segment: Any = None
        self.trace_id: str | None = None  # kept after the segment ends, for links and summaries
        self._recorder: Any = None

    def __enter__(self) -> JobTracer:
        if not self.enabled:
            return self
        global _configured
        from aws_xray_sdk.core import patch, xray_recorder

        # The SDK logs a warning per missing context; the driver always has one.
        logging.getLogger("aws_xray_sdk").setLevel(logging.ERROR)
        xray_recorder.configure(
            service=self.service,
            sampling=False,
            context_missing="IGNORE_ERROR",
            daemon_address=os.environ.get("AWS_XRAY_DAEMON_ADDRESS", "127.0.0.1:2000"),
            plugins=(),
        )
        if not _configured:
            patch(("botocore",))
            _configured = True
        self._recorder = xray_recorder
        self.segment = xray_recorder.begin_segment(self.service, sampling=1)
        self.segment.put_annotation("job_id", self.job_id)
        self.trace_id = self.segment.trace_id
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.segment is None:
            return
        if exc is not None:
            self.segment.add_exception(exc, [])
        self._recorder.end_segment()
        self.segment = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[str | None]:
        """A subsegment for one phase; yields the trace header for the functions it invokes."""
        if self.segment is None:
            yield None
            return
        with self._recorder.in_subsegment(name) as sub:
            sub.put_annotation("job_id", self.job_id)
            yield f"Root={self.segment.trace_id};Parent={sub.id};Sampled=1"
