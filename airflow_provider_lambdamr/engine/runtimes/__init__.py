"""Where functions run: ``local`` (worker processes on this machine), ``service`` (the local
function service, shared by the processes of a user) or ``aws`` (Lambda)."""

from __future__ import annotations

from airflow_provider_lambdamr.engine.runtimes.base import (
    HANDLERS,
    InvocationResult,
    Runtime,
)

__all__ = ["HANDLERS", "InvocationResult", "Runtime", "service_runtime"]


def service_runtime(**options: object) -> Runtime:
    """The ``service`` runtime (see runtimes/service.py), with ``ServiceRuntime``'s options."""
    from airflow_provider_lambdamr.engine.runtimes.service import ServiceRuntime

    return ServiceRuntime(**options)  # type: ignore[arg-type]

