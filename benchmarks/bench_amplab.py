"""Amplab benchmark queries: ``lambdamr run`` (local runtime) vs DuckDB vs a pure-Python loop.

What is measured, and how:

- Data: ``lambdamr amplab-gen`` (seed 1, 4 files per table) under ``--data-dir``:
  uservisits of about ``--size-mb`` MB (``N * 1e6 / 164`` rows) and rankings of about a
  quarter of that (``N / 4 * 1e6 / 71`` rows). Generated only if missing.
- Tools, each timed as a whole command (a fresh process: interpreter start, imports and,
  for us, worker start-up are included), run alternately, ``--repeat`` times per query:
  ours (``lambdamr run <query> --runtime local --workers 2``, ``--partitions 4`` for 2b/2c),
  ours again in record mode (``--no-vectorized``: how a vectorized job runs on Lambda
  without pyarrow, i.e. without the pyarrow layer),
  DuckDB (2 threads, ``COPY (query) TO`` CSV, reading the same files with ``read_csv`` and
  explicit columns) and a reference: one Python process looping over the lines of the files,
  splitting them and filtering or aggregating into a dict (the reference architecture's
  per-record approach, without Lambda).
- Wall time (median and min) and peak RSS of each command: ``/usr/bin/time -f %M``, which
  reports the largest resident set of any single process in the command's tree (the driver
  or one of its workers), not their sum.
- Every answer is checked against DuckDB's: the same set of rows, floats equal to within
  1e-9 relative. Any difference fails the run.
- MB/s is the input bytes of the table a query reads divided by the median time.
- ``--overhead``: a word count over 200 one-line files (``--split-size 1KB``: 200 map
  tasks) minus the same command over one such file, divided by 199: ms per extra task.
- ``--scaling 100,400,1600``: 2a only (ours and DuckDB) at each uservisits size, with
  throughput and peak memory: the command's, the driver process's own (from ``_SUCCESS``,
  to show it stays flat as the input grows) and the largest task's.
- Cost projection for the Amplab "5nodes" data set (uservisits 126.8 GB, rankings
  6.38 GB): our ``_SUCCESS`` cost block at the measured size, scaled linearly by bytes,
  for both modes: with the pyarrow layer (the map tasks' modes as the default run had them)
  and without it (record mode). Each carries the mode its ``_SUCCESS`` says it assumes.
  It is a projection from local task durations, not a measurement on AWS.
- A PNG chart, drawn by ``_chart_amplab.py`` in ``benchmarks/.venv-chart`` (created with
  matplotlib from ``constraints.txt`` on first use; ``--no-chart`` skips it). Not in the
  project's venv: matplotlib brings numpy, and pyarrow imports numpy whenever it is
  installed, which would slow every worker's cold start.

- ``--format parquet``: the same tables as Parquet (``amplab-gen --format parquet``, in
  ``amplab-<N>mb-parquet``), read by us (by row group, only the columns a query needs) and by
  DuckDB (``read_parquet``); queries 1a, 2a and 3a by default, and no Python reference (it
  reads text). The summary line gives 2a's ratio: our fastest run over DuckDB's.

Queries live in ``QUERIES``: each has its SQL, the table(s) it reads (3a reads both, as
named inputs) and a function of the single-process reference. Answers are compared as
sets of rows: the first column is the key, the others numbers.

    .venv/bin/python benchmarks/bench_amplab.py --size-mb 400 --repeat 3 --overhead
    .venv/bin/python benchmarks/bench_amplab.py --size-mb 100 --repeat 1 --scaling 100,400,1600
    .venv/bin/python benchmarks/bench_amplab.py --format parquet --size-mb 400 --repeat 5

Writes ``benchmarks/results/amplab.json`` (``amplab-parquet.json`` for Parquet; and a PNG
with matplotlib).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_engine import compile_bytecode

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LAMBDAMR = str(BIN / "lambdamr")
GNU_TIME = "/usr/bin/time"
WORKERS = 2
FILES = 4
SEED = 1

ROW_BYTES = {"uservisits": 164, "rankings": 71}
# The Amplab "5nodes" data set, for the cost projection.
FIVE_NODES_BYTES = {"uservisits": 126.8e9, "rankings": 6.38e9}

COLUMNS = {
    "uservisits": {
        "sourceIP": "VARCHAR", "destURL": "VARCHAR", "visitDate": "VARCHAR", "adRevenue": "DOUBLE",
        "userAgent": "VARCHAR", "countryCode": "VARCHAR", "languageCode": "VARCHAR",
        "searchWord": "VARCHAR", "duration": "BIGINT",
    },
    "rankings": {"pageURL": "VARCHAR", "pageRank": "BIGINT", "avgDuration": "BIGINT"},
}  # fmt: skip


@dataclass(frozen=True)
class Query:
    name: str  # the built-in job, e.g. amplab-2a
    tables: tuple[str, ...]  # the tables it reads (their bytes give MB/s and the cost scaling)
    sql: str  # DuckDB's query over views named after the tables
    reference: str  # a function name in REFERENCE_SOURCE
    reference_arg: int
    extra_args: tuple[str, ...] = field(default=())


SQL_3A = (
    "SELECT sourceIP, SUM(adRevenue) AS totalRevenue, AVG(pageRank) AS avgPageRank "
    "FROM rankings AS R, uservisits AS UV WHERE R.pageURL = UV.destURL "
    "AND UV.visitDate BETWEEN '1980-01-01' AND '1980-04-01' "
    "GROUP BY UV.sourceIP ORDER BY totalRevenue DESC, sourceIP LIMIT 1"
)

#: The queries ``--format parquet`` runs by default.
PARQUET_QUERIES = ("amplab-1a", "amplab-2a", "amplab-3a")

QUERIES = (
    Query("amplab-1a", ("rankings",), "SELECT pageURL, pageRank FROM rankings WHERE pageRank > 1000", "scan", 1000),
    Query("amplab-1b", ("rankings",), "SELECT pageURL, pageRank FROM rankings WHERE pageRank > 100", "scan", 100),
    Query("amplab-1c", ("rankings",), "SELECT pageURL, pageRank FROM rankings WHERE pageRank > 10", "scan", 10),
    Query("amplab-2a", ("uservisits",), "SELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM uservisits GROUP BY 1",
          "revenue", 8),
    Query("amplab-2b", ("uservisits",), "SELECT SUBSTR(sourceIP, 1, 10), SUM(adRevenue) FROM uservisits GROUP BY 1",
          "revenue", 10, ("--partitions", "4")),
    Query("amplab-2c", ("uservisits",), "SELECT SUBSTR(sourceIP, 1, 12), SUM(adRevenue) FROM uservisits GROUP BY 1",
          "revenue", 12, ("--partitions", "4")),
    Query("amplab-3a", ("uservisits", "rankings"), SQL_3A, "join", 1, ("--partitions", "4")),
)  # fmt: skip

# The reference architecture's per-record loop, in one process. argv: function, arg, output, files...
REFERENCE_SOURCE = """
import sys


