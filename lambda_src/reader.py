"""Read the lines of one input split exactly once, whatever the split edges.

A split is a byte range ``[start, end)`` of an object. The split owns every line whose
first byte lies in that range: the reader skips a partial first line (unless the byte before
``start`` is a newline) and reads past ``end`` only to finish its last line. Adjacent splits
therefore cover each line exactly once, including files without a trailing newline and empty
files. Compressed (``.gz``) objects are never cut: one split holds the whole object.

Line length limit: a line's length is its bytes without the terminating ``\n`` (the ``\r`` of
a ``\r\n`` ending counts). A line of up to ``max_line_bytes`` is read; a longer one is refused
with :class:`InputError`, wherever it lies: inside a split, across a split boundary (where it
would also make a split read that far past its end) or at the end of an object without a
trailing newline. Whether a file is read or refused therefore never depends on the split size.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lambda_src import storage as st

SCAN_STEP = 64 * 1024
DEFAULT_MAX_LINE_BYTES = 1024 * 1024
SAMPLE_CHARS = 120
#: A UTF-8 byte order mark: dropped at byte 0 of an object, data anywhere else.
BOM = b"\xef\xbb\xbf"


class InputError(Exception):
    """Input that cannot be read as lines; the message names the object and byte offset."""

    def __init__(self, message: str, *, uri: str, offset: int | None = None):
        super().__init__(message)
        self.uri = uri
        self.offset = offset


@dataclass(frozen=True)
class Segment:
    """One byte range of one input object (the whole object when compressed)."""

    uri: str
    start: int
    end: int
    size: int
    compression: str | None = None
    input: str | None = None
    #: The object's version when it was planned (``ObjectInfo.version``; "" = unchecked).
    version: str = ""

    def to_dict(self) -> dict:
        out = {"uri": self.uri, "start": self.start, "end": self.end, "size": self.size}
        if self.compression:
            out["compression"] = self.compression
        if self.input:
            out["input"] = self.input
        if self.version:
            out["version"] = self.version
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
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed split description: {err}") from None
        if not 0 <= seg.start <= seg.end <= seg.size:
            raise ValueError(f"split range {seg.start}-{seg.end} is outside 0-{seg.size}")
        if seg.compression not in (None, "gzip"):
            raise ValueError(f"unsupported compression {seg.compression!r} for {seg.uri}")
        return seg

    def describe(self) -> str:
        if self.compression:
            return f"{self.uri} (whole, {self.compression})"
        return f"{self.uri} bytes {self.start}-{self.end}"


def check_unchanged(segments: list[Segment]) -> None:
    """Refuse to read an object that changed (or vanished) since the job was planned.

    Tasks of one job must all see the same data: a task that read the new version of an
    object beside tasks that read the old one would mix them.
    """
    seen: set[str] = set()
    for seg in segments:
        if not seg.version or seg.uri in seen:
            continue
        seen.add(seg.uri)
        try:
            now = st.for_uri(seg.uri).stat(seg.uri)
        except st.NotFound:
            raise InputError(f"{seg.uri} was deleted after the job was planned", uri=seg.uri) from None
        if (now.size, now.version) != (seg.size, seg.version):
            raise InputError(
                f"{seg.uri} changed after the job was planned (size {seg.size}, version "
                f"{seg.version} then; size {now.size}, version {now.version} now): a job reads "
                f"the data it planned or none; start a new job (another job id) to read it",
                uri=seg.uri,
            )


#: Leading bytes of formats that are not line-oriented text (not read yet: refused).
MAGIC = (
    (b"\x1f\x8b", "gzip (name the object .gz to have it decompressed)"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"PAR1", "Parquet"),
    (b"ORC", "ORC"),
    (b"Obj\x01", "Avro"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
)


def unsupported_format(uri: str, what: str, offset: int | None = None) -> InputError:
    return InputError(
        f"{uri}: unsupported format or compression ({what}); the input must be line-oriented "
        f"UTF-8 text, plain or gzip (.gz)",
        uri=uri, offset=offset,
    )


def check_text(uri: str, head: bytes) -> None:
    """Refuse an object whose first bytes are a binary format's signature."""
    for magic, what in MAGIC:
        if head.startswith(magic):
            raise unsupported_format(uri, what, 0)


