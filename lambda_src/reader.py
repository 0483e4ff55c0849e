"""Input splits (:class:`Segment`) and the errors of reading them.

How a split is planned and read is its format's business (:mod:`lambda_src.formats`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lambda_src import storage as st

SAMPLE_CHARS = 120


class InputError(Exception):
    """Input that cannot be read; the message names the object and byte offset."""

    def __init__(self, message: str, *, uri: str, offset: int | None = None):
        super().__init__(message)
        self.uri = uri
        self.offset = offset


@dataclass(frozen=True)
class Segment:
    """One split of one input object: a byte range (the whole object when compressed), read
    with the input format named ``format``."""

    uri: str
    start: int
    end: int
    size: int
    compression: str | None = None
    input: str | None = None
    #: The object's version when it was planned (``ObjectInfo.version``; "" = unchecked).
    version: str = ""
    #: The name of the :class:`~lambda_src.formats.InputFormat` that planned it.
    format: str = "text"
    #: The row groups ``[first, stop)`` of a split of a format that has them (Parquet); the
    #: byte range is then theirs, for sizing only. ``stop`` None: to the object's last row
    #: group (the whole object, planned without reading its footer).
    row_groups: tuple[int, int | None] | None = None

    def to_dict(self) -> dict:
        out = {"uri": self.uri, "start": self.start, "end": self.end, "size": self.size}
        if self.compression:
            out["compression"] = self.compression
        if self.input:
            out["input"] = self.input
        if self.version:
            out["version"] = self.version
        if self.format != "text":
            out["format"] = self.format
        if self.row_groups is not None:
            out["row_groups"] = list(self.row_groups)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Segment:
        try:
            seg = cls(
                uri=str(data["uri"]),
                start=int(data["start"]),
                end=int(data["end"]),
                size=int(data["size"]),
                compression=data.get("compression") or None,
                input=data.get("input") or None,
                version=str(data.get("version") or ""),
                format=str(data.get("format") or "text"),
                row_groups=_row_groups(data.get("row_groups")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed split description: {err}") from None
        if not 0 <= seg.start <= seg.end <= seg.size:
            raise ValueError(f"split range {seg.start}-{seg.end} is outside 0-{seg.size}")
        return seg

    def describe(self) -> str:
        if self.row_groups is not None:
            first, stop = self.row_groups
            if stop is None:
                return f"{self.uri} row groups {first}-last"
            return f"{self.uri} row groups {first}-{stop - 1}" if stop > first else f"{self.uri} (no row groups)"
        if self.compression:
            return f"{self.uri} (whole, {self.compression})"
        return f"{self.uri} bytes {self.start}-{self.end}"


def _row_groups(value: Any) -> tuple[int, int | None] | None:
    if value is None:
        return None

    def index(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if (not isinstance(value, list | tuple) or len(value) != 2 or not index(value[0])
            or not (value[1] is None or (index(value[1]) and value[0] <= value[1]))):
        raise ValueError(f"row_groups must be [first, stop) with 0 <= first <= stop, or [first, null) "
                         f"for every row group from first, got {value!r}")
    return (value[0], value[1])


def check_unchanged(segments: list[Segment]) -> None:
    """Refuse to read an object that changed (or vanished) since the job was planned.

    Tasks of one job must all see the same data: a task that read the new version of an
    object beside tasks that read the old one would mix them.
    """
    planned = {seg.uri: seg for seg in segments if seg.version}

    def stat(uri: str) -> st.ObjectInfo | None:
        try:
            return st.for_uri(uri).stat(uri)
        except st.NotFound:
            return None

    found = dict(zip(planned, st.per_object(stat, list(planned), str), strict=True))
    for uri, seg in planned.items():
        now = found[uri]
        if now is None:
            raise InputError(f"{seg.uri} was deleted after the job was planned", uri=seg.uri)
        if (now.size, now.version) != (seg.size, seg.version):
            raise InputError(
                f"{seg.uri} changed after the job was planned (size {seg.size}, version "
                f"{seg.version} then; size {now.size}, version {now.version} now): a job reads "
                f"the data it planned or none; start a new job (another job id) to read it",
                uri=seg.uri,
            )


def sample(raw: Any) -> str:
    """The start of a record, for a message."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw if isinstance(raw, str) else repr(raw)
    return text[:SAMPLE_CHARS] + ("..." if len(text) > SAMPLE_CHARS else "")

