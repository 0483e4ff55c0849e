"""Cost estimates checked against figures worked out by hand from the published prices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine.cost import PriceTable, Usage, billed_ms, estimate, format_estimate

GIB = 1024**3


def money(expected: float) -> object:
    """The estimate rounds money to 8 decimals, so compare against the rounded hand figure."""
    return pytest.approx(round(expected, 8), rel=1e-9)


def job_usage(**overrides: object) -> Usage:
    """40 invocations at 1536 MB whose billed durations sum to 123_456 ms."""
    fields: dict[str, object] = {
        "billed_ms": [3000] * 39 + [6456],
        "invocations": 40,
        "memory_mb": 1536,
    }
    fields.update(overrides)
    return Usage(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("duration", "expected"),
    [(0.1, 1), (1.0, 1), (1.0001, 2), (100.5, 101), (0, 1), (-5.0, 1), (2500, 2500)],
)
def test_billed_ms_rounds_up_to_whole_ms_with_1ms_minimum(duration: float, expected: int) -> None:
    assert billed_ms(duration) == expected


def test_billed_ms_rejects_nan() -> None:
    with pytest.raises(ValueError, match="finite"):
        billed_ms(float("nan"))


def test_job_compute_requests_and_total() -> None:
    usage = job_usage(s3_put=120, s3_get=200)
    assert sum(usage.billed_ms) == 123_456  # type: ignore[arg-type]
    est = estimate(usage)

    gb_seconds = 123_456 / 1000 * 1536 / 1024  # 185.184
    compute = 123.456 * 1536 / 1024 * 0.0000166667
    requests = 40 * 0.20 / 1_000_000
    s3 = 120 / 1000 * 0.005 + 200 / 1000 * 0.0004
    assert est["gb_seconds"] == pytest.approx(185.184, rel=1e-9)
    assert est["gb_seconds"] == pytest.approx(gb_seconds, rel=1e-9)
    assert est["lambda_compute"] == money(compute)
    assert est["lambda_requests"] == money(requests)
    assert est["s3_requests"] == money(s3)
    assert est["s3_storage"] == 0.0
    assert est["total"] == money(compute + requests + s3)
    assert est["billed_ms"] == 123_456
    assert est["invocations"] == 40
    assert est["memory_mb"] == 1536
    assert est["architecture"] == "x86_64"
    assert est["currency"] == "USD"
    assert est["prices"] == {
        "lambda_gb_second_x86_64": 0.0000166667,
        "lambda_gb_second_arm64": 0.0000133334,
        "lambda_per_request": 0.20 / 1_000_000,
        "s3_put_per_1000": 0.005,
        "s3_list_per_1000": 0.005,
        "s3_get_per_1000": 0.0004,
        "s3_storage_gb_month": 0.023,
        "currency": "USD",
    }


def test_money_is_rounded_to_8_places_and_gb_seconds_to_6() -> None:
    est = estimate(Usage(billed_ms=1, invocations=1, memory_mb=128))
    # 1 ms at 128 MB is 0.000125 GB-s, $2.08e-9 of compute: below the 8th decimal
    assert est["gb_seconds"] == 0.000125
    assert est["lambda_compute"] == 0.0
    assert est["lambda_requests"] == 0.0000002
    for key in (
        "lambda_compute",
        "lambda_requests",
        "s3_requests",
        "s3_storage",
        "total",
        "reference_formula",
    ):
        assert isinstance(est[key], float)
        assert est[key] == round(est[key], 8)


def test_arm64_cheaper_than_x86_by_the_price_ratio() -> None:
    # 10_000 s at 1024 MB = 10_000 GB-s, large enough that 8-decimal rounding is negligible
    x86 = estimate(Usage(billed_ms=10_000_000, invocations=100, memory_mb=1024))
    arm = estimate(Usage(billed_ms=10_000_000, invocations=100, memory_mb=1024, architecture="arm64"))
    assert arm["lambda_compute"] < x86["lambda_compute"]
    assert arm["lambda_compute"] == money(10_000 * 0.0000133334)
    assert x86["lambda_compute"] == money(10_000 * 0.0000166667)
    assert arm["lambda_compute"] / x86["lambda_compute"] == pytest.approx(
        0.0000133334 / 0.0000166667, rel=1e-6
    )
    assert arm["lambda_requests"] == x86["lambda_requests"]
    assert arm["architecture"] == "arm64"


def test_s3_request_arithmetic_prices_head_as_get_and_list_as_put() -> None:
    est = estimate(
        Usage(
            billed_ms=0, invocations=0, memory_mb=1024, s3_put=2_500, s3_get=12_000, s3_list=300, s3_head=800
        )
    )
    expected = 2_500 / 1000 * 0.005 + 300 / 1000 * 0.005 + (12_000 + 800) / 1000 * 0.0004  # 0.01912
    assert est["s3_requests"] == money(expected)
    assert est["s3_requests"] == money(0.01912)
    assert est["total"] == money(expected)


def test_s3_storage_two_gib_for_one_hour_and_for_a_day() -> None:
    hour = estimate(Usage(billed_ms=0, invocations=0, memory_mb=1024, stored_bytes=2 * GIB))
    assert hour["s3_storage"] == money(2 * 0.023 * 1 / 730)
    day = estimate(Usage(billed_ms=0, invocations=0, memory_mb=1024, stored_bytes=2 * GIB, storage_hours=24))
    assert day["s3_storage"] == money(2 * 0.023 * 24 / 730)


def test_reference_formula_hand_worked() -> None:
    usage = Usage(
        billed_ms=[20_000, 40_000],
        invocations=2,
        memory_mb=1024,
        s3_put=100,
        s3_get=1000,
        stored_bytes=GIB,
    )
    # 60 s * 0.00001667 * 1024/1024 + 100 * 0.005/1000 + 1000 * 0.004/10000 + 1 GiB for one hour
    expected = (
        60 * 0.00001667 * 1024 / 1024 + 100 * 0.005 / 1000 + 1000 * 0.004 / 10000 + 0.0000521574022522109
    )
    assert estimate(usage)["reference_formula"] == money(expected)
    assert estimate(usage)["reference_formula"] == money(0.0019523574)


def test_reference_formula_ignores_what_the_reference_left_out() -> None:
    base = estimate(job_usage(s3_put=10, s3_get=10))
    more = estimate(job_usage(s3_put=10, s3_get=10, s3_list=5_000, s3_head=5_000, invocations=4_000))
    longer = estimate(job_usage(s3_put=10, s3_get=10, stored_bytes=GIB, storage_hours=1))
    kept_a_day = estimate(job_usage(s3_put=10, s3_get=10, stored_bytes=GIB, storage_hours=24))
    assert more["reference_formula"] == base["reference_formula"]
    assert more["total"] > base["total"]
    assert kept_a_day["reference_formula"] == longer["reference_formula"]
    assert kept_a_day["s3_storage"] > longer["s3_storage"]
    overridden = estimate(job_usage(s3_put=10, s3_get=10), PriceTable(lambda_gb_second_x86_64=1.0))
    assert overridden["reference_formula"] == base["reference_formula"]


def test_from_mapping_override_changes_only_that_component() -> None:
    usage = job_usage(s3_put=50, s3_get=70, stored_bytes=GIB)
    default = estimate(usage)
    custom = estimate(usage, PriceTable.from_mapping({"lambda_per_request": 0.5 / 1_000_000}))
    assert custom["lambda_requests"] == money(40 * 0.5 / 1_000_000)
    assert custom["lambda_requests"] > default["lambda_requests"]
    for key in ("lambda_compute", "s3_requests", "s3_storage", "gb_seconds", "reference_formula"):
        assert custom[key] == default[key], key
    assert custom["total"] == money(default["total"] + 40 * (0.5 - 0.2) / 1_000_000)
    assert custom["prices"]["lambda_per_request"] == 0.5 / 1_000_000


def test_from_mapping_accepts_ints_and_currency() -> None:
    table = PriceTable.from_mapping({"s3_put_per_1000": 1, "currency": "EUR"})
    assert table.s3_put_per_1000 == 1.0
    assert isinstance(table.s3_put_per_1000, float)
    assert table.currency == "EUR"
    assert table.s3_get_per_1000 == 0.0004


def test_from_mapping_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match="lambda_gb_secnd_arm64"):
        PriceTable.from_mapping({"lambda_gb_secnd_arm64": 0.00001})


@pytest.mark.parametrize("value", ["cheap", "0.005", None, True, [0.005], float("nan"), -0.001])
def test_from_mapping_bad_value_names_key_and_value(value: object) -> None:
    with pytest.raises(ValueError) as info:
        PriceTable.from_mapping({"s3_get_per_1000": value})
    assert "s3_get_per_1000" in str(info.value)
    assert repr(value) in str(info.value)


def test_from_mapping_bad_currency() -> None:
    with pytest.raises(ValueError, match="currency"):
        PriceTable.from_mapping({"currency": 1})


def test_from_file_reads_a_subset(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"lambda_gb_second_arm64": 0.00001, "s3_storage_gb_month": 0.0125}))
    table = PriceTable.from_file(str(path))
    assert table == PriceTable(lambda_gb_second_arm64=0.00001, s3_storage_gb_month=0.0125)
    est = estimate(Usage(billed_ms=2_000_000, invocations=1, memory_mb=512, architecture="arm64"), table)
    assert est["lambda_compute"] == money(2000 * 512 / 1024 * 0.00001)


def test_from_file_bad_json_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken-prices.json"
    path.write_text('{"s3_put_per_1000": 0.005,')
    with pytest.raises(ValueError, match="not valid JSON") as info:
        PriceTable.from_file(str(path))
    assert str(path) in str(info.value)


def test_from_file_not_an_object_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[0.005]")
    with pytest.raises(ValueError, match="JSON object") as info:
        PriceTable.from_file(str(path))
    assert str(path) in str(info.value)


def test_from_file_unknown_key_names_path_and_key(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"s3_delete_per_1000": 0.0}))
    with pytest.raises(ValueError, match="s3_delete_per_1000") as info:
        PriceTable.from_file(str(path))
    assert str(path) in str(info.value)


def test_billed_ms_as_int_sum_equals_list_form() -> None:
    as_list = estimate(job_usage(s3_put=3, s3_get=9, stored_bytes=GIB // 2))
    as_sum = estimate(job_usage(billed_ms=123_456, s3_put=3, s3_get=9, stored_bytes=GIB // 2))
    assert as_sum == as_list


def test_bad_architecture_names_the_value() -> None:
    with pytest.raises(ValueError, match="aarch64"):
        Usage(billed_ms=100, invocations=1, memory_mb=1024, architecture="aarch64")


def test_bad_architecture_set_after_construction_is_caught_by_estimate() -> None:
    usage = Usage(billed_ms=100, invocations=1, memory_mb=1024)
    usage.architecture = "ppc64le"
    with pytest.raises(ValueError, match="ppc64le"):
        estimate(usage)


@pytest.mark.parametrize(
    "overrides",
    [{"memory_mb": 0}, {"invocations": -1}, {"s3_get": -1}, {"billed_ms": [10, -1]}, {"storage_hours": -1.0}],
)
def test_negative_or_zero_inputs_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        job_usage(**overrides)


def test_format_estimate_one_line() -> None:
    est = {
        "currency": "USD",
        "total": 0.00123456,
        "lambda_compute": 0.001,
        "lambda_requests": 0.0000012,
        "s3_requests": 0.000015,
        "s3_storage": 0.000005,
        "reference_formula": 0.0011,
    }
    assert format_estimate(est) == (
        "est. cost $0.00123456 (Lambda $0.001 compute + $0.0000012 requests, S3 $0.00002; "
        "reference formula: $0.0011)"
    )


def test_format_estimate_of_a_real_estimate_and_other_currency() -> None:
    line = format_estimate(estimate(job_usage(), PriceTable(currency="EUR")))
    assert "\n" not in line
    assert line.startswith("est. cost 0.00309441 EUR (Lambda 0.00308641 EUR compute + 0.000008 EUR requests")


def test_format_estimate_says_which_mode_the_figure_assumes() -> None:
    line = format_estimate({**estimate(job_usage()), "mode": "record"})
    assert line.endswith("; map tasks record)")
