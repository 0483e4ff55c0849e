"""Amplab big-data-benchmark queries over the ``uservisits`` and ``rankings`` text tables.

The tables are comma-separated text without a header (see ``amplab-gen``):

- uservisits: sourceIP, destURL, visitDate, adRevenue, userAgent, countryCode,
  languageCode, searchWord, duration
- rankings: pageURL, pageRank, avgDuration
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lambda_src.job import BadRecord, MapReduceJob

USERVISITS_COLUMNS = (
    "sourceIP",
    "destURL",
    "visitDate",
    "adRevenue",
    "userAgent",
    "countryCode",
    "languageCode",
    "searchWord",
    "duration",
)
RANKINGS_COLUMNS = ("pageURL", "pageRank", "avgDuration")


def split_row(line: str, columns: tuple[str, ...]) -> list[str]:
    cols = line.split(",")
    if len(cols) != len(columns):
        raise BadRecord(f"expected {len(columns)} comma-separated columns, found {len(cols)}")
    return cols


def parse_float(text: str, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadRecord(f"column {column} is not a number: {text!r}") from None


class RevenueByIpPrefix(MapReduceJob):
    """``SELECT SUBSTR(sourceIP, 1, N), SUM(adRevenue) FROM uservisits GROUP BY 1``."""

    prefix_length = 8

    table_columns = USERVISITS_COLUMNS
    table_include = ("sourceIP", "adRevenue")
    table_types = {"sourceIP": "string", "adRevenue": "float64"}  # noqa: RUF012 - read-only

    def mapper(self, key: str | None, line: str) -> Iterator[tuple[str, float]]:
        if not line:
            return
        cols = split_row(line, USERVISITS_COLUMNS)
        yield cols[0][: self.prefix_length], parse_float(cols[3], "adRevenue")

    def combiner(self, key: str, values: Iterator[float]) -> Iterator[tuple[str, float]]:
        yield key, sum(values)

    def reducer(self, key: str, values: Iterator[float]) -> Iterator[tuple[str, float]]:
        yield key, sum(values)

    def map_table(self, table: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        keys = pc.utf8_slice_codeunits(table.column("sourceIP"), 0, self.prefix_length)
        # Not aggregated here: the map task combines all its batches' rows in one group-by.
        return pa.table({"key": keys, "value": table.column("adRevenue")})

    def combine_table(self, table: Any) -> Any:
        grouped = table.group_by("key", use_threads=False).aggregate([("value", "sum")])
        return grouped.select(["key", "value_sum"]).rename_columns(["key", "value"])

    def reduce_table(self, table: Any) -> Any:
        return self.combine_table(table)


class Query2a(RevenueByIpPrefix):
    """Amplab 2a: ``SUBSTR(sourceIP, 1, 8)``."""

    prefix_length = 8


class Query2b(RevenueByIpPrefix):
    """Amplab 2b: ``SUBSTR(sourceIP, 1, 10)``; run with ``--partitions R``."""

    prefix_length = 10


class Query2c(RevenueByIpPrefix):
    """Amplab 2c: ``SUBSTR(sourceIP, 1, 12)``; run with ``--partitions R``."""

    prefix_length = 12


class RankingsScan(MapReduceJob):
    """``SELECT pageURL, pageRank FROM rankings WHERE pageRank > N``: map-only, no reduce."""

    min_rank = 1000

    table_columns = RANKINGS_COLUMNS
    table_include = ("pageURL", "pageRank")
    table_types = {"pageURL": "string", "pageRank": "int64"}  # noqa: RUF012 - read-only

    def map_table(self, table: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        kept = table.filter(pc.greater(table.column("pageRank"), self.min_rank))
        return pa.table({"key": kept.column("pageURL"), "value": kept.column("pageRank")})

    def mapper(self, key: str | None, line: str) -> Iterator[tuple[str, int]]:
        if not line:
            return
        cols = split_row(line, RANKINGS_COLUMNS)
        try:
            rank = int(cols[1])
        except ValueError:
            raise BadRecord(f"column pageRank is not an integer: {cols[1]!r}") from None
        if rank > self.min_rank:
            yield cols[0], rank


class Query1a(RankingsScan):
    """Amplab 1a: ``pageRank > 1000``."""

    min_rank = 1000


class Query1b(RankingsScan):
    """Amplab 1b: ``pageRank > 100``."""

    min_rank = 100


class Query1c(RankingsScan):
    """Amplab 1c: ``pageRank > 10``."""

    min_rank = 10
