"""Per-job cost estimate of a MapReduce job on AWS Lambda + S3.

Pure arithmetic over counts the driver already has (billed durations, request counts,
bytes kept), so an estimate costs nothing to produce and needs no AWS credentials. Prices
default to us-east-1 list prices and can be overridden from a mapping or a JSON file, since
they differ by region and change over time.

Next to the estimate we report what the AWS serverless MapReduce reference architecture
(``awslabs/lambda-refarch-mapreduce``, ``src/python/driver.py``) would have printed for the
same job, because that is the figure published comparisons were made with. Its driver computed::

    lambda_cost = (mapper_s + reducer_s) * 0.00001667 * memory_MB / 1024
    s3_put_cost = keys * 0.005/1000
    s3_get_cost = gets * 0.004/10000
    s3_storage_hour_cost = 1 * 0.0000521574022522109 * total_s3_size/1024**3   # one hour

It timed its own handlers instead of using billed duration (we use billed seconds as the
stand-in), and it left out Lambda request charges and S3 LIST/HEAD requests.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_lambdamr.engine.packaging import ARCHITECTURES

HOURS_PER_MONTH = 730

# The reference architecture's hard-coded prices, kept apart from PriceTable on purpose:
# the reference figure must not move when our own prices are overridden.
REFERENCE_LAMBDA_GB_SECOND = 0.00001667
REFERENCE_S3_PUT = 0.005 / 1000
REFERENCE_S3_GET = 0.004 / 10000
REFERENCE_S3_STORAGE_GB_HOUR = 0.0000521574022522109

_MONEY_DIGITS = 8
_GB_SECONDS_DIGITS = 6


@dataclass(frozen=True)
class PriceTable:
    """Unit prices; defaults are us-east-1 list prices."""

    lambda_gb_second_x86_64: float = 0.0000166667
    lambda_gb_second_arm64: float = 0.0000133334
    lambda_per_request: float = 0.20 / 1_000_000
    s3_put_per_1000: float = 0.005  # PUT, COPY, POST, LIST
    s3_list_per_1000: float = 0.005
    s3_get_per_1000: float = 0.0004  # GET, SELECT and all other requests (HEAD)
    s3_storage_gb_month: float = 0.023
    currency: str = "USD"

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> PriceTable:
        """Build a table from a partial mapping, rejecting typos instead of ignoring them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in fields:
                raise ValueError(f"unknown price field {key!r}; expected one of {sorted(fields)}")
            if key == "currency":
                if not isinstance(value, str) or not value:
                    raise ValueError(f"price field 'currency' must be a non-empty string, got {value!r}")
                kwargs[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"price field {key!r} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"price field {key!r} must be a finite number >= 0, got {value!r}")
            kwargs[key] = float(value)
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str) -> PriceTable:
        """Read a JSON object holding any subset of the fields."""
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"price file {path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"price file {path}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.from_mapping(data)
        except ValueError as exc:
            raise ValueError(f"price file {path}: {exc}") from exc


@dataclass
class Usage:
    """What one job consumed, as counted by the driver."""

    billed_ms: list[int] | int  # billed duration per invocation (already rounded up) or their sum
    invocations: int
    memory_mb: int
    architecture: str = "x86_64"
    s3_put: int = 0
    s3_get: int = 0
    s3_list: int = 0
    s3_head: int = 0  # priced as GET-class
    stored_bytes: int = 0  # intermediates + outputs kept, for storage pricing
    storage_hours: float = 1.0  # how long they are kept (the reference assumes one hour)

    def __post_init__(self) -> None:
        _validate(self)


def _validate(usage: Usage) -> None:
    """Fail loudly on inputs that would otherwise yield a plausible-looking wrong figure."""
    if usage.architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown Lambda architecture {usage.architecture!r}; expected one of {ARCHITECTURES}"
        )
    if usage.memory_mb <= 0:
        raise ValueError(f"memory_mb must be > 0, got {usage.memory_mb!r}")
    durations = [usage.billed_ms] if isinstance(usage.billed_ms, int) else usage.billed_ms
    if any(d < 0 for d in durations):
        raise ValueError(f"billed_ms must not be negative, got {usage.billed_ms!r}")
    for name in ("invocations", "s3_put", "s3_get", "s3_list", "s3_head", "stored_bytes", "storage_hours"):
        value = getattr(usage, name)
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value!r}")


