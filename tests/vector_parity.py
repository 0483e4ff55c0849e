"""Hostile input for checking that the vectorized (Arrow) path gives what the record path gives.

The record-mode methods are the reference: on every input the Arrow path must produce the
same rows, or fail with the same error (naming the same file and byte offset), or skip the
same number of bad records. The lines here are the ones readers disagree on: null markers
(``NULL``, ``N/A``, ``#N/A``, empty) that Arrow turns into nulls by default, float spellings
(``1e-05`` / ``0.00001``, ``nan``, ``inf``, ``-0.0``, huge values), a lone ``\\r``, ``\\r\\n``,
UTF-8 BOMs, surrounding whitespace, missing and extra columns, empty lines, non-ASCII text and
invalid UTF-8.

Revenue values of the ordinary rows are multiples of 1/4, so their sums are exact in any
order; every value whose sum could depend on the order (``1e-05``, huge values) has a key of
its own. Byte-identical results are then a fair requirement, not luck.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from lambda_src import storage as st

BOM = "\ufeff"

#: Spellings of a number, or of nothing, that some reader may take for a number or a null.
NUMBER_TOKENS = (
    "", "NULL", "null", "N/A", "n/a", "#N/A", "NA", "NaN", "nan", "-nan", "+nan", "inf", "-inf",
    "Infinity", "-0.0", "-0", "0", "1e-05", "0.00001", "1E5", "+1.5", ".5", "5.", "1_000",
    "1e400", "-1e400", "nan(1)", "0X1f", "1e308", "1.7976931348623157e308", "5e-324", "1e16", "1e15",
    "1234567890123456", "12345678901234567890", "99999999999999999999999", "0x10", "1d5",
    " 7.25", "7.25 ", " 7", "7 ", "\t3", "٣", "1,5", "TRUE", "1.#IND",
)
#: Spellings of a number the vectorized path reads itself (it must then read them as float() does).
ARROW_NUMBER_TOKENS = (
    "-0.0", "-0", "0", "0012", "-5", "1001", "1e-05", "0.00001", "1E5", "+1.5", ".5", "5.", "1e400", "-1e400",
    "1e308", "1.7976931348623157e308", "5e-324", "1e16", "1e15", "1234567890123456", "inf", "-inf", "Infinity",
)
#: Values for a text column that a reader may take for a null or change.
TEXT_TOKENS = ("", "NULL", "null", "N/A", "#N/A", "NaN", "nan", " padded ", "ünïcødé", "日本語", "😀 emoji", "a\tb", '"q"')


def uservisit(ip: str, revenue: str, *, url: str = "u/p", date: str = "1980-02-01",
              agent: str = "Mozilla", word: str = "word", duration: str = "7") -> str:
    return f"{ip},{url},{date},{revenue},{agent},USA,en,{word},{duration}"


def ranking(url: str, rank: str, avg: str = "3") -> str:
    return f"{url},{rank},{avg}"


def _ordinary_visits(rng: random.Random, n: int) -> list[str]:
    ips = [f"10.{a}.{b}.1" for a in range(3) for b in range(4)]  # 2a/2b/2c keys shared by many rows
    return [uservisit(rng.choice(ips), str(rng.randint(0, 4000) / 4), url=f"u/{rng.randint(0, 9)}",
                      date=rng.choice(("1980-01-01", "1980-03-15", "1979-12-31", "1980-04-01")),
                      word=rng.choice(("alpha", "Beta", "γάμμα", "it's")))
            for _ in range(n)]


def _ordinary_rankings(rng: random.Random, n: int) -> list[str]:
    return [ranking(f"u/{i}", str(rng.choice((5, 50, 500, 5000, 11, 101, 1001, 1000, 100, 10)))) for i in range(n)]


def hostile_visits() -> list[str]:
    """One line per hostile value; the i-th numeric one has a key (sourceIP prefix) of its own."""
    lines = [uservisit(f"h{i:03d}.1.2.3", tok) for i, tok in enumerate(NUMBER_TOKENS)]
    lines += [uservisit(tok, "2.5", url=tok or "u/0", word=tok) for tok in TEXT_TOKENS]
    lines += [
        uservisit("10.9.9.9", "1.25", duration=tok) for tok in ("NULL", "", "1e-05")  # unused column
    ]
    lines += [
        uservisit("r01.0.0.1", "1.5", word="lone\rcr"),                      # lone \r inside a field
        uservisit("r02.0.0.1", "1.5") + "\r\r",                              # \r before \r\n
        uservisit("r03.0.0.1", "1.5") + "\r" + uservisit("r04.0.0.1", "2"),  # old-Mac line break
        uservisit("r05.0.0.1", "1.5") + "\r",                                # \r\n
        uservisit("r06.0.0.1", "1.5") + " ",                                 # trailing space
        uservisit("r07.0.0.1", "1.5") + ",extra",
        ",".join(uservisit("r08.0.0.1", "1.5").split(",")[:-1]),
        "", "", " ", ",", "\r", "\t",
        BOM + uservisit("r09.0.0.1", "1.5"),                                 # a BOM inside the file
        uservisit("ü.0.0.1", "1.5", url="ünï/cødé", word="日本語"),
    ]
    return lines


def hostile_rankings() -> list[str]:
    lines = [ranking(f"h/{i:03d}", tok) for i, tok in enumerate(NUMBER_TOKENS)]
    lines += [ranking(tok, "2000") for tok in TEXT_TOKENS]
    lines += [ranking(f"a/{i}", "2000", avg=tok) for i, tok in enumerate(("NULL", "", "x"))]  # unused column
    lines += [
        ranking("r/1", "2000") + "\r" + ranking("r/2", "3000"),  # old-Mac line break: two rows to Arrow
        ranking("r/3", "2000\r"),                                # \r inside the rank
        ranking("r/4", "2000", avg="3\r\r"),
        ranking("r/5", "2000", avg="3\r"),
        ranking("r/6", "2000", avg="3 "),
        ranking("r/7", "2000") + ",extra",
        "r/8,2000",
        "", " ", ",,", "\r",
        BOM + ranking("r/9", "2000"),
        ranking("ünï/cødé", "2000"),
    ]
    return lines


def arrow_visits() -> list[str]:
    lines = [uservisit(f"a{i:03d}.1.2.3", tok) for i, tok in enumerate(ARROW_NUMBER_TOKENS)]
    lines += [uservisit(tok, "2.5", url=tok or "u/0", word=tok) for tok in TEXT_TOKENS]
    return [*lines, uservisit("r05.0.0.1", "1.5") + "\r", uservisit("ü.0.0.1", "1.5", url="ünï/cødé")]


def arrow_rankings() -> list[str]:
    lines = [ranking(f"a/{i:03d}", tok) for i, tok in enumerate(ARROW_NUMBER_TOKENS)]
    lines += [ranking(tok, "2000") for tok in TEXT_TOKENS]
    return [*lines, ranking("r/5", "2000", avg="3\r"), ranking("ünï/cødé", "2000")]


#: Invalid UTF-8 in a column the vectorized mappers do not read.
INVALID_UTF8_VISIT = uservisit("x01.0.0.1", "1.5", agent="\udcff").encode("utf-8", "surrogateescape")
INVALID_UTF8_RANKING = ranking("x/1", "2000", avg="\udcff").encode("utf-8", "surrogateescape")


def _write(path: Path, lines: list[str | bytes], *, bom: bool = False, newline: bool = True) -> None:
    raw = [line if isinstance(line, bytes) else line.encode("utf-8") for line in lines]
    data = b"\n".join(raw) + (b"\n" if newline else b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((BOM.encode() if bom else b"") + data)


def _bom_at_split(path: Path, filler, line: str, split: int) -> None:
    """A file of ``2 * split`` bytes whose second half starts with a BOM and ``line``.

    ``filler(k)`` is a valid line ``k`` characters longer than ``filler(0)``: the planner cuts
    the file into two even splits, so the second split starts at the BOM.
    """
    def padded(text: str, size: int) -> str:
        base = len(text.encode()) + len(filler(0).encode()) + 1
        assert size >= base, "split too small for the lines"
        return text + filler(size - base) + "\n"

    head = padded("\n".join(filler(0) for _ in range(3)) + "\n", split)
    tail = padded(BOM + line + "\n", split)
    path.write_bytes((head + tail).encode())


#: ``bom.csv`` is cut by this split size so that its second split starts with a BOM.
BOM_SPLIT = 256
#: Split sizes that cut the corpus files at many places.
SPLIT_SIZES = (64 * 1024 * 1024, BOM_SPLIT, 97)


def write_corpus(root: Path, kind: str, *, seed: int = 1) -> dict[str, Path]:
    """Directories ``uservisits`` and ``rankings`` of small files, one hostile line in each.

    ``kind`` is ``bad`` (every hostile line), ``clean`` (the lines the record path accepts)
    or ``arrow`` (lines the vectorized path reads without falling back: BOMs at byte 0,
    ``\r\n``, float spellings, null markers as text, non-ASCII). Run with one file per map
    task, so a file that makes the Arrow reader give up (and its task re-read in record
    mode) leaves the other tasks vectorized. Every other file starts with a BOM, every third
    lacks its final newline.
    """
    rng = random.Random(seed)
    tables = {
        "uservisits": (_ordinary_visits, _record_ok_visit, INVALID_UTF8_VISIT, uservisit("b01.0.0.1", "4.5"),
                       lambda k: uservisit("10.0.0.1", "1.5", word="w" * k)),
        "rankings": (_ordinary_rankings, _record_ok_ranking, INVALID_UTF8_RANKING, ranking("b/1", "4000"),
                     lambda k: ranking("u/" + "w" * k, "2000")),
    }
    dirs = {}
    for name, (ordinary, record_ok, invalid, bom_line, filler) in tables.items():
        folder = dirs[name] = root / name
        lines = hostile_visits() if name == "uservisits" else hostile_rankings()
        if kind == "arrow":
            lines = arrow_visits() if name == "uservisits" else arrow_rankings()
        if kind != "bad":
            lines = [line for line in lines if record_ok(line)]
        for i, line in enumerate(lines):
            _write(folder / f"h{i:03d}.csv", [*ordinary(rng, 2), line, *ordinary(rng, 1)],
                   bom=i % 2 == 0, newline=i % 3 != 0)
        _write(folder / "ordinary.csv", ordinary(rng, 60))
        if kind != "arrow":
            _bom_at_split(folder / "bom.csv", filler, bom_line, BOM_SPLIT)
        if kind == "bad":
            _write(folder / "utf8.csv", [*ordinary(rng, 5), invalid])
    return dirs


def _record_ok_visit(line: str) -> bool:
    cols = line.removesuffix("\r").split(",")
    try:
        float(cols[3])
    except (ValueError, IndexError):
        return line == ""  # empty lines are skipped, not bad
    return len(cols) == 9


def _record_ok_ranking(line: str) -> bool:
    cols = line.removesuffix("\r").split(",")
    try:
        int(cols[1])
    except (ValueError, IndexError):
        return line == ""
    return len(cols) == 3


def read_parts(output: str) -> dict[str, bytes]:
    """The bytes of every part file of a job's output, by name."""
    output = st.normalize(output).rstrip("/")
    store = st.for_uri(output)
    return {st.basename(i.uri): store.read_bytes(i.uri) for i in store.list(output)
            if st.basename(i.uri).startswith("part-") and i.uri.rsplit("/", 1)[0] == output}


def sorted_rows(data: bytes) -> list[list[str]]:
    return sorted(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
