"""Where functions run: ``local`` (worker processes on this machine), ``service`` (the local
function service, shared by the processes of a user) or ``aws`` (Lambda).

``RUNTIMES`` maps each runtime's name to a factory taking the runtime options (the JobSpec
fields marked ``runtime``, see ``JobSpec.runtime_options``); the CLI's ``--runtime`` choices
and the spec's check of ``runtime`` come from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from airflow_provider_lambdamr.engine.runtimes.base import (
    HANDLERS,
    InvocationResult,
    Runtime,
)


class RuntimeFactory(Protocol):
    def __call__(self, options: Mapping[str, Any], *, lambda_client: Callable[[], Any] | None,
                 env: Callable[[], Mapping[str, str]]) -> Runtime: ...


def _local(options: Mapping[str, Any], *, lambda_client: Callable[[], Any] | None,
           env: Callable[[], Mapping[str, str]]) -> Runtime:
    from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime

    return LocalRuntime(workers=options["workers"], memory_mb=options["memory_mb"],
                        timeout_s=options["timeout_s"], env=dict(env()), tracing=options["tracing"])


def _aws(options: Mapping[str, Any], *, lambda_client: Callable[[], Any] | None,
         env: Callable[[], Mapping[str, str]]) -> Runtime:
    from airflow_provider_lambdamr.engine.runtimes.aws import AwsRuntime

    if not options["role_arn"]:
        raise ValueError("--runtime aws needs --role ARN (operators: role_arn=...; see: lambdamr iam create-role)")
    if lambda_client is None:
        raise ValueError("the aws runtime needs a Lambda client")
    return AwsRuntime(
        lambda_client(), role_arn=options["role_arn"], function_prefix=options["function_prefix"],
        memory_mb=options["memory_mb"], timeout_s=options["timeout_s"], architecture=options["architecture"],
        runtime_version=options["runtime_version"], tracing=options["tracing"],
        concurrency=options["concurrency"], code_uri=options["code_uri"], layer=options["layer"],
        pyarrow_layer=options["pyarrow_layer"],
    )


def _service(options: Mapping[str, Any], *, lambda_client: Callable[[], Any] | None,
             env: Callable[[], Mapping[str, str]]) -> Runtime:
    from airflow_provider_lambdamr.engine.runtimes.service import ServiceRuntime

    return ServiceRuntime(workers=options["workers"], memory_mb=options["memory_mb"],
                          timeout_s=options["timeout_s"], tracing=options["tracing"])


RUNTIMES: dict[str, RuntimeFactory] = {"local": _local, "service": _service, "aws": _aws}


def create_runtime(name: str, options: Mapping[str, Any], *, lambda_client: Callable[[], Any] | None = None,
                   env: Callable[[], Mapping[str, str]] | None = None) -> Runtime:
    """The runtime ``name`` built from ``options``.

    ``lambda_client`` and ``env`` are called only by the runtime that needs them: ``aws``
    invokes through the client, ``local`` gives its workers the environment.
    """
    try:
        factory = RUNTIMES[name]
    except KeyError:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {name!r}") from None
    return factory(options, lambda_client=lambda_client, env=env or dict)


__all__ = ["HANDLERS", "RUNTIMES", "InvocationResult", "Runtime", "RuntimeFactory", "create_runtime"]
