"""Planning: list every input object, cut newline-safe splits, pack them into map tasks."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

from lambda_src import formats
from lambda_src import storage as st
from lambda_src.reader import Segment

log = logging.getLogger(__name__)


class InputNotFound(ValueError):
    """An input URI matched no object."""


class InputOverlap(ValueError):
    """Two input URIs of one named input reach the same object."""


def is_hidden(uri: str, root: str) -> bool:
    """Hadoop's convention: names starting with ``_`` or ``.`` below the root are not data."""
    rel = st.relative_to(uri, root) or ""
    return any(part.startswith(("_", ".")) for part in rel.split("/") if part)


def list_input(uri: str) -> list[st.ObjectInfo]:
    """Every data object at ``uri`` (an object, or a directory/prefix, all pages).

    Local symbolic links to files and directories are followed (see ``LocalStorage.list``).
    """
    root = st.normalize(uri)
    found = [info for info in st.for_uri(root).list(root, follow_links=True) if not is_hidden(info.uri, root)]
    if not found:
        raise InputNotFound(f"input {uri} matched no objects")
    return found


def list_inputs(name: str, uris: list[str]) -> list[st.ObjectInfo]:
    """The objects of one named input, each read once.

    An object reached through two links below one input URI is listed once, under its
    first name in path order. One reached through two different input URIs (a link in
    one input to a file or directory of another) is refused, naming both: the input list
    overlaps.
    """
    listed: list[st.ObjectInfo] = []
    first: dict[tuple[int, int], tuple[str, str]] = {}  # identity -> (input URI, object URI)
    for uri in uris:
        again = 0
        for info in list_input(uri):
            if info.identity is None:
                listed.append(info)
                continue
            if info.identity in first:
                seen_input, seen_uri = first[info.identity]
                if seen_input != uri:
                    raise InputOverlap(
                        f"input {name or '<default>'!r}: {info.uri} (in {uri}) is the same file as "
                        f"{seen_uri} (in {seen_input}); list each input once"
                    )
                again += 1
                continue
            first[info.identity] = (uri, info.uri)
            listed.append(info)
        if again:
            log.warning("input %s: %d objects reached through more than one link are read once, "
                        "under their first name in path order", uri, again)
    return listed


@dataclass
class MapTask:
    index: int
    splits: list[Segment]

    @property
    def bytes(self) -> int:
        return sum(s.end - s.start for s in self.splits)

    def describe(self) -> str:
        if len(self.splits) == 1:
            return self.splits[0].describe()
        first = self.splits[0].describe()
        return f"{first} and {len(self.splits) - 1} more"


