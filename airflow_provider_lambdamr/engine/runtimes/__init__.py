"""Where functions run: ``local`` (worker processes on this machine) or ``aws`` (Lambda)."""

from __future__ import annotations

from airflow_provider_lambdamr.engine.runtimes.base import (
    HANDLERS,
    InvocationResult,
    Runtime,
)

__all__ = ["HANDLERS", "InvocationResult", "Runtime"]
