"""A job's phase state, read asynchronously through one connection's own storage client.

The sensor and the trigger read the job's records through a :class:`JobStateReader` that the
hook builds for their connection: never through the process-global client of
``lambda_src.storage.for_uri``, which a triggerer shares between every trigger it runs. The
names read are the contract's (``lambda_src.contract``): the manifest, ``failed.json``, the
commit records under ``status/`` and the output's ``_SUCCESS``.

The storage calls are blocking (boto3), and so is making the client (it reads the
connection): each runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import cached_property
from typing import Any

from airflow_provider_lambdamr.engine.driver import PhaseState
from lambda_src import contract
from lambda_src import storage as st

PHASES = (contract.MAP, contract.REDUCE)


class JobStateReader:
    """
    Reads the state of a job's phases: ``s3://`` through an S3 client of its own, made on
    first use by ``s3_client`` (e.g. the connection's hook), local paths directly.
    """

    def __init__(self, s3_client: Callable[[], Any]) -> None:
        self._s3_client = s3_client

    @cached_property
    def _s3(self) -> st.S3Storage:
        return st.S3Storage(client=self._s3_client())

    def _store(self, uri: str) -> st.Storage:
        return self._s3 if st.is_s3(uri) else st.for_uri(uri)

    async def _read_json(self, uri: str) -> object | None:
        """The JSON at ``uri``; None when there is no such object."""
        try:
            data = await asyncio.to_thread(lambda: self._store(uri).read_bytes(uri))
        except st.NotFound:
            return None
        try:
            return json.loads(data)
        except ValueError as err:
            raise ValueError(f"{uri} is not valid JSON ({len(data)} bytes): {err}") from None

    async def _committed(self, job_dir: str, prefix: str) -> int:
        """How many status keys under ``prefix`` have a commit record."""
        where = contract.status_dir(job_dir, prefix)
        items = await asyncio.to_thread(lambda: list(self._store(where).list(where)))
        return sum(contract.committed_status_key(job_dir, i.uri) is not None for i in items)

    async def settled(self, job_dir: str, awaited: list[tuple[str, int]]) -> list[str]:
        """Of the ``(status key, attempt)`` invocations ``awaited``, the status keys whose task
        committed (by any attempt) or whose awaited attempt left a failed-attempt record:
        one listing of each status directory they live in."""
        dirs = {contract.status_dir(job_dir, key.rsplit("/", 1)[0]) for key, _ in awaited}

        def listing() -> set[str]:
            return {i.uri for d in dirs for i in self._store(d).list(d)}

        uris = await asyncio.to_thread(listing)
        out = []
        for key, attempt in awaited:
            failed = contract.failed_attempt_prefix(job_dir, key, attempt)
            if contract.status_uri(job_dir, key) in uris or any(u.startswith(failed) for u in uris):
                out.append(key)
        return sorted(set(out))

    async def phase_state(self, job_dir: str, phase: str) -> PhaseState:
        """The state of ``phase`` (``map``, or ``reduce``: the whole job) of the job in ``job_dir``."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        manifest = await self._read_json(contract.manifest_uri(job_dir))
        if manifest is None:
            return PhaseState(phase, 0, 0, False)
        failure = await self._read_json(contract.failure_uri(job_dir))
        if phase == contract.MAP:
            total = len(manifest["tasks"])
            done = await self._committed(job_dir, contract.status_prefix(0, contract.MAP))
            return PhaseState(phase, done, total, done >= total, failure)
        try:
            success = await self._read_json(contract.success_uri(manifest["spec"]["output"]))
        except ValueError:  # a _SUCCESS that is not JSON is not this job's result
            success = None
        complete = isinstance(success, dict) and success.get("job_id") == manifest["job_id"]
        total = manifest.get("final_partitions", manifest["spec"]["partitions"])
        return PhaseState(phase, total if complete else 0, total, complete, failure)
