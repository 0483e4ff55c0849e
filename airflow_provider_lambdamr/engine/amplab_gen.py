"""Deterministic, streaming generator of the Amplab big-data-benchmark tables.

Tables are comma-separated text without a header, one ``\\n``-terminated row per line,
or (``fmt="parquet"``) Parquet files of the same rows, with these columns:

- ``uservisits``: sourceIP, destURL, visitDate, adRevenue, userAgent, countryCode,
  languageCode, searchWord, duration (about 164 bytes a row, like the published data set)
- ``rankings``: pageURL, pageRank, avgDuration (about 71 bytes a row)

The same arguments always produce byte-identical files: every file draws from its own
``random.Random`` seeded by ``(seed, table, file index)``, never the global generator.
``rankings`` row ``i`` has the URL :func:`page_url` ``(seed, i)``, a pure function, so
``uservisits`` generated separately (told ``rankings_rows``) only visits URLs that exist
and the Amplab join query matches rows. Files are written through :mod:`lambda_src.storage`,
so ``file://`` and ``s3://`` outputs both work and every file appears atomically.
"""

from __future__ import annotations

import datetime
import functools
import gzip as gzip_mod
import random
from collections.abc import Callable, Iterator
from typing import IO

from lambda_src import storage as st

TABLES = ("uservisits", "rankings")

# Average bytes per row (newline included) of each table, to size a data set by bytes.
AVG_ROW_BYTES = {"uservisits": 164, "rankings": 71}

# With ``skew``, rows take their sourceIP from these: they share the 8- and 10-character
# prefixes the Amplab 2a/2b queries group by, so one reduce key gets most of the data.
HOT_IPS = ("100.100.10.1", "100.100.10.2", "100.100.10.3")

# Rows joined into one write: large enough to amortise the call, small enough to stream.
BATCH_ROWS = 4096

FORMATS = ("csv", "parquet")
#: Column names and Arrow types of each table (the Amplab schema; visitDate stays text, as
#: the queries compare it as text). Parquet files have these columns.
SCHEMAS = {
    "uservisits": (("sourceIP", "string"), ("destURL", "string"), ("visitDate", "string"),
                   ("adRevenue", "float64"), ("userAgent", "string"), ("countryCode", "string"),
                   ("languageCode", "string"), ("searchWord", "string"), ("duration", "int64")),
    "rankings": (("pageURL", "string"), ("pageRank", "int64"), ("avgDuration", "int64")),
}
#: Rows per Parquet row group: about 20 MB of uservisits text, so a file of a few hundred MB
#: splits into tasks by row group and a reader holds one group at a time.
PARQUET_ROW_GROUP_ROWS = 128 * 1024

_M64 = (1 << 64) - 1
_URL_PREFIXES = 4096  # a power of two: the prefix is picked by masking the mixed index

# log10(pageRank) is normal with these parameters: about 65% of pages rank above 10, 20%
# above 100 and 2% above 1000, so Amplab query 1's three thresholds select very different
# fractions of the table.
_RANK_LOG10_MU = 1.314
_RANK_LOG10_SIGMA = 0.815

_COUNTRY_LANGUAGES = (
    "USA,ENG-US", "USA,SPA-US", "GBR,ENG-GB", "CAN,ENG-CA", "CAN,FRA-CA", "AUS,ENG-AU",
    "NZL,ENG-NZ", "IRL,GLE-IE", "DEU,DEU-DE", "AUT,DEU-AT", "CHE,DEU-CH", "CHE,FRA-CH",
    "FRA,FRA-FR", "BEL,FRA-BE", "BEL,NLD-BE", "NLD,NLD-NL", "ESP,SPA-ES", "MEX,SPA-MX",
    "ARG,SPA-AR", "COL,SPA-CO", "CHL,SPA-CL", "PER,SPA-PE", "BRA,POR-BR", "PRT,POR-PT",
    "ITA,ITA-IT", "RUS,RUS-RU", "UKR,UKR-UA", "POL,POL-PL", "CZE,CES-CZ", "SWE,SWE-SE",
    "NOR,NOR-NO", "DNK,DAN-DK", "FIN,FIN-FI", "TUR,TUR-TR", "GRC,ELL-GR", "ISR,HEB-IL",
    "EGY,ARA-EG", "SAU,ARA-SA", "IND,HIN-IN", "IND,ENG-IN", "CHN,ZHO-CN", "TWN,ZHO-TW",
    "JPN,JPN-JP", "KOR,KOR-KR", "VNM,VIE-VN", "THA,THA-TH", "IDN,IND-ID", "PHL,FIL-PH",
    "ZAF,AFR-ZA", "NGA,ENG-NG", "KEN,SWA-KE", "ROU,RON-RO", "HUN,HUN-HU", "PAK,URD-PK",
)  # fmt: skip