def scan(files, min_rank, out):
    with open(out, "w") as dst:
        for path in files:
            with open(path) as src:
                for line in src:
                    cols = line.rstrip("\\n").split(",")
                    rank = int(cols[1])
                    if rank > min_rank:
                        dst.write(f"{cols[0]},{rank}\\n")


def revenue(files, prefix, out):
    sums = {}
    for path in files:
        with open(path) as src:
            for line in src:
                cols = line.split(",")
                key = cols[0][:prefix]
                sums[key] = sums.get(key, 0.0) + float(cols[3])
    with open(out, "w") as dst:
        for key, value in sums.items():
            dst.write(f"{key},{value!r}\\n")


def join(files, top, out):
    ranks = {}
    for path in files:
        if "/rankings/" in path:
            with open(path) as src:
                for line in src:
                    cols = line.split(",")
                    ranks[cols[0]] = int(cols[1])
    totals = {}
    for path in files:
        if "/uservisits/" in path:
            with open(path) as src:
                for line in src:
                    cols = line.split(",")
                    if "1980-01-01" <= cols[2] <= "1980-04-01" and cols[1] in ranks:
                        t = totals.get(cols[0])
                        if t is None:
                            t = totals[cols[0]] = [0.0, 0, 0]
                        t[0] += float(cols[3])
                        t[1] += ranks[cols[1]]
                        t[2] += 1
    best = sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
    with open(out, "w") as dst:
        for ip, (revenue, rank_sum, n) in best:
            dst.write(f"{ip},{revenue!r},{rank_sum / n!r}\\n")


