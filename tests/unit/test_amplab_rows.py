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