_USER_AGENTS = (
    "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)",
    "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.0)",
    "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1)",
    "Mozilla/5.0 (Windows NT 6.1; rv:2.0) Firefox/4.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:10.0) Firefox/10.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_6_8) Safari/534",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 5_0 like Mac OS X)",
    "Mozilla/5.0 (Linux; U; Android 2.3.4) Mobile Safari",
    "Opera/9.80 (Windows NT 6.1; U; en) Presto/2.9",
    "Opera/9.80 (X11; Linux i686; U; ru) Presto/2.8",
    "Mozilla/5.0 (Windows NT 5.1) Chrome/17.0.963",
    "Mozilla/5.0 (X11; Ubuntu; Linux i686) Chrome/18.0",
    "Mozilla/3.0 (compatible; Indy Library)",
    "Mozilla/2.0 (compatible; Ask Jeeves/Teoma)",
    "Lynx/2.8.6rel.4 libwww-FM/2.14",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
    "msnbot/1.1 (+http://search.msn.com/msnbot.htm)",
    "Baiduspider+(+http://www.baidu.com/search/spider.htm)",
    "Yahoo! Slurp/3.0",
    "SCSpider/0.2",
    "Java/1.6.0_26",
    "Wget/1.12 (linux-gnu)",
    "curl/7.21.0 (x86_64-pc-linux-gnu)",
    "Python-urllib/2.6",
    "w3m/0.5.2",
    "ELinks/0.12 (textmode; Linux)",
    "Links (2.2; Linux 2.6.32 i686; 80x24)",
    "WebCopier v4.6",
    "Nokia6230/2.0 Profile/MIDP-2.0",
    "BlackBerry9700/5.0.0.351 Profile/MIDP-2.1",
    "Dillo/2.0",
    "Konqueror/3.5 (KHTML like Gecko)",
)

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def _date_pool() -> tuple[str, ...]:
    """Every day from 1970-01-01 to 2000-12-31, so visitDate is uniform over the range."""
    first = datetime.date(1970, 1, 1).toordinal()
    last = datetime.date(2000, 12, 31).toordinal()
    return tuple(datetime.date.fromordinal(d).isoformat() for d in range(first, last + 1))


def _word_pool() -> tuple[str, ...]:
    """Pronounceable lowercase words, fixed for every seed: a shared search vocabulary."""
    rng = random.Random("amplab:words")
    words: set[str] = set()
    while len(words) < 2048:
        syllables = rng.choice((2, 3, 4, 4, 5, 5, 6))
        words.add("".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables)))
    return tuple(sorted(words))


_DATES = _date_pool()
_WORDS = _word_pool()


@functools.lru_cache(maxsize=16)
def _url_function(seed: int) -> Callable[[int], str]:
    """The pageURL of each rankings row for ``seed``, built once and shared per seed.

    The row index goes through a bijective 64-bit mix (the splitmix64 finaliser) whose hex
    digits end the URL, so distinct indices always give distinct URLs; the other digits of
    the same mix pick a random lowercase prefix from a per-seed pool.
    """
    rng = random.Random(f"{seed}:pageurl")
    key = rng.getrandbits(64)
    letters = "abcdefghijklmnopqrstuvwxyz"
    prefixes = tuple("".join(rng.choices(letters, k=rng.randint(20, 64))) for _ in range(_URL_PREFIXES))
    mask = _URL_PREFIXES - 1

    def url(index: int) -> str:
        z = (index + key) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        z ^= z >> 31
        return f"{prefixes[z & mask]}/{z:016x}.html"

    return url


def page_url(seed: int, index: int) -> str:
    """The pageURL of rankings row ``index`` generated with ``seed`` (a pure function)."""
    return _url_function(seed)(index)


