"""A job's report: one self-contained HTML page drawn from what the job left in storage.

A timeline of every task attempt (one row per task, grouped by step and phase: map, reduce
round 1..n; one bar per attempt from its start to its end, coloured by how it ended), and
a summary: records and bytes per phase, task and attempt counts, retries, speculative
attempts, the cost, and the job's state. It reads only storage (the manifest, the status
records and failed-attempt records, ``failed.json``, the output's ``_SUCCESS``), so it
works for a running, failed or committed job, from any machine.

The page has no scripts and no external assets (an inline SVG with hover titles): it
opens offline. Every string from storage is escaped.

An attempt that left no record (killed by the runtime: a straggler cancelled when its
speculative twin committed, a timeout, a crash) is known only by its number: it is drawn
as a dashed marker before the next attempt, not as a bar with invented times.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from airflow_provider_lambdamr.engine import jobdir
from lambda_src import contract
from lambda_src import storage as st

#: Attempt states, and their colours on the timeline.
COLOURS = {
    "committed": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#ef8f00",
    "unrecorded": "#9e9e9e",
}
_READERS = 16


@dataclass
class Attempt:
    """One attempt of one task, as its record (or its absence) tells."""

    key: str  # the task's status key
    attempt: int
    state: str  # a key of COLOURS
    token: str = ""
    request_id: str | None = None
    started_at: float | None = None
    duration_ms: float | None = None
    records: int | None = None
    bytes: int | None = None
    error: contract.Failure | None = None

    @property
    def ended_at(self) -> float | None:
        if self.started_at is None:
            return None
        return self.started_at + (self.duration_ms or 0) / 1000


@dataclass
class Task:
    key: str
    step: int
    phase: str
    round: int  # 0 for map tasks
    order: tuple
    label: str
    attempts: list[Attempt] = field(default_factory=list)
    commit: dict | None = None

    @property
    def group(self) -> tuple[int, int]:
        return (self.step, self.round)


@dataclass
class Phase:
    """What the tasks of one phase (a step's map, or one of its reduce rounds) did."""

    name: str
    tasks: int = 0
    committed: int = 0
    attempts: int = 0
    input_records: int = 0
    input_bytes: int = 0
    output_records: int = 0
    output_bytes: int = 0


@dataclass
class JobReport:
    job_id: str
    job_dir: str
    state: str  # committed, failed, running
    manifest: dict
    summary: dict | None
    failure: dict | None
    tasks: list[Task]

    def phases(self) -> list[Phase]:
        phases: dict[tuple[int, int], Phase] = {}
        for task in self.tasks:
            phase = phases.setdefault(task.group, Phase(_group_name(task)))
            phase.tasks += 1
            phase.attempts += len(task.attempts)
            if task.commit is not None:
                phase.committed += 1
                stats = task.commit.get("stats") or {}
                phase.input_records += int(stats.get("input_records", 0))
                phase.input_bytes += int(stats.get("input_bytes", 0))
                for out in task.commit.get("outputs") or []:
                    phase.output_records += int(out.get("records", 0))
                    phase.output_bytes += int(out.get("bytes", 0))
        return [phases[g] for g in sorted(phases)]


def _task_of(record: dict) -> Task:
    """The task a record belongs to, from the record's own ``task`` member."""
    t = record["task"]
    if not isinstance(t, dict) or t.get("phase") not in (contract.MAP, contract.REDUCE):
        raise ValueError(f"its task is not a map or reduce task: {t!r}")
    step = int(t.get("step", 0))
    if t["phase"] == contract.MAP:
        index = int(t["index"])
        return Task(contract.map_status_key(step, index), step, contract.MAP, 0, (index,), f"map {index}")
    rnd, part, group = int(t["round"]), int(t["partition"]), int(t["group"])
    label = f"{'final ' if t.get('final') else ''}reduce p{part} g{group}"
    return Task(contract.reduce_status_key(step, rnd, part, group), step, contract.REDUCE, rnd,
                (part, group), label)


def _group_name(task: Task) -> str:
    where = "map" if task.phase == contract.MAP else f"reduce round {task.round}"
    return f"step {task.step + 1} {where}"


def _attempt(key: str, record: contract.StatusRecord) -> Attempt:
    committed = record.error is None
    stats = record.result.get("stats") or {}
    outputs = record.result.get("outputs") or []
    started = record.result.get("started_at")
    duration = stats.get("duration_ms") if committed else record.duration_ms
    return Attempt(
        key=key, attempt=int(record.attempt),
        state="committed" if committed else ("cancelled" if record.error.kind == "cancelled" else "failed"),
        token=record.attempt_token, request_id=record.request_id,
        started_at=float(started) if isinstance(started, int | float) else None,
        duration_ms=float(duration) if isinstance(duration, int | float) else None,
        records=sum(int(o.get("records", 0)) for o in outputs) if committed else None,
        bytes=sum(int(o.get("bytes", 0)) for o in outputs) if committed else None,
        error=record.error,
    )


def _read_records(uris: list[str]) -> list[tuple[str, dict]]:
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        return [(u, r) for u, r in zip(uris, pool.map(jobdir.read_json, uris), strict=True) if r is not None]


def collect(job_dir: str) -> JobReport:
    """Everything the report shows, read from the job directory (and the job's output)."""
    job_dir = st.normalize(job_dir).rstrip("/")
    manifest = jobdir.require_job_dir(job_dir)
    job_id = manifest["job_id"]
    status = contract.status_dir(job_dir)
    uris = [info.uri for info in st.for_uri(status).list(status) if info.uri.endswith(".json")]
    tasks: dict[str, Task] = {}
    for uri, data in _read_records(uris):
        try:
            record = contract.StatusRecord.from_dict(data)
            task = _task_of(data)
            attempt = _attempt(task.key, record)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{uri} is not a LambdaMR status record: {err!r}") from None
        if record.job_id != job_id:
            continue
        task = tasks.setdefault(task.key, task)
        task.attempts.append(attempt)
        if record.error is None:
            task.commit = data
    for task in tasks.values():
        # Attempts below the newest that left no record were killed by the runtime.
        known = {a.attempt for a in task.attempts}
        task.attempts.extend(Attempt(task.key, n, "unrecorded")
                             for n in range(1, max(known)) if n not in known)
        task.attempts.sort(key=lambda a: (a.attempt, a.started_at or 0))
    success = jobdir.read_success(manifest["spec"]["output"]).summary
    summary = success if success is not None and success.get("job_id") == job_id else None
    failure = jobdir.read_json(contract.failure_uri(job_dir))
    failure = failure if isinstance(failure, dict) else None
    state = "committed" if summary else ("failed" if failure else "running")
    ordered = sorted(tasks.values(), key=lambda t: (t.group, t.order))
    return JobReport(job_id, job_dir, state, manifest, summary, failure, ordered)


# -- rendering ---------------------------------------------------------------------------
_LABEL_W = 230
_PLOT_W = 900
_ROW_H = 16
_HEADER_H = 22
_AXIS_H = 28
_MARK_W = 6


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(n: float | None) -> str:
    return "?" if n is None else f"{n:,.0f}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _title(task: Task, a: Attempt) -> str:
    lines = [f"{_group_name(task)}: {task.label}", f"attempt {a.attempt}: {a.state}"]
    if a.state == "unrecorded":
        lines.append("no record: the runtime stopped it (a straggler cancelled when its speculative "
                     "twin committed, a timeout or a crash); its times are unknown")
    if a.token:
        lines.append(f"token {a.token}, request {a.request_id or '?'}")
    if a.duration_ms is not None:
        lines.append(f"{a.duration_ms / 1000:.3f} s")
    if a.state == "committed":
        lines.append(f"{_num(a.records)} records, {_bytes(a.bytes)} out")
    if a.error is not None:
        lines.append(f"{a.error.kind} error: {a.error.text}")
    if a.started_at is None and a.state != "unrecorded":
        lines.append("no start time in its record (written by an older release)")
    return "\n".join(lines)


def _timeline(report: JobReport) -> str:
    times = [t for task in report.tasks for a in task.attempts
             for t in (a.started_at, a.ended_at) if t is not None]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    span = max(t1 - t0, 1e-3)

    def x(t: float) -> float:
        return _LABEL_W + (t - t0) / span * _PLOT_W

    rows: list[str] = []
    y = _AXIS_H
    group = None
    for task in report.tasks:
        if task.group != group:
            group = task.group
            rows.append(f'<text class="group" x="4" y="{y + 15}">{_e(_group_name(task))}</text>')
            y += _HEADER_H
        if len(task.attempts) > 1:
            rows.append(f'<rect class="retried" x="0" y="{y}" width="{_LABEL_W + _PLOT_W}" height="{_ROW_H}"/>')
        rows.append(f'<text class="label" x="12" y="{y + 12}">{_e(task.label)}</text>')
        for i, a in enumerate(task.attempts):
            attrs = (f'data-task="{_e(task.key)}" data-attempt="{a.attempt}" data-state="{a.state}"'
                     + (f' data-kind="{_e(a.error.kind)}"' if a.error is not None else ""))
            title = f"<title>{_e(_title(task, a))}</title>"
            if a.started_at is not None:
                left, width = x(a.started_at), max(x(a.ended_at) - x(a.started_at), 2.0)
                rows.append(f'<rect class="bar {a.state}" {attrs} x="{left:.1f}" y="{y + 2}" width="{width:.1f}" '
                            f'height="{_ROW_H - 4}" fill="{COLOURS[a.state]}">{title}</rect>')
            else:  # no times: a dashed marker before the next timed attempt (or the row's start)
                nxt = next((b.started_at for b in task.attempts[i + 1:] if b.started_at is not None), t0)
                rows.append(f'<rect class="mark {a.state}" {attrs} x="{x(nxt) - _MARK_W - 1:.1f}" y="{y + 2}" '
                            f'width="{_MARK_W}" height="{_ROW_H - 4}" stroke="{COLOURS[a.state]}">{title}</rect>')
        y += _ROW_H
    ticks = []
    for k in range(6):
        tx = _LABEL_W + k * _PLOT_W / 5
        ticks.append(f'<line class="tick" x1="{tx:.1f}" y1="{_AXIS_H - 6}" x2="{tx:.1f}" y2="{y}"/>'
                     f'<text class="axis" x="{tx:.1f}" y="{_AXIS_H - 10}">{span * k / 5:.2f} s</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LABEL_W + _PLOT_W + 40}" height="{y + 8}" '
            f'role="img" aria-label="timeline of task attempts">{"".join(ticks)}{"".join(rows)}</svg>')


def _table(head: Iterable[str] | None, rows: Iterable[Iterable[object]]) -> str:
    th = "" if head is None else "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{th}<tbody>{body}</tbody></table>"


def _summary(report: JobReport) -> str:
    attempts = [a for t in report.tasks for a in t.attempts]
    by_state = {s: sum(a.state == s for a in attempts) for s in COLOURS}
    spec = report.manifest["spec"]
    facts = [
        ("job", report.job_id), ("state", report.state), ("job directory", report.job_dir),
        ("job code", spec.get("job", "?")), ("output", spec.get("output", "?")),
        ("created", report.manifest.get("created_at", "?")),
        ("tasks", f"{len(report.tasks)} ({sum(t.commit is not None for t in report.tasks)} committed)"),
        ("attempts", f"{len(attempts)}: " + ", ".join(f"{n} {s}" for s, n in by_state.items() if n)),
        ("retried tasks", sum(len(t.attempts) > 1 for t in report.tasks)),
    ]
    join = report.manifest["plan"].get("join")
    if join:  # the strategy the planner chose for a Join step, and from what
        sizes = ", ".join(f"{name} {_bytes(size)}" for name, size in join["input_bytes"].items())
        how = f"broadcast of {join['broadcast']}" if join["broadcast"] else "partitioned"
        facts.append(("join", f"{how} (inputs {sizes}; function memory {join['memory_mb']} MB)"))
    if report.summary is not None:
        s = report.summary
        facts += [("finished", s.get("finished_at", "?")),
                  ("speculative attempts", s.get("speculative_attempts", 0)),
                  ("total time", f"{(s.get('durations_s') or {}).get('total', '?')} s")]
    if report.failure is not None:
        facts.append(("failure", report.failure.get("message", report.failure)))
    return _table(None, facts)


def _figures(report: JobReport) -> str:
    """Records and bytes per phase; the counters and the cost of a committed job."""
    out = ["<h2>Records and bytes per phase</h2>"]
    out.append(_table(
        ("phase", "tasks", "committed", "attempts", "records in", "bytes in", "records out", "bytes out"),
        ((p.name, p.tasks, p.committed, p.attempts, _num(p.input_records), _bytes(p.input_bytes),
          _num(p.output_records), _bytes(p.output_bytes)) for p in report.phases()),
    ))
    if report.summary is not None:
        counters = report.summary.get("counters") or {}
        out.append("<h2>Counters (from _SUCCESS)</h2>")
        out.append(_table(("counter", "value"), sorted(counters.items())))
        cost = report.summary.get("cost")
        if isinstance(cost, dict):
            currency = cost.get("currency", "")
            out.append("<h2>Cost</h2>")
            out.append(_table(("item", "value"), [
                *((k, f"{cost[k]:.6g} {currency}") for k in
                  ("total", "lambda_compute", "lambda_requests", "s3_requests", "s3_storage")
                  if isinstance(cost.get(k), int | float)),
                *((k, cost[k]) for k in ("invocations", "gb_seconds", "billed_ms", "memory_mb", "note")
                  if k in cost),
            ]))
    return "".join(out)


_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 8px}h2{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin-bottom:8px}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
th{background:#f3f3f3}.state-committed{color:#2e7d32}.state-failed{color:#c62828}.state-running{color:#1565c0}
svg text{font:11px system-ui,sans-serif;fill:#333}svg text.group{font-weight:bold}svg text.axis{text-anchor:middle;fill:#777}
svg .tick{stroke:#eee}svg .retried{fill:#fff6e0}svg .mark{fill:none;stroke-width:1.5;stroke-dasharray:2 2}
.legend span{display:inline-block;width:12px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
"""


def render(report: JobReport) -> str:
    """The report as one HTML document (no scripts, no external assets)."""
    legend = "".join(f'<span style="background:{c}"></span>{_e(s)}' for s, c in COLOURS.items())
    note = ("" if report.state == "committed" else
            "<p>Attempts still running are not shown: an attempt writes its record when it ends.</p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>LambdaMR job {_e(report.job_id)}</title><style>{_CSS}</style></head><body>"
        f"<h1>LambdaMR job {_e(report.job_id)}: <span class=\"state-{_e(report.state)}\">{_e(report.state)}</span></h1>"
        f"{_summary(report)}<h2>Timeline</h2>"
        f"<p class=\"legend\">{legend} (shaded rows: tasks with more than one attempt; hover a bar for "
        f"details)</p>{note}{_timeline(report)}{_figures(report)}"
        f"<p>Written {_e(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))} from {_e(report.job_dir)}.</p>"
        "</body></html>\n"
    )


def write(job_dir: str, out_uri: str | None = None) -> str:
    """Write the report of the job in ``job_dir`` to ``out_uri`` (default: its ``report.html``)."""
    report = collect(job_dir)
    uri = st.normalize(out_uri) if out_uri else contract.report_uri(report.job_dir)
    st.for_uri(uri).write_bytes(uri, render(report).encode("utf-8"))
    return uri