globals()[sys.argv[1]](sys.argv[4:], int(sys.argv[2]), sys.argv[3])
"""


FORMATS = ("csv", "parquet")


def duckdb_source(fmt: str = "csv") -> str:
    """The DuckDB script: views over read_csv with explicit columns (or read_parquet), then
    COPY (query) TO CSV."""
    if fmt == "parquet":
        view = "    con.execute(f\"CREATE VIEW {name} AS SELECT * FROM read_parquet([{paths}])\")\n"
    else:
        view = (
            "    spec = ', '.join(f\"'{k}': '{v}'\" for k, v in cols[name].items())\n"
            "    con.execute(f\"CREATE VIEW {name} AS SELECT * FROM read_csv([{paths}], header=false, delim=',', \"\n"
            "                f\"quote='', escape='', columns={{{spec}}})\")\n"
        )
    return (
        "import duckdb, json, sys\n"
        "tables, sql, out, cols = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])\n"
        "con = duckdb.connect()\n"
        "con.execute('SET threads = 2')\n"
        "for name, files in tables.items():\n"
        "    paths = ', '.join(f\"'{p}'\" for p in files)\n"
        + view +
        "con.execute(f\"COPY ({sql}) TO '{out}' (HEADER false)\")\n"
    )


# ---------------------------------------------------------------------------------------------
# data


def table_dir(data_dir: Path, size_mb: int, fmt: str = "csv") -> Path:
    return data_dir / (f"amplab-{size_mb}mb" if fmt == "csv" else f"amplab-{size_mb}mb-{fmt}")


def table_rows(size_mb: float) -> dict[str, int]:
    return {
        "uservisits": int(size_mb * 1_000_000 / ROW_BYTES["uservisits"]),
        "rankings": int(size_mb / 4 * 1_000_000 / ROW_BYTES["rankings"]),
    }


def ensure_table(data_dir: Path, size_mb: int, table: str, fmt: str = "csv") -> list[Path]:
    """The table's files for this size, generated (deterministically) if missing or partial."""
    root = table_dir(data_dir, size_mb, fmt)
    files = sorted((root / table).glob("part-*"))
    if len(files) == FILES:
        return files
    shutil.rmtree(root / table, ignore_errors=True)
    rows = table_rows(size_mb)
    print(f"generating {table} for {size_mb} MB ({rows[table]:,} rows) in {root}", file=sys.stderr)
    subprocess.run(
        [LAMBDAMR, "amplab-gen", "--output", str(root), "--table", table,
         "--rows", str(rows[table] if table == "rankings" else rows["uservisits"]),
         "--rankings-rows", str(rows["rankings"]), "--files", str(FILES), "--seed", str(SEED), "--format", fmt],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    files = sorted((root / table).glob("part-*"))
    if len(files) != FILES:
        raise SystemExit(f"amplab-gen wrote {len(files)} files in {root / table}, expected {FILES}")
    return files


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class Run:
    seconds: float
    peak_mb: float
    stdout: str


def run_measured(cmd: list[str]) -> Run:
    """Run a whole command under /usr/bin/time: wall seconds and peak RSS (MB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        started = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", tf.name, *cmd], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        lines = [line for line in tf.read().splitlines() if line.strip()]
    return Run(seconds, int(lines[-1]) / 1024, proc.stdout)


def ours_cmd(query: Query, root: Path, output: Path) -> list[str]:
    if len(query.tables) == 1:
        inputs = ["--input", str(root / query.tables[0])]
    else:  # named inputs: the mapper sees which table a line comes from
        inputs = [arg for t in query.tables for arg in ("--input", f"{t}={root / t}")]
    return [LAMBDAMR, "run", query.name, "--runtime", "local", "--workers", str(WORKERS), *inputs,
            "--output", str(output), "--quiet", "--overwrite", "--json", *query.extra_args]  # fmt: skip


def duck_cmd(query: Query, files: dict[str, list[Path]], output: Path) -> list[str]:
    tables = {t: [str(p) for p in files[t]] for t in query.tables}
    fmt = "parquet" if files[query.tables[0]][0].suffix == ".parquet" else "csv"
    return [
        sys.executable,
        "-c",
        duckdb_source(fmt),
        json.dumps(tables),
        query.sql,
        str(output),
        json.dumps(COLUMNS),
    ]


def reference_cmd(query: Query, files: dict[str, list[Path]], output: Path) -> list[str]:
    paths = [str(p) for t in query.tables for p in files[t]]
    return [sys.executable, "-c", REFERENCE_SOURCE, query.reference, str(query.reference_arg), str(output),
            *paths]  # fmt: skip


Row = tuple[str, ...]


def read_rows(paths: list[Path]) -> list[Row]:
    rows: list[Row] = []
    for path in paths:
        with open(path, newline="") as fh:
            rows.extend(tuple(row) for row in csv.reader(fh, quoting=csv.QUOTE_NONE) if row)
    return rows


def same_answer(got: list[Row], want: list[Row]) -> str | None:
    """None if ``got`` equals ``want`` as a set of rows (first column the key, the other
    columns numbers equal within 1e-9 relative), else why not."""
    if len(got) != len(want):
        return f"{len(got):,} rows, DuckDB has {len(want):,}"
    mine = {row[0]: row[1:] for row in got}
    theirs = {row[0]: row[1:] for row in want}
    if len(mine) != len(got) or len(theirs) != len(want):
        if sorted(got) != sorted(want):
            return "duplicate keys and the rows differ"
        return None
    if mine.keys() != theirs.keys():
        missing = sorted(theirs.keys() - mine.keys())[:3]
        extra = sorted(mine.keys() - theirs.keys())[:3]
        return f"keys differ: missing {missing}, extra {extra}"
    for key, values in mine.items():
        if len(values) != len(theirs[key]):
            return f"{key!r}: {len(values) + 1} columns, DuckDB has {len(theirs[key]) + 1}"
        for a, b in zip(values, theirs[key], strict=True):
            if not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9):
                return f"{key!r}: {','.join(values)} vs DuckDB's {','.join(theirs[key])}"
    return None


TOOLS = ("lambdamr (local, 2 workers)", "duckdb (2 threads)", "python reference (1 process)",
         "lambdamr record mode (2 workers)")
#: Our runs, and which Lambda deployment each stands for: with the pyarrow layer or without.
OURS = (TOOLS[0], TOOLS[3])
LAYER = {TOOLS[0]: "with_layer", TOOLS[3]: "without_layer"}


def bench_query(query: Query, data_root: Path, files: dict[str, list[Path]], repeat: int, work: Path,
                tools: tuple[str, ...] = TOOLS) -> dict:  # fmt: skip
    """Run the tools alternately ``repeat`` times; check every answer against DuckDB's."""
    runs: dict[str, list[Run]] = {tool: [] for tool in tools}
    #: The last ``_SUCCESS`` of each of our tools.
    success: dict[str, dict] = {}
    for i in range(repeat):
        outputs = {
            TOOLS[0]: work / f"{query.name}-ours",
            TOOLS[1]: work / f"{query.name}-duck.csv",
            TOOLS[2]: work / f"{query.name}-ref.csv",
            TOOLS[3]: work / f"{query.name}-ours-record",
        }
        cmds = {
            TOOLS[0]: ours_cmd(query, data_root, outputs[TOOLS[0]]),
            TOOLS[1]: duck_cmd(query, files, outputs[TOOLS[1]]),
            TOOLS[2]: reference_cmd(query, files, outputs[TOOLS[2]]),
            TOOLS[3]: [*ours_cmd(query, data_root, outputs[TOOLS[3]]), "--no-vectorized"],
        }
        answers: dict[str, list[Row]] = {}
        for tool in tools:
            run = run_measured(cmds[tool])
            runs[tool].append(run)
            out = outputs[tool]
            answers[tool] = read_rows(sorted(out.glob("part-*")) if out.is_dir() else [out])
            if tool in OURS:
                success[tool] = json.loads(run.stdout)
        for tool in tools:
            if tool != TOOLS[1]:
                why = same_answer(answers[tool], answers[TOOLS[1]])
                if why:
                    raise SystemExit(f"{query.name}: {tool}'s answer DIFFERS from DuckDB's: {why}")
        for tool in OURS:
            shutil.rmtree(outputs[tool], ignore_errors=True)
        print(f"{query.name} round {i + 1}: " + ", ".join(f"{t.split()[0]} {runs[t][-1].seconds:.2f}s" for t in tools)
              + f" ({len(answers[TOOLS[1]]):,} rows, all equal)", file=sys.stderr)  # fmt: skip
    input_bytes = sum(p.stat().st_size for t in query.tables for p in files[t])
    base = statistics.median(r.seconds for r in runs[TOOLS[1]])
    results = []
    for tool in tools:
        secs = [r.seconds for r in runs[tool]]
        med = statistics.median(secs)
        results.append({
            "tool": tool, "median_s": round(med, 3), "min_s": round(min(secs), 3),
            "min_ratio_to_duckdb": round(min(secs) / min(r.seconds for r in runs[TOOLS[1]]), 2),
            "mb_per_s": round(input_bytes / 1e6 / med, 1), "ratio_to_duckdb": round(med / base, 2),
            "peak_mb": round(max(r.peak_mb for r in runs[tool]), 1),
            "runs_s": [round(s, 3) for s in secs], "runs_peak_mb": [round(r.peak_mb, 1) for r in runs[tool]],
        })  # fmt: skip
    ours = success[TOOLS[0]]
    return {
        "query": query.name, "sql": query.sql, "tables": list(query.tables), "input_bytes": input_bytes,
        "rows": len(answers[TOOLS[1]]), "results": results, "cost": ours.get("cost", {}),
        # what the cost would be on Lambda with the pyarrow layer, and without it (record mode)
        "cost_by_layer": {LAYER[tool]: success[tool].get("cost", {}) for tool in OURS if tool in success},
        "task_peak_memory_mb": {k: v.get("peak_memory_mb") for k, v in ours.get("invocations", {}).items()},
        "driver_peak_memory_mb": ours.get("driver_peak_memory_mb"),
    }  # fmt: skip


def bench_overhead(repeat: int, work: Path) -> dict:
    """ms per task: a 200-task word count minus the same command over one file, over 199."""
    dirs = {n: work / f"overhead-{n}" for n in (1, 200)}
    for n, d in dirs.items():
        d.mkdir(parents=True)
        for i in range(n):
            # One ~1000-byte line: two files exceed --split-size 1KB, so each is its own task.
            (d / f"f{i:03d}.txt").write_text(f"w{i} " + "the quick brown fox " * 49 + "\n")
    times: dict[int, list[float]] = {1: [], 200: []}
    tasks = {}
    for _ in range(repeat):
        for n, d in dirs.items():
            out = work / f"overhead-out-{n}"
            run = run_measured([LAMBDAMR, "run", "wordcount", "--runtime", "local", "--workers", str(WORKERS),
                                "--input", str(d), "--output", str(out), "--split-size", "1KB", "--quiet",
                                "--overwrite", "--json"])  # fmt: skip
            times[n].append(run.seconds)
            tasks[n] = json.loads(run.stdout).get("tasks", {})
            shutil.rmtree(out, ignore_errors=True)
    if tasks[200].get("map") != 200:
        raise SystemExit(f"overhead job planned {tasks[200].get('map')} map tasks, expected 200")
    med = {n: statistics.median(v) for n, v in times.items()}
    ms = (med[200] - med[1]) / 199 * 1000
    return {"median_s_200_files": round(med[200], 3), "median_s_1_file": round(med[1], 3),
            "ms_per_task": round(ms, 1), "tasks_200_files": tasks[200], "tasks_1_file": tasks[1],
            "runs_s": {str(n): [round(s, 3) for s in v] for n, v in times.items()}}  # fmt: skip


def project_cost(query_results: list[dict]) -> list[dict]:
    """Our local cost blocks per query, scaled linearly by bytes to the Amplab 5nodes tables:
    with the pyarrow layer and without it, each labelled with the mode its ``_SUCCESS`` assumes."""
    keys = ("lambda_compute", "gb_seconds", "billed_ms", "total", "reference_formula")
    out = []
    for q in query_results:
        factor = sum(FIVE_NODES_BYTES[t] for t in q["tables"]) / q["input_bytes"]
        entry: dict = {"query": q["query"], "label": "projection", "scale_factor": round(factor, 1)}
        for layer, cost in q["cost_by_layer"].items():
            entry[layer] = {
                "mode": cost.get("mode"), "map_modes": cost.get("map_modes"),
                "measured": {k: cost.get(k) for k in keys},
                "five_nodes": {k: round(cost[k] * factor, 6) for k in keys if k in cost},
            }
        out.append(entry)
    return out


def ensure_chart_venv(venv: Path) -> Path:
    """The python of a separate venv with matplotlib, created (from constraints.txt) if needed.

    Not the project's venv: matplotlib brings numpy, and pyarrow imports numpy whenever it
    is installed, which would add its import time to every worker's cold start.
    """
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import matplotlib"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with matplotlib (for the chart) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(HERE.parent / "constraints.txt"),
                    "matplotlib"], check=True)  # fmt: skip
    return python


