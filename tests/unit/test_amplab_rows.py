"""The Amplab mappers take a text line or a row of named columns (Parquet, JSON Lines, CSV)."""

from __future__ import annotations

import pytest

from lambda_src.job import BadRecord
from lambda_src.jobs.amplab import RANKINGS_COLUMNS, Query1a, Query2a, Query3a, parse_float, split_row


def test_a_row_of_named_columns_gives_the_values_in_table_order():
    row = {"avgDuration": 3, "pageRank": 1200, "pageURL": "u", "extra": "ignored"}
    assert tuple(split_row(row, RANKINGS_COLUMNS)) == ("u", 1200, 3)
    assert list(split_row("u,1200,3", RANKINGS_COLUMNS)) == ["u", "1200", "3"]


@pytest.mark.parametrize("record,message", [
    ({"pageURL": "u", "pageRank": 1}, "the row has no column 'avgDuration'"),
    (("u", 1, 2), "expected a text line or a row of the columns pageURL, pageRank, avgDuration, got a tuple"),
    ("u,1", "expected 3 comma-separated columns, found 2"),
])
def test_a_row_without_the_columns_is_a_bad_record(record, message):
    with pytest.raises(BadRecord, match=message):
        split_row(record, RANKINGS_COLUMNS)


def test_typed_and_missing_numbers():
    assert parse_float(2.5, "adRevenue") == 2.5
    with pytest.raises(BadRecord, match="column adRevenue is not a number: None"):
        parse_float(None, "adRevenue")


def test_the_mappers_give_the_same_pairs_for_a_line_and_a_row():
    visit = {"sourceIP": "1.2.3.4", "destURL": "u", "visitDate": "1980-02-01", "adRevenue": 0.5,
             "userAgent": "a", "countryCode": "DEU", "languageCode": "DEU-DE", "searchWord": "w", "duration": 3}
    line = "1.2.3.4,u,1980-02-01,0.5,a,DEU,DEU-DE,w,3"
    assert list(Query2a().mapper(None, visit)) == list(Query2a().mapper(None, line)) == [("1.2.3.4", 0.5)]
    ranking = {"pageURL": "u", "pageRank": 2000, "avgDuration": 1}
    assert list(Query1a().mapper(None, ranking)) == list(Query1a().mapper(None, "u,2000,1")) == [("u", 2000)]
    job = Query3a()
    job.join_init()
    assert job.map_join("uservisits", visit) == job.map_join("uservisits", line) == [("u", ["1.2.3.4", 0.5])]
    assert job.map_join("rankings", ranking) == job.map_join("rankings", "u,2000,1") == [("u", 2000)]


@pytest.mark.parametrize("top", ["1", "2", "3", "10"])
def test_3a_top_rows_on_tables_are_the_record_steps(top):
    """Steps 2 and 3 on tables give the record steps' rows: sums per sourceIP, the highest
    revenue first, ties to the smallest sourceIP, the average rank as Python divides."""
    import pyarrow as pa

    job = Query3a({"top": top})
    partial = [("b", 5.5, 7, 2), ("a", 2.0, 3, 1), ("c", 7.5, 1, 3), ("a", 3.5, 9, 2), ("d", 1.0, 10, 3)]
    table = pa.table({name: list(col) for name, col in zip(("key", "revenue", "rank_sum", "visits"),
                                                           zip(*partial, strict=True), strict=True)})
    got = job.top_result_table(job.top_table(job.sum_totals_table(table)))
    # the record steps: sum_totals per sourceIP, then top_map/top_final and top_result
    by_ip: dict = {}
    for ip, *total in partial:
        by_ip.setdefault(ip, []).append(total)
    job.top_init()
    for ip, totals in sorted(by_ip.items()):
        for _, summed in job.sum_totals(ip, iter(totals)):
            job.top_map(ip, summed)
    want = [[ip, *values] for ip, values in job.top_result(None, (row for _, row in job.top_final()))]
    assert got.column_names == ["sourceIP", "totalRevenue", "avgPageRank"]
    assert [list(r.values()) for r in got.to_pylist()] == want
    assert [r[0] for r in want][:3] == ["c", "a", "b"][: int(top)]  # a and b tie at 5.5; c leads with 7.5


def test_a_combine_that_would_keep_nearly_every_row_is_skipped_and_the_reducer_still_adds_up():
    import pyarrow as pa

    job = Query2a()
    n = job.combine_sample + 10_000
    unique = pa.table({"key": [f"10.{i // 256}.{i % 256}" for i in range(n)], "value": [1.5] * n})
    assert job.combine_table(unique) is unique  # its keys are all different: nothing to combine
    repeated = pa.table({"key": [f"k{i % 7}" for i in range(n)], "value": [1.0] * n})
    for table in (repeated, repeated.slice(0, 100)):  # combined, whatever its size
        combined = job.combine_table(table)
        assert sorted(combined.to_pylist(), key=lambda r: r["key"]) == [
            {"key": f"k{k}", "value": float(len(range(k, table.num_rows, 7)))} for k in range(7)]
    doubled = pa.concat_tables([unique, unique])
    assert job.reduce_table(doubled).num_rows == n  # the reducer always aggregates