def _rankings_batches(rng: random.Random, seed: int, start: int, count: int) -> Iterator[tuple[bytes, int]]:
    """Rankings rows ``start .. start+count-1`` as (encoded batch, rows in it)."""
    url = _url_function(seed)
    rnd = rng.random
    gauss = rng.gauss
    mu, sigma = _RANK_LOG10_MU, _RANK_LOG10_SIGMA
    end = start + count
    for batch_start in range(start, end, BATCH_ROWS):
        batch_end = min(batch_start + BATCH_ROWS, end)
        lines = [
            f"{url(i)},{max(1, int(10.0 ** gauss(mu, sigma)))},{1 + int(rnd() * 100)}\n"
            for i in range(batch_start, batch_end)
        ]
        yield "".join(lines).encode("ascii"), batch_end - batch_start


def _uservisits_batches(
    rng: random.Random, seed: int, count: int, rankings_rows: int, skew: float
) -> Iterator[tuple[bytes, int]]:
    """``count`` uservisits rows as (encoded batch, rows in it); the hot loop of the module."""
    url = _url_function(seed)
    rnd = rng.random
    bits = rng.getrandbits
    dates, n_dates = _DATES, len(_DATES)
    agents, n_agents = _USER_AGENTS, len(_USER_AGENTS)
    places, n_places = _COUNTRY_LANGUAGES, len(_COUNTRY_LANGUAGES)
    words, n_words = _WORDS, len(_WORDS)
    hot, n_hot = HOT_IPS, len(HOT_IPS)
    done = 0
    while done < count:
        n = min(BATCH_ROWS, count - done)
        lines = []
        append = lines.append
        for _ in range(n):
            a = bits(32)
            if skew and rnd() < skew:
                ip = hot[a % n_hot]
            else:
                ip = f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"
            append(
                f"{ip},{url(int(rnd() * rankings_rows))},{dates[int(rnd() * n_dates)]},"
                f"{rnd() * 1000.0:.6f},{agents[int(rnd() * n_agents)]},"
                f"{places[int(rnd() * n_places)]},{words[int(rnd() * n_words)]},"
                f"{1 + int(rnd() * 10000)}\n"
            )
        done += n
        yield "".join(lines).encode("ascii"), n