def billed_ms(duration_ms: float) -> int:
    """Lambda bills in 1 ms steps rounded up, and never less than 1 ms."""
    if not math.isfinite(duration_ms):
        raise ValueError(f"duration_ms must be finite, got {duration_ms!r}")
    return max(1, math.ceil(duration_ms))


def _total_billed_ms(usage: Usage) -> int:
    return usage.billed_ms if isinstance(usage.billed_ms, int) else sum(usage.billed_ms)


def _reference_formula(total_ms: int, usage: Usage) -> float:
    """The reference driver's figure, with billed seconds standing in for its self-timed ones."""
    return (
        total_ms / 1000 * REFERENCE_LAMBDA_GB_SECOND * usage.memory_mb / 1024
        + usage.s3_put * REFERENCE_S3_PUT
        + usage.s3_get * REFERENCE_S3_GET
        + usage.stored_bytes / 1024**3 * REFERENCE_S3_STORAGE_GB_HOUR
    )


def estimate(usage: Usage, prices: PriceTable | None = None) -> dict:
    """Return {"currency", "lambda_compute", "lambda_requests", "s3_requests", "s3_storage", "total",
    "gb_seconds", "billed_ms", "invocations", "memory_mb", "architecture",
    "reference_formula": <float>, "prices": <dict of the table>}.

    Money is rounded to 8 decimals and gb_seconds to 6; the total is summed before rounding.
    """
    _validate(usage)  # Usage is mutable, so check again
    prices = prices or PriceTable()
    total_ms = _total_billed_ms(usage)
    gb_seconds = total_ms / 1000 * usage.memory_mb / 1024
    gb_second_price = (
        prices.lambda_gb_second_arm64 if usage.architecture == "arm64" else prices.lambda_gb_second_x86_64
    )
    lambda_compute = gb_seconds * gb_second_price
    lambda_requests = usage.invocations * prices.lambda_per_request
    s3_requests = (
        usage.s3_put / 1000 * prices.s3_put_per_1000
        + usage.s3_list / 1000 * prices.s3_list_per_1000
        + (usage.s3_get + usage.s3_head) / 1000 * prices.s3_get_per_1000
    )
    s3_storage = (
        usage.stored_bytes / 1024**3 * prices.s3_storage_gb_month * usage.storage_hours / HOURS_PER_MONTH
    )
    total = lambda_compute + lambda_requests + s3_requests + s3_storage
    return {
        "currency": prices.currency,
        "lambda_compute": round(lambda_compute, _MONEY_DIGITS),
        "lambda_requests": round(lambda_requests, _MONEY_DIGITS),
        "s3_requests": round(s3_requests, _MONEY_DIGITS),
        "s3_storage": round(s3_storage, _MONEY_DIGITS),
        "total": round(total, _MONEY_DIGITS),
        "gb_seconds": round(gb_seconds, _GB_SECONDS_DIGITS),
        "billed_ms": total_ms,
        "invocations": usage.invocations,
        "memory_mb": usage.memory_mb,
        "architecture": usage.architecture,
        "reference_formula": round(_reference_formula(total_ms, usage), _MONEY_DIGITS),
        "prices": dataclasses.asdict(prices),
    }


def _money(amount: float, currency: str) -> str:
    digits = f"{amount:.{_MONEY_DIGITS}f}".rstrip("0").rstrip(".")
    return f"${digits}" if currency == "USD" else f"{digits} {currency}"


def format_estimate(est: dict) -> str:
    """One line for a log or a task summary."""
    cur = est.get("currency", "USD")
    s3 = est["s3_requests"] + est["s3_storage"]
    mode = f"; map tasks {est['mode']}" if est.get("mode") else ""
    return (
        f"est. cost {_money(est['total'], cur)} "
        f"(Lambda {_money(est['lambda_compute'], cur)} compute + {_money(est['lambda_requests'], cur)} requests, "
        f"S3 {_money(s3, cur)}; reference formula: {_money(est['reference_formula'], cur)}{mode})"
    )