def pack(
    segments: Iterable[Segment], target_bytes: int, max_files: int, cut: bool = False
) -> list[MapTask]:
    """Pack segments into tasks of about ``target_bytes`` and at most ``max_files`` splits.

    Whole large splits get a task each; small objects are batched, in listing order, until
    a task holds ``target_bytes`` (balanced by bytes, not by count). With ``cut``, a
    segment its format can cut (``InputFormat.can_cut``: an uncompressed text range) that
    would overfill a task is cut where the task is full and the rest starts the next task, so
    tasks come out equal in bytes whatever the object sizes (the reader aligns every range to
    whole records).
    """
    tasks: list[MapTask] = []
    current: list[Segment] = []
    current_bytes = 0
    min_piece = min(MIN_PIECE, max(1, target_bytes // 8))
    for seg in segments:
        while True:
            size = seg.end - seg.start
            room = target_bytes - current_bytes
            splittable = cut and formats.get(seg.format).can_cut(seg)
            if len(current) >= max_files:
                pass  # full: start the next task
            elif size <= room or (splittable and size - room < min_piece):
                current.append(seg)  # fits (or overfills by less than a piece)
                current_bytes += size
                break
            elif splittable and room >= min_piece:
                current.append(replace(seg, end=seg.start + room))  # fill this task...
                seg = replace(seg, start=seg.start + room)  # ...and carry the rest
            elif not current:
                current.append(seg)  # larger than a task and not cut: a task of its own
                current_bytes += size
                break
            tasks.append(MapTask(len(tasks), current))
            current, current_bytes = [], 0
    if current:
        tasks.append(MapTask(len(tasks), current))
    return tasks


#: The smallest piece ``pack(cut=True)`` cuts off a segment (or an eighth of a task).
MIN_PIECE = 256 * 1024

#: Below this, splitting further costs more in per-task overhead than it saves.
MIN_BALANCED_SPLIT = 1024 * 1024


def balanced_split_size(
    total_bytes: int, split_size: int, parallelism: int, min_split: int | None = None
) -> int:
    """A split size that gives a multiple of ``parallelism`` tasks when tasks are few.

    Three equal tasks on two workers take as long as four; with few tasks, rounding their
    number up to a multiple of the worker count shortens the job. Many tasks balance by
    themselves, and small inputs are not worth cutting finer, so both are left alone.
    """
    if parallelism <= 1 or total_bytes <= 0:
        return split_size
    if min_split is None:
        min_split = MIN_BALANCED_SPLIT
    count = -(-total_bytes // split_size)
    if count % parallelism == 0 or count >= 8 * parallelism:
        return split_size
    balanced = -(-total_bytes // (-(-count // parallelism) * parallelism))
    return balanced if balanced >= min(min_split, split_size) else split_size


def _equal_shares(segments: list[Segment], count: int, max_files: int) -> list[MapTask]:
    """About ``count`` tasks, each with an equal share of the bytes of every input.

    With few tasks, whole objects of uneven sizes pack unevenly (25+25, 25+25+6+6, 6+6 MB
    on two workers), and inputs can differ in cost per byte (a join's two tables): so each
    named input is cut into ``count`` equal pieces, and task i gets piece i of each.
    """
    by_input: dict[str | None, list[Segment]] = {}
    for seg in segments:
        by_input.setdefault(seg.input, []).append(seg)
    shares = []
    for segs in by_input.values():
        if all(formats.get(s.format).can_cut(s) for s in segs):
            size = sum(s.end - s.start for s in segs)
            shares.append(pack(segs, max(1, -(-size // count)), max_files, cut=True))
        else:
            shares.append(_balanced_bins(segs, count))
    merged = [
        [seg for share in shares if i < len(share) for seg in share[i].splits]
        for i in range(max(len(s) for s in shares))
    ]
    if any(len(splits) > max_files for splits in merged):
        return pack(segments, -(-sum(s.end - s.start for s in segments) // count), max_files, cut=True)
    return [MapTask(i, splits) for i, splits in enumerate(merged)]


def _balanced_bins(segments: list[Segment], count: int) -> list[MapTask]:
    """Segments that cannot all be cut, dealt into at most ``count`` tasks of about equal bytes:
    the largest first, each to the task with the fewest bytes so far (filling tasks up to a
    byte target in listing order made 3 tasks of 4 equal objects for 2 workers whenever two of
    them overfilled a half by a byte). A task's segments keep their listing order."""
    bins: list[list[int]] = [[] for _ in range(min(count, len(segments)))]
    loads = [0] * len(bins)
    for i in sorted(range(len(segments)), key=lambda i: -(segments[i].end - segments[i].start)):
        target = loads.index(min(loads))
        bins[target].append(i)
        loads[target] += segments[i].end - segments[i].start
    ordered = sorted((sorted(b) for b in bins if b), key=lambda b: b[0])
    return [MapTask(n, [segments[i] for i in b]) for n, b in enumerate(ordered)]


def read_heads(infos: list[st.ObjectInfo]) -> dict[str, bytes]:
    """The first bytes of each non-empty object whose name says neither its format nor its
    codec (``formats.wants_head``), by URI."""
    wanted = [info for info in infos if info.size and formats.wants_head(info.uri)]

    def head(info: st.ObjectInfo) -> bytes:
        return st.for_uri(info.uri).read_bytes(info.uri, 0, min(info.size, formats.HEAD_BYTES))

    return dict(zip((info.uri for info in wanted), st.per_object(head, wanted, _uri), strict=True))


def _uri(item: st.ObjectInfo | tuple[st.ObjectInfo, str | None]) -> str:
    return (item[0] if isinstance(item, tuple) else item).uri


#: A broadcast join holds the smaller input in each function's memory as an Arrow table (about
#: its text size), beside Arrow's hash table and the other input's rows: it is chosen when the
#: smaller input's bytes times this factor fit the function's memory.
BROADCAST_MEMORY_FACTOR = 4


def join_strategy(sizes: dict[str, int], memory_mb: int) -> dict:
    """How a Join step runs, from its two inputs' sizes: broadcast the smaller input when it
    fits a function's memory (``BROADCAST_MEMORY_FACTOR``), else partition both."""
    small = min(sorted(sizes), key=lambda name: sizes[name])
    fits = sizes[small] * BROADCAST_MEMORY_FACTOR <= memory_mb * 1024 * 1024
    return {"strategy": "broadcast" if fits else "partitioned", "broadcast": small if fits else None,
            "input_bytes": dict(sizes), "memory_mb": memory_mb}


def broadcast_task_bytes(split_size: int, broadcast_bytes: int, total_bytes: int, parallelism: int) -> int:
    """A broadcast join's map task's share of the larger input: one task per worker (of
    ``parallelism``), within bounds. At least the broadcast input's size: every task reads
    all of it, whatever its own share, so a share at least as large keeps that fixed cost at
    most half the task's work (with 64 MB tasks of 1.6 GB beside a 400 MB broadcast input,
    25 tasks would each read it). At most four times that, so that a large input still makes
    tasks enough to balance and retry. Never less than the split size. Few tasks are made a
    multiple of the workers (``balanced_split_size``) only where each stays at least the
    broadcast input's size."""
    per_worker = -(-total_bytes // max(1, parallelism))
    share = max(split_size, broadcast_bytes, min(per_worker, 4 * broadcast_bytes))
    balanced = balanced_split_size(total_bytes, share, parallelism)
    return balanced if balanced >= min(share, broadcast_bytes) else share


def plan(
    inputs: dict[str, list[str]], split_size: int, max_files_per_task: int, parallelism: int = 1,
    input_formats: dict[str, str] | None = None,
    join_memory_mb: int | None = None,
) -> tuple[list[MapTask], dict]:
    """The map tasks of a job and a summary of its input.

    ``input_formats`` names the format of an input (by input name, ``""`` for an unnamed
    one); the others' formats and codecs come from their names and first bytes.

    ``join_memory_mb`` (a job whose first step is a Join of its two inputs) plans the join:
    for a broadcast join, the tasks cover the larger input and each also reads all of the
    smaller one; the summary's ``join`` says which strategy the planner chose.
    """
    listed: list[tuple[st.ObjectInfo, str | None]] = []
    for name, uris in inputs.items():
        listed.extend((info, name or None) for info in list_inputs(name, uris))
    join = None
    broadcast: list[tuple[st.ObjectInfo, str | None]] = []
    if join_memory_mb is not None:
        sizes = {name: 0 for name in inputs}
        for info, name in listed:
            sizes[name or ""] += info.size
        join = join_strategy(sizes, join_memory_mb)
        log.info("join of %s: %s%s", " and ".join(f"{n} ({b:,} bytes)" for n, b in sizes.items()),
                 join["strategy"], f" (broadcasting {join['broadcast']})" if join["broadcast"] else "")
        if join["broadcast"] is not None:
            broadcast = [item for item in listed if item[1] == join["broadcast"]]
            listed = [item for item in listed if item[1] != join["broadcast"]]
    total = sum(info.size for info, _ in listed)
    effective = balanced_split_size(total, split_size, parallelism)
    # A task's bytes: a split's, or in a broadcast join more (broadcast_task_bytes, balanced for
    # the workers), in splits of the planned size, so that a task reads its share a split at a time
    share = effective if not broadcast else broadcast_task_bytes(
        split_size, join["input_bytes"][join["broadcast"]], total, parallelism)
    heads = read_heads([info for info, _ in [*listed, *broadcast]])

    def split(item: tuple[st.ObjectInfo, str | None], size: int | None = None) -> list[Segment]:
        """The object's splits of ``size`` bytes (default: the planned split size)."""
        info, name = item
        head = heads.get(info.uri, b"")
        fmt = formats.for_object(info.uri, (input_formats or {}).get(name or ""), head)
        return fmt.split(info, size or effective, name, formats.compression_of(info.uri, head))

    # A format may read the object to split it (Parquet's footer): several at once on S3.
    segments = [seg for segs in st.per_object(split, listed, _uri) for seg in segs]
    count = -(-total // share)
    if parallelism > 1 and 0 < count < 8 * parallelism:
        tasks = _equal_shares(segments, count, max_files_per_task)
    else:
        tasks = pack(segments, share, max_files_per_task)
    # a broadcast input is read whole by every task: one split per object, in its own format
    shared = [seg for item in broadcast for seg in split(item, max(1, item[0].size))]
    if shared:
        tasks = [MapTask(t.index, [*t.splits, *shared]) for t in tasks] or [MapTask(0, shared)]
    summary = {"objects": len(listed) + len(broadcast), "bytes": total + sum(i.size for i, _ in broadcast),
               "splits": len(segments) + len(shared), "tasks": len(tasks), "split_size": effective}
    if join is not None:
        summary["join"] = join
    return tasks, summary
