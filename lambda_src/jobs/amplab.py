"""Amplab big-data-benchmark queries over the ``uservisits`` and ``rankings`` text tables.

The tables are comma-separated text without a header (see ``amplab-gen``):

- uservisits: sourceIP, destURL, visitDate, adRevenue, userAgent, countryCode,
  languageCode, searchWord, duration
- rankings: pageURL, pageRank, avgDuration

or Parquet files of the same columns by name (``amplab-gen --format parquet``), or JSON Lines
or CSV with a header row of those names. Vectorized mappers read only the columns a query
needs; record-mode mappers take a text line or a row of named columns (a dict) alike.

Query 3a joins the two tables, so it takes named inputs (``--input uservisits=URI
--input rankings=URI``): the mapper's ``key`` is the input's name.

Results in JSON Lines or Parquet (``--output-format``) have the column names of the query's
SQL (``output_columns``).
"""

from __future__ import annotations

import functools
import heapq
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lambda_src.job import BadRecord, Join, MapReduceJob, Step, TableInput, split_columns

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


def split_row(record: str | dict, columns: tuple[str, ...]) -> Sequence[Any]:
    """The values of ``columns``, by position: of a text line (comma-separated), or of a row
    of named columns."""
    if type(record) is str:
        return split_columns(record, columns)
    if not isinstance(record, dict):
        raise BadRecord(f"expected a text line or a row of the columns {', '.join(columns)}, "
                        f"got a {type(record).__name__}")
    try:
        return _getter(columns)(record)
    except KeyError as err:
        raise BadRecord(f"the row has no column {err.args[0]!r} (its columns: {', '.join(record)})") from None


@functools.cache
def _getter(columns: tuple[str, ...]) -> Callable[[dict], tuple]:
    return operator.itemgetter(*columns)