class _CountingWriter:
    """Counts the bytes that reach the object, so gzip outputs report their compressed size."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.count = 0

    def write(self, data: bytes) -> int:
        self._fh.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self._fh.flush()

    @property
    def closed(self) -> bool:  # pyarrow's writers ask
        return self._fh.closed


class _ParquetSink:
    """Parses the generated text batches into the table's typed columns and writes them as
    Parquet row groups of ``PARQUET_ROW_GROUP_ROWS`` rows to ``out``."""

    def __init__(self, out: _CountingWriter, table: str) -> None:
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        self._schema = pa.schema([(name, pa.type_for_alias(t)) for name, t in SCHEMAS[table]])
        self._read = pcsv.read_csv
        self._options = (
            pcsv.ReadOptions(column_names=self._schema.names),
            pcsv.ParseOptions(quote_char=False),
            pcsv.ConvertOptions(column_types=self._schema),
        )
        self._writer = pq.ParquetWriter(out, self._schema, compression="snappy")
        self._held: list = []
        self._rows = 0
        self._pa = pa

    def write(self, data: bytes) -> None:
        read, parse, convert = self._options
        batch = self._read(self._pa.py_buffer(data), read_options=read, parse_options=parse, convert_options=convert)
        self._held.append(batch)
        self._rows += batch.num_rows
        if self._rows >= PARQUET_ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        table = self._pa.concat_tables(self._held) if self._held else self._schema.empty_table()
        rest = table.slice(PARQUET_ROW_GROUP_ROWS) if table.num_rows > PARQUET_ROW_GROUP_ROWS else None
        self._writer.write_table(table.slice(0, PARQUET_ROW_GROUP_ROWS), row_group_size=PARQUET_ROW_GROUP_ROWS)
        self._held = [rest] if rest is not None else []
        self._rows = rest.num_rows if rest is not None else 0

    def close(self) -> None:
        if self._held:
            self._flush()
        self._writer.close()


def _split_rows(rows: int, files: int) -> list[int]:
    """Rows per file, as even as possible: the first ``rows % files`` files get one more."""
    base, extra = divmod(rows, files)
    return [base + (1 if i < extra else 0) for i in range(files)]


def _validate(table: str, rows: int, files: int, rankings_rows: int | None, skew: float, fmt: str,
              gzip: bool) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "parquet" and gzip:
        raise ValueError("gzip applies to csv only: Parquet files compress their own pages (snappy)")
    if table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}; got {table!r}")
    if rows < 0:
        raise ValueError(f"rows must be >= 0; got {rows}")
    if files < 1:
        raise ValueError(f"files must be >= 1; got {files}")
    if rankings_rows is not None and rankings_rows < 1:
        raise ValueError(f"rankings_rows must be >= 1; got {rankings_rows}")
    if not 0.0 <= skew <= 1.0:  # also refuses NaN
        raise ValueError(f"skew must be between 0 and 1; got {skew}")


def generate(
    output: str,
    *,
    table: str,
    rows: int,
    files: int = 1,
    seed: int = 0,
    gzip: bool = False,
    rankings_rows: int | None = None,
    skew: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    fmt: str = "csv",
) -> list[dict]:
    """Write ``rows`` rows of ``table`` as ``files`` files ``part-NNNNN.csv[.gz]`` under ``output``,
    or (``fmt="parquet"``) ``part-NNNNN.parquet`` files of the same rows (``SCHEMAS``), in
    row groups of ``PARQUET_ROW_GROUP_ROWS`` rows.

    ``rankings_rows`` (uservisits only; default ``max(1, rows // 10)``) is how many rankings
    rows exist, so every destURL is one of their pageURLs. ``skew`` (uservisits only) is the
    fraction of rows whose sourceIP is one of :data:`HOT_IPS`. Both are ignored for rankings.
    ``progress`` is called with ``(rows_done, rows_total)`` after every batch and at the end.
    Returns ``{"uri", "rows", "bytes"}`` per file, ``bytes`` as stored (compressed when gzip).
    """
    _validate(table, rows, files, rankings_rows, skew, fmt, gzip)
    base = st.normalize(output)
    if rankings_rows is None:
        rankings_rows = max(1, rows // 10)
    suffix = ".parquet" if fmt == "parquet" else ".csv.gz" if gzip else ".csv"
    written: list[dict] = []
    done = 0
    reported = -1
    start = 0
    for index, count in enumerate(_split_rows(rows, files)):
        rng = random.Random(f"{seed}:{table}:{index}")
        if table == "rankings":
            batches = _rankings_batches(rng, seed, start, count)
        else:
            batches = _uservisits_batches(rng, seed, count, rankings_rows, skew)
        start += count
        uri = st.join(base, f"part-{index:05d}{suffix}")
        with st.for_uri(uri).open_write(uri) as fh:
            counter = _CountingWriter(fh)
            if fmt == "parquet":
                sink = _ParquetSink(counter, table)
            elif gzip:
                # No file name and mtime 0 in the gzip header, so equal data gives equal bytes.
                sink = gzip_mod.GzipFile(filename="", fileobj=counter, mode="wb", mtime=0, compresslevel=6)
            else:
                sink = counter
            try:
                for data, n in batches:
                    sink.write(data)
                    done += n
                    if progress is not None:
                        progress(done, rows)
                        reported = done
            finally:
                if sink is not counter:
                    sink.close()
        written.append({"uri": uri, "rows": count, "bytes": counter.count})
    if progress is not None and reported != rows:
        progress(rows, rows)
    return written


def sample(directory: str, *, table: str, rows: int, files: int = 4, seed: int = 42) -> str:
    """A local sample table in ``directory``, generated once: into a private directory that
    is then renamed into place, so concurrent runs (two DAG runs of an example) never read a
    half-written sample; the loser of a race discards its copy. Returns ``directory``."""
    import os
    import shutil
    import tempfile

    if os.path.isdir(directory):
        return directory
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".sample-", dir=parent)
    try:
        generate(tmp, table=table, rows=rows, files=files, seed=seed)
        os.rename(tmp, directory)
    except OSError:
        if not os.path.isdir(directory):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def run_directory(root: str, kind: str, run_id: str | None) -> str:
    """``<root>/results/<kind>/<run id, made a file name>``: an example run's own output."""
    import os
    import re

    return os.path.join(root, "results", kind, re.sub(r"[^\w.-]+", "_", run_id or "run"))