def print_table(title: str, query_results: list[dict]) -> None:
    print(f"\n{title}\n")
    print(
        f"{'query':<10} {'tool':<30} {'median s':>9} {'min s':>7} {'MB/s':>8} {'vs duckdb':>10} {'peak MB':>8}"
    )
    for q in query_results:
        for r in q["results"]:
            print(f"{q['query']:<10} {r['tool']:<30} {r['median_s']:>9.2f} {r['min_s']:>7.2f} {r['mb_per_s']:>8.1f} "
                  f"{r['ratio_to_duckdb']:>9.2f}x {r['peak_mb']:>8.0f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=400, help="uservisits MB (rankings is a quarter)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--format", choices=FORMATS, default="csv", dest="fmt",
                        help="the tables' format (parquet: no python reference; queries 1a, 2a, 3a by default)")
    parser.add_argument("--queries", default="", help="comma-separated (default: all; with parquet: 1a, 2a, 3a)")
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--results", type=Path, default=None,
                        help="default: results/amplab.json (amplab-parquet.json for --format parquet)")
    parser.add_argument("--overhead", action="store_true", help="also measure ms per task (200 tiny tasks)")
    parser.add_argument("--scaling", default="", help="uservisits sizes in MB for a 2a-only scaling run")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG (its venv needs matplotlib)")
    parser.add_argument("--without", default="", help="comma-separated tools to leave out: reference, record "
                        "(ours and DuckDB always run), e.g. for a quicker run at 1.6 GB")
    args = parser.parse_args()

    if not Path(GNU_TIME).exists():
        raise SystemExit(f"{GNU_TIME} is needed for peak memory")
    by_name = {q.name: q for q in QUERIES}
    default = PARQUET_QUERIES if args.fmt == "parquet" else tuple(by_name)
    wanted = [name.strip() for name in (args.queries or ",".join(default)).split(",") if name.strip()]
    optional = {"reference": TOOLS[2], "record": TOOLS[3]}
    left_out = {name.strip() for name in args.without.split(",") if name.strip()}
    if left_out - set(optional):
        raise SystemExit(f"--without takes {', '.join(optional)}; got {', '.join(sorted(left_out - set(optional)))}")
    tools = tuple(t for t in (TOOLS[:2] if args.fmt == "parquet" else TOOLS)
                  if t not in {optional[name] for name in left_out})
    if args.results is None:
        args.results = HERE / "results" / ("amplab.json" if args.fmt == "csv" else f"amplab-{args.fmt}.json")
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise SystemExit(f"unknown queries {unknown}; known: {list(by_name)}")
    queries = [by_name[name] for name in wanted]
    sizes = [int(s) for s in args.scaling.split(",") if s.strip()]

    work = Path(tempfile.mkdtemp(prefix="lambdamr-amplab-"))
    report: dict = {
        "date": time.strftime("%Y-%m-%d"), "bytecode": compile_bytecode(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "workers": WORKERS, "duckdb_threads": 2, "repeat": args.repeat, "size_mb": args.size_mb, "format": args.fmt,
        "rows": table_rows(args.size_mb), "seed": SEED, "files_per_table": FILES,
    }  # fmt: skip
    try:
        root = table_dir(args.data_dir, args.size_mb, args.fmt)
        files = {t: ensure_table(args.data_dir, args.size_mb, t, args.fmt)
                 for t in sorted({t for q in queries for t in q.tables})}
        report["table_bytes"] = {t: sum(p.stat().st_size for p in fs) for t, fs in files.items()}
        query_results = [bench_query(q, root, files, args.repeat, work, tools) for q in queries]
        report["queries"] = query_results
        overhead = bench_overhead(args.repeat, work) if args.overhead else None
        report["overhead"] = overhead
        scaling = []
        for size in sizes:
            uv = ensure_table(args.data_dir, size, "uservisits", args.fmt)
            result = bench_query(by_name["amplab-2a"], table_dir(args.data_dir, size, args.fmt), {"uservisits": uv},
                                 args.repeat, work, tools=TOOLS[:2])  # fmt: skip
            scaling.append({"size_mb": size, **result})
        report["scaling"] = scaling
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sizes_text = ", ".join(f"{t} {b / 1e6:.0f} MB" for t, b in report["table_bytes"].items())
    print_table(f"Amplab queries on {args.fmt} at --size-mb {args.size_mb} ({sizes_text}; {FILES} files each), "
                f"{args.repeat} alternating run(s); every answer equal to DuckDB's", query_results)  # fmt: skip
    for q in query_results:
        if q["query"] == "amplab-2a":
            ours = q["results"][0]
            print(f"\n2a on {args.fmt}: lambdamr ({WORKERS} workers) / duckdb (2 threads) = "
                  f"{ours['min_ratio_to_duckdb']:.2f}x (fastest runs), {ours['ratio_to_duckdb']:.2f}x (medians)")
    print("\npeak MB: the largest single process of the command (/usr/bin/time %M: driver or a worker)")
    for q in query_results:
        median = {r["tool"]: r["median_s"] for r in q["results"]}
        if all(tool in median for tool in OURS):
            modes = {layer: cost.get("mode") for layer, cost in q["cost_by_layer"].items()}
            print(f"  {q['query']}: record mode takes {median[TOOLS[3]] / median[TOOLS[0]]:.2f}x the default run's "
                  f"time (map tasks: {modes.get('with_layer')} by default, {modes.get('without_layer')} without "
                  f"pyarrow)")  # fmt: skip

    if overhead:
        print(f"\ntask overhead: 200 one-line files {overhead['median_s_200_files']:.2f}s, 1 file "
              f"{overhead['median_s_1_file']:.2f}s -> {overhead['ms_per_task']:.1f} ms per task "
              f"(2 workers; tasks {overhead['tasks_200_files'].get('map')} map + "
              f"{overhead['tasks_200_files'].get('reduce')} reduce)")  # fmt: skip

    if scaling:
        print("\nAmplab 2a scaling (uservisits only)\n")
        print(f"{'size MB':>8} {'tool':<30} {'median s':>9} {'MB/s':>8} {'peak MB':>8} {'driver MB':>10} "
              f"{'task peak MB':>13}")  # fmt: skip
        for s in scaling:
            for r in s["results"]:
                task_peak = (
                    max((v or 0) for v in s["task_peak_memory_mb"].values())
                    if r["tool"] == TOOLS[0]
                    else None
                )
                driver = s.get("driver_peak_memory_mb") if r["tool"] == TOOLS[0] else None
                print(f"{s['size_mb']:>8} {r['tool']:<30} {r['median_s']:>9.2f} {r['mb_per_s']:>8.1f} "
                      f"{r['peak_mb']:>8.0f} {'' if driver is None else f'{driver:.0f}':>10} "
                      f"{'' if task_peak is None else f'{task_peak:.0f}':>13}")  # fmt: skip

    # The 5nodes sizes are of the text tables: bytes of Parquet would not scale to them.
    projection = project_cost(query_results) if args.fmt == "csv" else []
    report["cost_projection_5nodes"] = projection
    if projection:
        print("\ncost projection (not measured: our local cost block scaled linearly by bytes to the Amplab "
              "5nodes tables, uservisits 126.8 GB, rankings 6.38 GB; 1536 MB functions, x86_64)")  # fmt: skip
    for p in projection:
        for layer in ("with_layer", "without_layer"):
            if layer in p:
                five = p[layer]["five_nodes"]
                print(f"  projection {p['query']} {layer.replace('_', ' ')} (map tasks {p[layer]['mode']}): "
                      f"x{p['scale_factor']:,.0f} -> {five.get('gb_seconds', 0):,.0f} GB-s, Lambda compute "
                      f"${five.get('lambda_compute', 0):.4f}, total ${five.get('total', 0):.4f}")  # fmt: skip

    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.results}")
    if not args.no_chart and args.fmt == "csv":  # the chart shows the python reference too
        png = args.results.with_suffix(".png")
        subprocess.run([str(ensure_chart_venv(HERE / ".venv-chart")), str(HERE / "_chart_amplab.py"),
                        str(args.results), str(png)], check=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