def parse_float(value: str | float, column: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadRecord(f"column {column} is not a number: {value!r}") from None


def parse_rank(value: str | int) -> int:
    if type(value) is int:
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRecord(f"column pageRank is not an integer: {value!r}") from None


class RevenueByIpPrefix(MapReduceJob):
    """``SELECT SUBSTR(sourceIP, 1, N), SUM(adRevenue) FROM uservisits GROUP BY 1``."""

    prefix_length = 8

    output_columns = ("sourceIPPrefix", "adRevenue")
    table_columns = USERVISITS_COLUMNS
    table_include = ("sourceIP", "adRevenue")
    table_types = {"sourceIP": "string", "adRevenue": "float64"}  # noqa: RUF012 - read-only

    def mapper(self, key: str | None, line: str | dict) -> Iterator[tuple[str, float]]:
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

    #: A combine is skipped when a sample of its keys says it would keep more than this share
    #: of its rows: the reducer adds them up anyway (prefixes of 10 and 12 characters are
    #: nearly unique, 99% of a sample; of 8, 81%, and 41% of a 100 MB task's rows).
    combine_at_most = 0.95
    combine_sample = 65536

    def combine_table(self, table: Any) -> Any:
        import pyarrow.compute as pc

        if table.num_rows > self.combine_sample:
            keys = table.column("key").slice(0, self.combine_sample)
            if pc.count_distinct(keys).as_py() > self.combine_at_most * self.combine_sample:
                return table
        return self.reduce_table(table)

    def reduce_table(self, table: Any) -> Any:
        grouped = table.group_by("key", use_threads=False).aggregate([("value", "sum")])
        return grouped.select(["key", "value_sum"]).rename_columns(["key", "value"])


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

    output_columns = ("pageURL", "pageRank")
    table_columns = RANKINGS_COLUMNS
    table_include = ("pageURL", "pageRank")
    table_types = {"pageURL": "string", "pageRank": "int64"}  # noqa: RUF012 - read-only

    def map_table(self, table: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        kept = table.filter(pc.greater(table.column("pageRank"), self.min_rank))
        return pa.table({"key": kept.column("pageURL"), "value": kept.column("pageRank")})

    def mapper(self, key: str | None, line: str | dict) -> Iterator[tuple[str, int]]:
        if not line:
            return
        cols = split_row(line, RANKINGS_COLUMNS)
        rank = parse_rank(cols[1])
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


class Query3a(MapReduceJob):
    """Amplab 3a, a three-step job over two named inputs::

        SELECT sourceIP, totalRevenue, avgPageRank FROM (
          SELECT sourceIP, AVG(pageRank) AS avgPageRank, SUM(adRevenue) AS totalRevenue
          FROM rankings AS R, uservisits AS UV
          WHERE R.pageURL = UV.destURL
            AND UV.visitDate BETWEEN DATE('1980-01-01') AND DATE('1980-04-01')
          GROUP BY UV.sourceIP)
        ORDER BY totalRevenue DESC LIMIT 1

    1. a reduce-side join on the URL: rankings rows and the visits in the date window meet
       in the reducer of their URL, which emits ``sourceIP → [adRevenue, pageRank, 1]``;
    2. a sum per sourceIP (combined in the mappers and in every reduce round);
    3. the top row: each map task keeps its best row (in-mapper combining) and one reducer
       picks the best of those. Ties in revenue go to the smallest sourceIP.

    Vectorized (``table_steps``), step 1 is a ``Join`` in Arrow instead: the visits in the
    window joined with the rankings on the URL, summed per sourceIP (the planner broadcasts
    the smaller table when it fits a function's memory, else partitions both on the URL);
    steps 2 and 3 do the same on tables (``combine_table``/``reduce_table``), so the pairs
    between the steps stay Arrow runs.

    ``--param start=YYYY-MM-DD --param end=YYYY-MM-DD`` change the (inclusive) window and
    ``--param top=N`` the number of rows.
    """

    input_names = ("uservisits", "rankings")
    output_columns = ("sourceIP", "totalRevenue", "avgPageRank")

    def steps(self) -> list[Step]:
        self._top  # noqa: B018 - a bad --param top fails before the join runs, not after
        return [
            Step(mapper_init=self.join_init, mapper=self.map_join, reducer=self.reduce_join),
            Step(combiner=self.sum_totals, reducer=self.sum_totals),
            Step(mapper_init=self.top_init, mapper=self.top_map, mapper_final=self.top_final,
                 combiner=self.top_rows, reducer=self.top_result, partitions=1),
        ]

    def table_steps(self) -> list[Step | Join]:
        self._top  # noqa: B018 - a bad --param top fails before the join runs, not after
        self.join_init()
        visits = TableInput("uservisits", USERVISITS_COLUMNS, key="destURL",
                            include=("sourceIP", "destURL", "visitDate", "adRevenue"),
                            types={"adRevenue": "float64"}, select=self.visits_in_window)
        pages = TableInput("rankings", RANKINGS_COLUMNS, key="pageURL", include=("pageURL", "pageRank"),
                           types={"pageRank": "int64"})
        return [
            Join(left=visits, right=pages, emit=self.totals_table),
            Step(combine_table=self.sum_totals_table, reduce_table=self.sum_totals_table),
            Step(combine_table=self.top_table, reduce_table=self.top_result_table, partitions=1),
        ]

    # -- step 1 vectorized: the join in Arrow ------------------------------------------------
    def visits_in_window(self, table: Any) -> Any:
        import pyarrow.compute as pc

        date = table.column("visitDate")
        kept = table.filter(pc.and_(pc.greater_equal(date, self._start), pc.less_equal(date, self._end)))
        return kept.select(["destURL", "sourceIP", "adRevenue"])

    def totals_table(self, joined: Any) -> Any:
        """sourceIP -> [revenue, rank sum, visits] of joined rows (step 2 adds them up)."""
        grouped = joined.group_by("sourceIP", use_threads=False).aggregate(
            [("adRevenue", "sum"), ("pageRank", "sum"), ("pageRank", "count")])
        return grouped.select(["sourceIP", "adRevenue_sum", "pageRank_sum", "pageRank_count"]).rename_columns(
            ["key", "revenue", "rank_sum", "visits"])

    # -- steps 2 and 3 vectorized: the same on tables --------------------------------------
    def sum_totals_table(self, totals: Any) -> Any:
        """Totals per sourceIP (``key``), summed: [revenue, rank sum, visits] as columns."""
        grouped = totals.group_by("key", use_threads=False).aggregate(
            [("revenue", "sum"), ("rank_sum", "sum"), ("visits", "sum")])
        return grouped.select(["key", "revenue_sum", "rank_sum_sum", "visits_sum"]).rename_columns(
            ["key", "revenue", "rank_sum", "visits"])

    def top_table(self, totals: Any) -> Any:
        """The best ``top`` rows, as ``_ranked`` orders them: highest revenue, then smallest sourceIP."""
        import pyarrow.compute as pc

        order = [("revenue", "descending"), ("key", "ascending")]
        best = totals.take(pc.select_k_unstable(totals, min(self._top, totals.num_rows), sort_keys=order))
        return best.sort_by(order)

    def top_result_table(self, totals: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        best = self.top_table(totals)
        average = pc.divide(pc.cast(best.column("rank_sum"), pa.float64()), pc.cast(best.column("visits"), pa.float64()))
        return pa.table({"sourceIP": best.column("key"), "totalRevenue": best.column("revenue"),
                         "avgPageRank": average})

    # -- step 1: the join ----------------------------------------------------------------
    def join_init(self) -> None:
        self._start = self.param("start", "1980-01-01")
        self._end = self.param("end", "1980-04-01")

    def map_join(self, key: str | None, line: str | dict) -> list[tuple[str, Any]]:
        # Returns lists, not a generator: most visits fall outside the window, and a
        # generator per line would cost more than the test that drops them.
        if not line:
            return []
        if key == "uservisits":
            cols = split_row(line, USERVISITS_COLUMNS)
            if self._start <= cols[2] <= self._end:
                return [(cols[1], [cols[0], parse_float(cols[3], "adRevenue")])]
            return []
        if key == "rankings":
            cols = split_row(line, RANKINGS_COLUMNS)
            return [(cols[0], parse_rank(cols[1]))]  # a bare rank; a visit is a list
        # the driver checks input_names before it plans, so only a stray event gets here
        raise ValueError(f"amplab-3a reads inputs uservisits and rankings, not {key!r}")

    def reduce_join(self, url: str, values: Iterator[Any]) -> Iterator[tuple[str, list]]:
        """Every (visit, ranking) pair of the URL, once, whatever order the values come in."""
        ranks: list[int] = []
        visits: list[list] = []
        for value in values:
            if type(value) is int:
                ranks.append(value)
                for ip, revenue in visits:
                    yield ip, [revenue, value, 1]
            else:
                visits.append(value)
                for rank in ranks:
                    yield value[0], [value[1], rank, 1]

    # -- step 2: totals per sourceIP -----------------------------------------------------
    def sum_totals(self, ip: str, values: Iterator[list]) -> Iterator[tuple[str, list]]:
        revenue, rank_sum, visits = 0.0, 0, 0
        for r, p, n in values:
            revenue += r
            rank_sum += p
            visits += n
        yield ip, [revenue, rank_sum, visits]

    # -- step 3: the top rows ------------------------------------------------------------
    def top_init(self) -> None:
        self._best: list[list] = []

    def top_map(self, ip: str, total: list) -> tuple[()]:
        revenue, rank_sum, visits = total
        self._best.append([revenue, ip, rank_sum / visits])
        if len(self._best) > 4 * self._top + 1024:
            self._best = self._ranked(self._best)
        return ()

    def top_final(self) -> Iterator[tuple[None, list]]:
        for row in self._ranked(self._best):
            yield None, row

    def top_rows(self, key: None, rows: Iterator[list]) -> Iterator[tuple[None, list]]:
        for row in self._ranked(rows):
            yield key, row

    def top_result(self, key: None, rows: Iterator[list]) -> Iterator[tuple[str, list]]:
        for revenue, ip, avg_rank in self._ranked(rows):
            yield ip, [revenue, avg_rank]

    @functools.cached_property
    def _top(self) -> int:
        try:
            top = int(self.param("top", "1"))
        except ValueError:
            raise ValueError(f"parameter top must be an integer, got {self.param('top')!r}") from None
        if top < 1:
            raise ValueError(f"parameter top must be at least 1, got {top}")
        return top

    def _ranked(self, rows) -> list[list]:
        """The best ``top`` rows: highest revenue first, then the smallest sourceIP."""
        return heapq.nsmallest(self._top, rows, key=lambda row: (-row[0], row[1]))