def sample(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text[:SAMPLE_CHARS] + ("..." if len(text) > SAMPLE_CHARS else "")


def next_line_start(
    store: st.Storage, uri: str, pos: int, size: int, max_line_bytes: int
) -> int:
    """The offset of the first line that starts at or after ``pos``.

    Scans from ``pos - 1`` to the next newline: those bytes are the tail of the line crossing
    ``pos``, so more than ``max_line_bytes`` of them means that line is too long. A tail within
    the limit does not prove the whole line is: the split owning it refuses it in iter_blocks.
    """
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    scanned = 0
    cursor = pos - 1  # include the byte before pos: a newline there means pos starts a line
    while cursor < size:
        step = min(SCAN_STEP, size - cursor)
        chunk = store.read_bytes(uri, cursor, cursor + step)
        if not chunk:
            return size
        idx = chunk.find(b"\n")
        if idx >= 0 and scanned + idx <= max_line_bytes:
            return cursor + idx + 1
        cursor += len(chunk)
        scanned += len(chunk)
        if idx >= 0 or scanned > max_line_bytes:
            raise _too_long(uri, f"the line crossing byte {pos}", pos, max_line_bytes)
    return size


def _too_long(uri: str, what: str, offset: int, max_line_bytes: int) -> InputError:
    return InputError(
        f"{uri}: {what} is longer than {max_line_bytes} bytes (raise --max-line-bytes, or "
        f"check that the input is line-oriented text)",
        uri=uri,
        offset=offset,
    )


def first_long_line(data: bytes, max_line_bytes: int) -> int:
    """The offset of the first line of ``data`` (whole lines, each ending in a newline)
    longer than ``max_line_bytes``, or -1.

    Each step looks for a newline in the window of ``max_line_bytes + 1`` bytes after a line
    start: if there is none, the line starting there is too long; otherwise every line
    starting before the last newline in the window ends inside it.
    """
    pos = 0
    while len(data) - pos > max_line_bytes + 1:
        nl = data.rfind(b"\n", pos, pos + max_line_bytes + 1)
        if nl < 0:
            return pos
        pos = nl + 1
    return -1


def aligned_range(store: st.Storage, seg: Segment, max_line_bytes: int) -> tuple[int, int]:
    """The byte range ``[s, e)`` of the whole lines the segment owns."""
    if seg.compression:
        return 0, seg.size
    start = next_line_start(store, seg.uri, seg.start, seg.size, max_line_bytes)
    end = (
        seg.size
        if seg.end >= seg.size
        else next_line_start(store, seg.uri, seg.end, seg.size, max_line_bytes)
    )
    return start, max(start, end)


def _gunzip(chunks: Iterator[bytes], uri: str) -> Iterator[bytes]:
    """Stream-decompress gzip, including concatenated members."""
    decomp = zlib.decompressobj(wbits=31)
    consumed = 0
    in_member = False
    for chunk in chunks:
        data = chunk
        while data:
            in_member = True
            try:
                out = decomp.decompress(data)
            except zlib.error as err:
                raise InputError(
                    f"{uri}: corrupt gzip data near compressed byte {consumed}: {err}",
                    uri=uri,
                    offset=consumed,
                ) from None
            if out:
                yield out
            if decomp.eof:
                rest = decomp.unused_data
                consumed += len(data) - len(rest)
                data = rest
                decomp = zlib.decompressobj(wbits=31)
                in_member = False
            else:
                consumed += len(data)
                data = b""
    if in_member:
        raise InputError(
            f"{uri}: corrupt gzip data: the stream ends before its end marker "
            f"(truncated after {consumed} compressed bytes)",
            uri=uri,
            offset=consumed,
        )


def raw_chunks(store: st.Storage, seg: Segment, start: int, end: int) -> Iterator[bytes]:
    if seg.compression == "gzip":
        return _gunzip(store.iter_range(seg.uri, 0, None), seg.uri)
    return store.iter_range(seg.uri, start, end)


BadBytes = Callable[[int, bytes, UnicodeDecodeError], None]


@dataclass
class Block:
    """Consecutive lines: ``lines[i]`` is the i-th ``\n``-separated piece of ``raw``."""

    base: int
    raw: bytes
    lines: list[str]

    def offset(self, index: int) -> int:
        """The byte offset of ``lines[index]``; computed only when an error needs it."""
        pos = 0
        for _ in range(index):
            pos = self.raw.index(b"\n", pos) + 1
        return self.base + pos


def _strip_cr(lines: list[str]) -> list[str]:
    return [line.removesuffix("\r") for line in lines]


def _blocks(data: bytes, base: int, on_bad_bytes: BadBytes) -> Iterator[Block]:
    """Decode whole lines; lines with invalid UTF-8 go to ``on_bad_bytes`` and are left out."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        lines = text.split("\n")
        if data.endswith(b"\n"):
            lines.pop()
        if "\r" in text:
            lines = _strip_cr(lines)
        if lines:
            yield Block(base, data, lines)
        return
    # Slow path, only for a block holding invalid UTF-8: cut it around the bad lines.
    run_start = 0
    good: list[str] = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        stop = len(data) if nl < 0 else nl
        piece = data[pos:stop]
        try:
            good.append(piece.decode("utf-8"))
        except UnicodeDecodeError as err:
            if good:
                yield Block(base + run_start, data[run_start:pos], _strip_cr(good))
                good = []
            on_bad_bytes(base + pos, piece, err)
            run_start = stop + 1
        pos = stop + 1
    if good:
        yield Block(base + run_start, data[run_start:], _strip_cr(good))


def iter_blocks(
    store: st.Storage,
    seg: Segment,
    on_bad_bytes: BadBytes,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Block]:
    """Yield the segment's lines in blocks, line endings (``\n`` or ``\r\n``) removed.

    Offsets are into the object (into the decompressed stream for gzip). A line longer than
    ``max_line_bytes`` (see the module docstring) raises :class:`InputError`. A UTF-8 BOM at
    byte 0 of the object is not part of its first line; one anywhere else is data.
    ``on_bad_bytes(offset, raw_line, error)`` is called for a line that is not valid UTF-8;
    it raises to fail the task, or returns to skip the line.
    """
    start, end = aligned_range(store, seg, max_line_bytes)
    if start >= end and not seg.compression:
        return
    base = start
    carry = b""
    first = start == 0 and not seg.compression
    at_bom = start == 0  # the object's first bytes, which may be a BOM, are still to come
    for chunk in raw_chunks(store, seg, start, end):
        if first:
            check_text(seg.uri, chunk)
            first = False
        data = carry + chunk if carry else chunk
        if at_bom:
            if len(data) < len(BOM) and BOM.startswith(data):
                carry = data
                continue
            at_bom = False
            if data.startswith(BOM):
                data = data[len(BOM):]
                base += len(BOM)
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
        else:
            carry = data[cut + 1 :]
            whole = data[: cut + 1]
            long_at = first_long_line(whole, max_line_bytes)
            if long_at >= 0:
                raise _too_long(seg.uri, f"the line at byte {base + long_at}", base + long_at, max_line_bytes)
            yield from _blocks(whole, base, on_bad_bytes)
            base += cut + 1
        if len(carry) > max_line_bytes:  # an unfinished line: refused before it is all in memory
            raise _too_long(seg.uri, f"the line at byte {base}", base, max_line_bytes)
    if carry:
        yield from _blocks(carry, base, on_bad_bytes)
