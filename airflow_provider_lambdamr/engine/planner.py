"""Planning: list every input object, cut newline-safe splits, pack them into map tasks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lambda_src import storage as st
from lambda_src.reader import Segment


class InputNotFound(ValueError):
    """An input URI matched no object."""


def is_hidden(uri: str, root: str) -> bool:
    """Hadoop's convention: names starting with ``_`` or ``.`` below the root are not data."""
    rel = uri[len(root.rstrip("/")) :].lstrip("/")
    return any(part.startswith(("_", ".")) for part in rel.split("/") if part)


def list_input(uri: str) -> list[st.ObjectInfo]:
    """Every data object at ``uri`` (an object, or a directory/prefix, all pages)."""
    found = [info for info in st.for_uri(uri).list(uri) if not is_hidden(info.uri, uri)]
    if not found:
        raise InputNotFound(f"input {uri} matched no objects")
    return found


def compression_of(uri: str) -> str | None:
    return "gzip" if uri.endswith((".gz", ".gzip")) else None


def split_object(info: st.ObjectInfo, split_size: int, input_name: str | None) -> list[Segment]:
    """Byte ranges of at most ``split_size``; compressed objects are never cut."""
    compression = compression_of(info.uri)
    if compression or info.size <= split_size:
        return [Segment(info.uri, 0, info.size, info.size, compression, input_name)]
    count = -(-info.size // split_size)
    step = -(-info.size // count)  # even ranges: no tiny tail split
    return [
        Segment(info.uri, start, min(start + step, info.size), info.size, None, input_name)
        for start in range(0, info.size, step)
    ]


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


def pack(segments: Iterable[Segment], target_bytes: int, max_files: int) -> list[MapTask]:
    """Pack segments into tasks of about ``target_bytes`` and at most ``max_files`` splits.

    Whole large splits get a task each; small objects are batched, in listing order, until
    a task holds ``target_bytes`` (balanced by bytes, not by count).
    """
    tasks: list[MapTask] = []
    current: list[Segment] = []
    current_bytes = 0
    for seg in segments:
        size = seg.end - seg.start
        if current and (current_bytes + size > target_bytes or len(current) >= max_files):
            tasks.append(MapTask(len(tasks), current))
            current, current_bytes = [], 0
        current.append(seg)
        current_bytes += size
    if current:
        tasks.append(MapTask(len(tasks), current))
    return tasks


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


def plan(
    inputs: dict[str, list[str]], split_size: int, max_files_per_task: int, parallelism: int = 1
) -> tuple[list[MapTask], dict]:
    """The map tasks of a job and a summary of its input."""
    listed: list[tuple[st.ObjectInfo, str | None]] = []
    for name, uris in inputs.items():
        for uri in uris:
            listed.extend((info, name or None) for info in list_input(uri))
    total = sum(info.size for info, _ in listed)
    effective = balanced_split_size(total, split_size, parallelism)
    segments: list[Segment] = []
    for info, name in listed:
        segments.extend(split_object(info, effective, name))
    tasks = pack(segments, effective, max_files_per_task)
    summary = {"objects": len(listed), "bytes": total, "splits": len(segments), "tasks": len(tasks),
               "split_size": effective}
    return tasks, summary
