"""A job's phase state, read asynchronously through one connection's own storage client.

The sensor and the triggers read the job's records through a :class:`JobStateReader` that
the hook builds for their connection: ``s3://`` through an aiobotocore client of the reader's
own (the amazon provider's ``get_async_conn()``), never through the process-global client of
``lambda_src.storage.for_uri``, which a triggerer shares between every trigger it runs. The
names read are the contract's (``lambda_src.contract``): the manifest, ``failed.json``, the
commit records under ``status/`` and the output's ``_SUCCESS``. Local paths are read with the
local storage, in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from airflow_provider_lambdamr.engine.driver import PhaseState
from lambda_src import contract
from lambda_src import storage as st

PHASES = (contract.MAP, contract.REDUCE)


class JobStateReader:
    """
    Reads the state of a job's phases. An async context manager: ``s3://`` goes through an
    aiobotocore S3 client opened on first use by ``open_s3`` (e.g. the connection's
    ``S3Hook.get_async_conn``) and closed on exit; local paths are read directly.
    """

    def __init__(self, open_s3: Callable[[], Awaitable[Any]]) -> None:
        self._open_s3 = open_s3
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> JobStateReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._client = None
        await self._stack.aclose()

    async def _s3(self) -> Any:
        if self._client is None:
            self._client = await self._stack.enter_async_context(await self._open_s3())
        return self._client

    async def _read(self, uri: str) -> bytes | None:
        """The bytes of the object at ``uri``; None when there is none."""
        if not st.is_s3(uri):
            try:
                return await asyncio.to_thread(st.for_uri(uri).read_bytes, uri)
            except st.NotFound:
                return None
        from botocore.exceptions import ClientError

        bucket, key = st.split_s3(uri)
        client = await self._s3()
        try:
            response = await client.get_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        async with response["Body"] as body:
            return await body.read()

    async def _list(self, directory: str) -> list[str]:
        """The URIs of every object below ``directory``."""
        if not st.is_s3(directory):
            return await asyncio.to_thread(lambda: [i.uri for i in st.for_uri(directory).list(directory)])
        bucket, key = st.split_s3(directory)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        client = await self._s3()
        uris = []
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            uris.extend(f"s3://{bucket}/{item['Key']}" for item in page.get("Contents", ()))
        return uris

    async def _read_json(self, uri: str) -> object | None:
        """The JSON at ``uri``; None when there is no such object."""
        data = await self._read(uri)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as err:
            raise ValueError(f"{uri} is not valid JSON ({len(data)} bytes): {err}") from None

    async def _committed(self, job_dir: str, prefix: str) -> int:
        """How many status keys under ``prefix`` have a commit record."""
        uris = await self._list(contract.status_dir(job_dir, prefix))
        return sum(contract.committed_status_key(job_dir, uri) is not None for uri in uris)

    async def settled(self, job_dir: str, awaited: list[tuple[str, int]]) -> list[str]:
        """Of the ``(status key, attempt)`` invocations ``awaited``, the status keys whose task
        committed (by any attempt) or whose awaited attempt left a failed-attempt record:
        one listing of each status directory they live in."""
        dirs = {contract.status_dir(job_dir, key.rsplit("/", 1)[0]) for key, _ in awaited}

        uris = {uri for listing in await asyncio.gather(*map(self._list, dirs)) for uri in listing}
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
