"""The bridge from Airflow connections to the engine."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from airflow_provider_lambdamr.engine.driver import Driver, Progress
from airflow_provider_lambdamr.engine.runtimes import Runtime, create_runtime
from airflow_provider_lambdamr.engine.spec import JobSpec
from airflow_provider_lambdamr.hooks.job_state import JobStateReader
from lambda_src import storage as st


class LambdaMapReduceHook(BaseHook):
    """
    Build runtimes and drivers for LambdaMR jobs from an AWS connection.

    ``s3://`` storage goes through the amazon provider's ``S3Hook``, so the connection's
    credentials, region, ``endpoint_url``, ``verify`` and botocore config all apply; the
    local runtime's worker processes get the same credentials and endpoint through their
    environment (never through logs).

    :param aws_conn_id: The Airflow AWS connection; ``None`` uses boto3's default chain.
    :param region_name: AWS region; overrides the connection's.
    :param verify: Whether to verify TLS certificates, or a CA bundle path.
    :param botocore_config: botocore client configuration, as a dict.
    """

    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    conn_type = "aws"
    hook_name = "LambdaMR"

    def __init__(
        self,
        *,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    @cached_property
    def s3_hook(self):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            config=self.botocore_config,
        )

    def job_state_reader(self) -> JobStateReader:
        """A reader of jobs' phase state (an async context manager) through an aiobotocore S3
        client of its own, from the connection's ``S3Hook.get_async_conn``: not the process's."""
        return JobStateReader(self.s3_hook.get_async_conn)

    def configure_storage(self, spec: JobSpec) -> None:
        """Route this process's ``s3://`` access through the connection, if the job uses S3."""
        self.configure_storage_for(*self._uris(spec))

    def configure_storage_for(self, *uris: str) -> None:
        if any(st.is_s3(u) for u in uris):
            st.set_s3_client(self.s3_hook.conn)

    @staticmethod
    def _uris(spec: JobSpec) -> list[str]:
        return [u for us in spec.inputs.values() for u in us] + [spec.output, spec.job_root]

    def _uses_s3(self, spec: JobSpec) -> bool:
        return any(st.is_s3(u) for u in self._uris(spec))

    def worker_env(self, spec: JobSpec) -> dict[str, str]:
        """Environment that gives local worker processes the connection's S3 access."""
        if not self._uses_s3(spec):
            return {}
        env: dict[str, str] = {}
        endpoint = self.s3_hook.conn_config.get_service_endpoint_url("s3")
        if endpoint:
            env["AWS_ENDPOINT_URL_S3"] = endpoint
        region = self.s3_hook.conn.meta.region_name
        if region:
            env["AWS_DEFAULT_REGION"] = region
            env["AWS_REGION"] = region
        creds = self.s3_hook.get_session().get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            env["AWS_ACCESS_KEY_ID"] = frozen.access_key
            env["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
            if frozen.token:
                env["AWS_SESSION_TOKEN"] = frozen.token
        if self.verify is False:
            env["LAMBDAMR_S3_VERIFY"] = "false"
        elif isinstance(self.verify, str):
            env["AWS_CA_BUNDLE"] = self.verify
        return env

    @cached_property
    def lambda_hook(self):
        from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook

        return LambdaHook(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            config=self.botocore_config,
        )

    def get_runtime(self, spec: JobSpec) -> Runtime:
        """The runtime the spec's runtime options name, with this connection's access."""
        return create_runtime(spec.runtime, spec.runtime_options(), lambda_client=lambda: self.lambda_hook.conn,
                              env=lambda: self.worker_env(spec))

    def get_driver(
        self, spec: JobSpec, runtime: Runtime, progress: Callable[[Progress], None] | None = None
    ) -> Driver:
        self.configure_storage(spec)
        return Driver(spec, runtime, progress=progress)

    def get_conn(self) -> Any:
        """The S3 client jobs use (the hook's connection, as the amazon provider builds it)."""
        return self.s3_hook.conn
