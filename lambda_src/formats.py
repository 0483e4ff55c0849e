"""Input formats: how the planner cuts an object into splits, and how a map task reads one.

An :class:`InputFormat` answers the planner's questions (which objects it reads, how an
object is cut into :class:`~lambda_src.reader.Segment` splits, whether a split may be cut
further at any byte) and the mapper's (the records of a split for the record path, in
blocks; its rows as Arrow tables for the vectorized path). A registry picks the format of
each input object: by name, or else by the object's name. Each Segment carries the name of
the format that planned it, and the map task reads it with that format.

:class:`TextFormat` (the default) reads line-oriented UTF-8 text: its records are ``str``
lines. :mod:`lambda_src.rowformats` adds formats whose records are rows (JSON Lines, CSV with
a header, Parquet, whose splits are row groups rather than byte ranges). Any format but
Parquet may be compressed (:data:`CODECS`: gzip, bz2, xz, zstd), known by the object's
extension (any case) or, for a name that says nothing, by its first bytes.

Text splits: a split is a byte range ``[start, end)`` of an object. The split owns every line
whose first byte lies in that range: the reader skips a partial first line (unless the byte
before ``start`` is a newline) and reads past ``end`` only to finish its last line. Adjacent
splits therefore cover each line exactly once, including files without a trailing newline and
empty files. Compressed objects are never cut: one split holds the whole object.

Line length limit: a line's length is its bytes without the terminating ``\n`` (the ``\r`` of
a ``\r\n`` ending counts). A line of up to ``max_line_bytes`` is read; a longer one is refused
with :class:`InputError`, wherever it lies: inside a split, across a split boundary (where it
would also make a split read that far past its end) or at the end of an object without a
trailing newline. Whether a file is read or refused therefore never depends on the split size.
"""

from __future__ import annotations

import bz2
import codecs
import functools
import lzma
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from lambda_src import storage as st
from lambda_src.reader import InputError, Segment

SCAN_STEP = 64 * 1024
DEFAULT_MAX_LINE_BYTES = 1024 * 1024
#: A UTF-8 byte order mark: dropped at byte 0 of an object, data anywhere else.
BOM = b"\xef\xbb\xbf"

BadBytes = Callable[[int, bytes, UnicodeDecodeError], None]


class VectorFallback(Exception):
    """The vectorized reader cannot give the rows the record path would; the record path reads
    the split instead (and reports any bad record)."""


#: ``on_bad(offset, raw, reason)``: a record that cannot be read (it raises to fail the task,
#: or returns to skip the record).
BadRecordSink = Callable[[int, "bytes | str", str], None]


class RecordBlock(Protocol):
    """Consecutive records of one split, as the record path's mapper receives them."""

    records: list[Any]
    #: What ``offset`` counts: ``"byte"`` (of the object, decompressed) or ``"row"``.
    unit: str

    @property
    def size(self) -> int:
        """The input bytes the records were read from."""

    def offset(self, index: int) -> int:
        """Where ``records[index]`` starts in its object (for error messages)."""


class InputFormat:
    """One way of reading input objects; :func:`register` an instance to make it available."""

    #: The name a Segment carries and an input names its format by.
    name: ClassVar[str]
    #: Object names ending so (lower case, after any codec's extension) are read with this
    #: format unless one is named.
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Objects whose names say nothing starting with these bytes are read with this format.
    magic: ClassVar[bytes] = b""

    def split(
        self, info: st.ObjectInfo, split_size: int, input_name: str | None, compression: str | None = None
    ) -> list[Segment]:
        """The splits of one object (stored with ``compression``, a key of :data:`CODECS`),
        each about ``split_size`` bytes when the format can cut."""
        raise NotImplementedError

    def can_cut(self, seg: Segment) -> bool:
        """Whether the planner may cut the segment at any byte (its reader then aligns each
        piece to whole records); otherwise segments are kept as :meth:`split` made them."""
        return False

    def check(self, seg: Segment) -> None:
        """Refuse (``ValueError``) a segment this format cannot have planned."""

    def read_blocks(
        self, store: st.Storage, seg: Segment, on_bad: BadRecordSink, max_line_bytes: int, job: Any
    ) -> Iterator[RecordBlock]:
        """The segment's records for the record path, in blocks, shaped as ``job`` declares
        (``input_columns``, ``input_filter``); ``on_bad`` gets the records that cannot be read."""
        raise NotImplementedError

    def read_tables(self, seg: Segment, job: Any, max_line_bytes: int) -> tuple[int, Iterator[Any]]:
        """``(input bytes, pyarrow Tables)`` of the segment for ``job.map_table``.

        Raises :class:`VectorFallback` (also while iterating) where the tables would differ
        from the record path's records; a format without a vectorized reader always does.
        """
        raise VectorFallback(f"{seg.describe()}: the {self.name} format has no vectorized reader")


REGISTRY: dict[str, InputFormat] = {}
DEFAULT = "text"


def register(fmt: InputFormat) -> InputFormat:
    REGISTRY[fmt.name] = fmt
    return fmt


def get(name: str) -> InputFormat:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown input format {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


def of(seg: Segment) -> InputFormat:
    """The format that planned ``seg``, which checks that it could have."""
    fmt = get(seg.format)
    fmt.check(seg)
    return fmt


#: Extensions of formats and codecs that are not read: refused when planning.
UNSUPPORTED = {
    ".lzma": "lzma (legacy; recompress as .xz)", ".lz4": "lz4", ".snappy": "snappy", ".orc": "ORC",
    ".avro": "Avro", ".zip": "zip", ".7z": "7-Zip", ".br": "brotli",
}


@dataclass(frozen=True)
class Codec:
    """A compression an object may be stored in: found by extension or by its magic bytes."""

    name: str
    extensions: tuple[str, ...]
    magic: bytes
    #: A new streaming decompressor (``decompress``, ``eof``, ``unused_data``: zlib's, bz2's
    #: and lzma's interface); None for a codec read through pyarrow.
    decompressor: Callable[[], Any] | None
    #: Other first bytes a stream of the codec may start with.
    other_magic: tuple[bytes, ...] = ()

    @property
    def signatures(self) -> tuple[bytes, ...]:
        return (self.magic, *self.other_magic)


CODECS = {
    codec.name: codec
    for codec in (
        Codec("gzip", (".gz", ".gzip"), b"\x1f\x8b", lambda: zlib.decompressobj(wbits=31)),
        Codec("bz2", (".bz2",), b"BZh", bz2.BZ2Decompressor),
        Codec("xz", (".xz",), b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
        # A zstd stream may start with a skippable frame (pzstd writes one before each frame).
        Codec("zstd", (".zst", ".zstd"), b"\x28\xb5\x2f\xfd", None,
              tuple(bytes([0x50 + i, 0x2A, 0x4D, 0x18]) for i in range(16))),
    )
}
#: How many leading bytes ``compression_of`` and ``for_object`` look at.
HEAD_BYTES = 8


def _strip_codec(lower: str) -> tuple[str, Codec | None]:
    for codec in CODECS.values():
        for ext in codec.extensions:
            if lower.endswith(ext):
                return lower[: -len(ext)], codec
    return lower, None


def codec_by_name(uri: str) -> str | None:
    """The codec an object's name ends in (any case): ``.gz``, ``.bz2``, ``.xz``, ``.zst``."""
    codec = _strip_codec(st.basename(uri).lower())[1]
    return codec.name if codec else None


def compression_of(uri: str, head: bytes = b"") -> str | None:
    """The object's codec: by its name, else by its first bytes ``head`` (if given)."""
    by_name = codec_by_name(uri)
    if by_name:
        return by_name
    return next((c.name for c in CODECS.values() if head.startswith(c.signatures)), None)


def for_object(uri: str, name: str | None = None, head: bytes = b"") -> InputFormat:
    """The format of an input object: the one named; else the first registered format that
    claims its extension (after any codec's: ``x.jsonl.gz`` is JSON Lines); else one whose
    signature its first bytes ``head`` carry; else text. A format or codec not read is refused."""
    if name:
        return get(name)
    lower, _ = _strip_codec(st.basename(uri).lower())
    for fmt in REGISTRY.values():
        if fmt.extensions and lower.endswith(fmt.extensions):
            return fmt
    for ext, what in UNSUPPORTED.items():
        if lower.endswith(ext):
            raise unsupported_format(uri, what)
    for fmt in REGISTRY.values():
        if fmt.magic and head.startswith(fmt.magic):
            return fmt
    return REGISTRY[DEFAULT]


def wants_head(uri: str) -> bool:
    """Whether the planner must read the object's first bytes to know its format and codec:
    its name claims neither a codec nor a format."""
    lower, codec = _strip_codec(st.basename(uri).lower())
    return codec is None and not any(fmt.extensions and lower.endswith(fmt.extensions) for fmt in REGISTRY.values())


#: Leading bytes of formats that are not read (refused where text was expected).
MAGIC = (
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"PAR1", "Parquet"),
    (b"ORC", "ORC"),
    (b"Obj\x01", "Avro"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
)


def unsupported_format(uri: str, what: str, offset: int | None = None) -> InputError:
    return InputError(
        f"{uri}: unsupported format or compression ({what}); the input formats are "
        f"{', '.join(sorted(REGISTRY))}, plain or compressed with {', '.join(CODECS)}",
        uri=uri, offset=offset,
    )


def check_text(uri: str, head: bytes) -> None:
    """Refuse text whose first bytes are a binary format's signature."""
    for magic, what in MAGIC:
        if head.startswith(magic):
            raise unsupported_format(uri, what, 0)
    for codec in CODECS.values():  # planned as plain text, but compressed
        if head.startswith(codec.signatures):
            raise unsupported_format(uri, f"{codec.name} data read as plain text", 0)


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


def _first_long_line(data: bytes, max_line_bytes: int, start: int = 0, end: int | None = None) -> int:
    """The offset of the first line of ``data[start:end]`` (whole lines, each ending in a
    newline) longer than ``max_line_bytes``, or -1.

    Each step looks for a newline in the window of ``max_line_bytes + 1`` bytes after a line
    start: if there is none, the line starting there is too long; otherwise every line
    starting before the last newline in the window ends inside it. Nothing is copied.
    """
    end = len(data) if end is None else end
    pos = start
    while end - pos > max_line_bytes + 1:
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


def decompress(chunks: Iterator[bytes], uri: str, codec_name: str) -> Iterator[bytes]:
    """Stream-decompress an object's bytes, including concatenated members (frames, streams).

    A stream that does not start with the codec's signature, corrupt data and a stream cut
    before its end marker are :class:`InputError` naming the object.
    """
    codec = CODECS[codec_name]
    chunks = _checked_magic(chunks, uri, codec)
    if codec.decompressor is None:
        yield from _arrow_decompress(chunks, uri, codec)
        return
    decomp = codec.decompressor()
    consumed = 0
    in_member = False
    for chunk in chunks:
        data = chunk
        while data:
            in_member = True
            try:
                out = decomp.decompress(data)
            except (zlib.error, OSError, lzma.LZMAError, EOFError) as err:
                raise InputError(
                    f"{uri}: corrupt {codec.name} data near compressed byte {consumed}: {err}",
                    uri=uri,
                    offset=consumed,
                ) from None
            if out:
                yield out
            if decomp.eof:
                rest = decomp.unused_data
                consumed += len(data) - len(rest)
                data = rest
                decomp = codec.decompressor()
                in_member = False
            else:
                consumed += len(data)
                data = b""
    if in_member:
        raise _truncated(uri, codec, f"after {consumed} compressed bytes")


def _truncated(uri: str, codec: Codec, where: str) -> InputError:
    return InputError(
        f"{uri}: corrupt {codec.name} data: the stream ends before its end marker (truncated {where})",
        uri=uri,
    )


def _checked_magic(chunks: Iterator[bytes], uri: str, codec: Codec) -> Iterator[bytes]:
    """``chunks``, refusing a non-empty stream that does not start with the codec's signature."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= max(map(len, codec.signatures)):
            break
    if head and not head.startswith(codec.signatures):
        raise InputError(
            f"{uri}: not {codec.name} data (it starts with {head[:HEAD_BYTES]!r}, not the {codec.name} "
            f"signature {codec.magic!r}): rename it, or check how it was written",
            uri=uri, offset=0,
        )
    if head:
        yield head
    yield from chunks


def _arrow_decompress(chunks: Iterator[bytes], uri: str, codec: Codec) -> Iterator[bytes]:
    try:
        import pyarrow as pa
    except ImportError:
        raise InputError(f"{uri}: reading {codec.name} needs pyarrow, which is not installed", uri=uri) from None
    stream = pa.CompressedInputStream(pa.PythonFile(ChunkReader(chunks), "r"), codec.name)
    while True:
        try:
            out = stream.read(1 << 20)
        except (OSError, pa.ArrowException) as err:
            if "runcated" in str(err):
                raise _truncated(uri, codec, "in its last frame") from None
            raise InputError(f"{uri}: corrupt {codec.name} data: {err}", uri=uri) from None
        if not out:
            return
        yield out


class ChunkReader:
    """A minimal read-only file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = b""
        self.closed = False

    def read(self, size: int | None = -1) -> bytes:
        while size is None or size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        if size is None or size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def raw_chunks(store: st.Storage, seg: Segment, start: int, end: int) -> Iterator[bytes]:
    if seg.compression:
        return decompress(store.iter_range(seg.uri, 0, None), seg.uri, seg.compression)
    return store.iter_range(seg.uri, start, end)


@dataclass
class Block:
    """Consecutive lines: ``records[i]`` is the i-th ``\n``-separated piece of ``raw``."""

    base: int
    raw: bytes
    records: list[str]
    unit: ClassVar[str] = "byte"

    @property
    def size(self) -> int:
        return len(self.raw)

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
    first = start == 0
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
            long_at = _first_long_line(whole, max_line_bytes)
            if long_at >= 0:
                raise _too_long(seg.uri, f"the line at byte {base + long_at}", base + long_at, max_line_bytes)
            yield from _blocks(whole, base, on_bad_bytes)
            base += cut + 1
        if len(carry) > max_line_bytes:  # an unfinished line: refused before it is all in memory
            raise _too_long(seg.uri, f"the line at byte {base}", base, max_line_bytes)
    if carry:
        yield from _blocks(carry, base, on_bad_bytes)


class TextFormat(InputFormat):
    """Line-oriented UTF-8 text, plain or gzip; the record path's records are its lines."""

    name = "text"

    def split(
        self, info: st.ObjectInfo, split_size: int, input_name: str | None, compression: str | None = None
    ) -> list[Segment]:
        """Byte ranges of at most ``split_size``; compressed objects are never cut."""
        if compression or info.size <= split_size:
            return [Segment(info.uri, 0, info.size, info.size, compression, input_name, info.version, self.name)]
        count = -(-info.size // split_size)
        step = -(-info.size // count)  # even ranges: no tiny tail split
        return [
            Segment(info.uri, start, min(start + step, info.size), info.size, None, input_name, info.version,
                    self.name)
            for start in range(0, info.size, step)
        ]

    def can_cut(self, seg: Segment) -> bool:
        return not seg.compression

    def check(self, seg: Segment) -> None:
        if seg.compression is not None and seg.compression not in CODECS:
            raise ValueError(f"unsupported compression {seg.compression!r} for {seg.uri}")
        if seg.row_groups is not None:  # else read as this text, whatever it was planned as
            raise ValueError(f"a {self.name} split has no row groups, got row_groups {list(seg.row_groups)} "
                             f"for {seg.uri}")

    def read_blocks(
        self, store: st.Storage, seg: Segment, on_bad: BadRecordSink, max_line_bytes: int, job: Any
    ) -> Iterator[Block]:
        if job is not None and (job.input_filter or job.input_columns):
            raise InputError(f"{seg.uri}: the job declares input columns or an input_filter, but the object is "
                             f"read as {self.name}, which has no columns: name its format (--input-format)",
                             uri=seg.uri)

        def on_bad_bytes(offset: int, raw: bytes, err: UnicodeDecodeError) -> None:
            on_bad(offset, raw, f"invalid UTF-8 ({err.reason} at byte {offset + err.start})")

        return iter_blocks(store, seg, on_bad_bytes, max_line_bytes)

    def read_tables(self, seg: Segment, job: Any, max_line_bytes: int) -> tuple[int, Iterator[Any]]:
        """The rows of the job's ``table_columns``, split at ``table_delimiter``, converted to
        ``table_types``; anything the record mapper would see otherwise falls back."""
        if not job.table_columns:
            raise VectorFallback(f"{seg.describe()}: the job declares no table_columns to cut text lines into")
        start, end = aligned_range(st.for_uri(seg.uri), seg, max_line_bytes)
        if end <= start:
            return 0, iter(())
        return end - start, _csv_tables(seg, start, end, job, max_line_bytes)


register(TextFormat())


def _csv_tables(seg: Segment, start: int, end: int, job: Any, max_line_bytes: int) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    columns = list(job.table_columns or ())
    include = list(job.table_include or columns)
    read_options = pacsv.ReadOptions(
        column_names=columns, block_size=16 * 1024 * 1024, use_threads=False
    )
    parse_options = pacsv.ParseOptions(
        delimiter=job.table_delimiter,
        quote_char=False,
        double_quote=False,
        escape_char=False,
        newlines_in_values=False,
        # Arrow reads an empty line as a row of empty fields, which a number column refuses
        # (and as_table below catches): the task falls back, and the record path decides.
        ignore_empty_lines=False,
    )
    types = {name: pa.type_for_alias(job.table_types.get(name, "string")) for name in include}
    # Arrow reads "0x10" as the integer 16; the record mapper's int() refuses it. Integer
    # columns are read as text and converted here, where only digits (and a "-") are accepted.
    integers = [name for name, t in types.items() if pa.types.is_integer(t)]
    floats = [name for name, t in types.items() if pa.types.is_floating(t)]
    texts = [name for name, t in types.items() if t in (pa.string(), pa.large_string(), pa.binary())]
    only_text = len(texts) == len(types)
    convert_options = pacsv.ConvertOptions(
        include_columns=include,
        column_types={name: pa.string() if name in integers else t for name, t in types.items()},
        # No value is a null: the record mapper refuses "", "NULL", "N/A", ... in a number
        # column (the task falls back to it) and keeps them as text in a string column.
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        check_utf8=False,  # RecordLines checks every byte, not only the converted columns
    )
    where = seg.describe()

    def as_table(batch: Any) -> Any:
        table = pa.Table.from_batches([batch])
        for name in integers:
            text = table.column(name)
            if not pc.all(pc.ascii_is_decimal(text)).as_py():
                unsigned = pc.if_else(pc.starts_with(text, "-"), pc.utf8_slice_codeunits(text, 1), text)
                if not pc.all(pc.ascii_is_decimal(unsigned)).as_py():
                    raise VectorFallback(f"{where}: column {name} holds a value other than an integer")
            table = table.set_column(table.schema.get_field_index(name), name, pc.cast(text, types[name]))
        for name in floats:
            # Arrow also reads "nan(...)", which float() refuses: any NaN goes to the record path.
            if pc.any(pc.is_nan(table.column(name))).as_py():
                raise VectorFallback(f"{where}: column {name} holds a NaN")
        if only_text:  # nothing refuses an empty line's row: find it (or a line of empty fields)
            blank = functools.reduce(pc.and_, [pc.equal(table.column(name), "") for name in texts])
            if pc.any(blank).as_py():
                raise VectorFallback(f"{where}: an empty line")
        return table

    # A local object is checked first, then read by Arrow (a mapped file reads faster than through
    # Python): both from one mapping, so its pages count once in the task's memory, not twice.
    mapped = None if st.is_s3(seg.uri) or seg.compression else pa.memory_map(st.local_path(seg.uri))
    try:
        raw = arrow_stream(seg, start, end) if mapped is None else mapped.get_stream(start, end - start)
        lines = RecordLines(raw, where, start == 0, max_line_bytes)
        if mapped is None:  # checked as Arrow reads: one download
            source = pa.PythonFile(lines, "r")
        else:
            lines.finish()
            source = mapped.get_stream(start, end - start)
        with pacsv.open_csv(
            source,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        ) as batches:
            for batch in batches:
                yield as_table(batch)
            lines.finish()
    except pa.ArrowException as err:
        raise VectorFallback(f"{where}: {err}") from None
    except StopIteration:  # an empty stream
        lines.finish()
    finally:
        if mapped is not None:
            mapped.close()


def arrow_stream(seg: Segment, start: int, end: int):
    """The bytes ``[start, end)`` of the segment's object (decompressed), as a readable file."""
    import pyarrow as pa

    store = st.for_uri(seg.uri)
    if seg.compression:
        return ChunkReader(raw_chunks(store, seg, start, end))
    if st.is_s3(seg.uri):
        return ChunkReader(store.iter_range(seg.uri, start, end, chunk_size=4 * 1024 * 1024))
    return pa.memory_map(st.local_path(seg.uri)).get_stream(start, end - start)


class RecordLines:
    r"""The bytes Arrow parses, stopped (``VectorFallback``) where Arrow would not see the
    lines the record path sees.

    Arrow's CSV reader ends a row at a lone ``\r`` (the record path splits lines at ``\n``
    only and drops one ``\r`` before it), skips a UTF-8 BOM at the start of any stream (the
    record path only at byte 0 of an object: a later split that starts with one keeps it)
    and checks UTF-8 only in the columns it converts (the record path decodes whole lines),
    and reads lines of any length (the record path refuses one longer than max_line_bytes).
    """

    def __init__(self, raw: Any, where: str, at_object_start: bool, max_line_bytes: int) -> None:
        self._raw = raw
        self._where = where
        self._max_line = max_line_bytes
        self._line = 0  # bytes of the line not yet ended by a newline
        self._head = b""  # the first bytes, while they may still be a BOM
        self._cr = False  # the last byte read was \r
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._utf8_pending = False  # the decoder holds the start of a multi-byte character
        self._at_object_start = at_object_start
        self.closed = False

    def finish(self) -> None:
        """Check the end of the stream, which the CSV reader may not have asked for."""
        while self.read(1 << 20):
            pass

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size if size >= 0 else None)
        if len(self._head) < len(BOM):
            self._head += chunk[: len(BOM) - len(self._head)]
            if self._head == BOM and not self._at_object_start:
                raise VectorFallback(f"{self._where}: the split starts with a UTF-8 BOM")
        if self._lone_cr(chunk):
            raise VectorFallback(f"{self._where}: a \\r that does not end a line")
        self._cr = chunk.endswith(b"\r")
        self._check_line_lengths(chunk)
        if self._utf8_pending or not chunk.isascii():
            try:
                self._utf8.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                raise VectorFallback(f"{self._where}: invalid UTF-8 ({err.reason})") from None
            self._utf8_pending = bool(self._utf8.getstate()[0])
        return chunk

    def _check_line_lengths(self, chunk: bytes) -> None:
        first = chunk.find(b"\n")
        if first < 0:
            self._line += len(chunk)
            too_long = self._line > self._max_line
        else:
            last = chunk.rfind(b"\n")
            too_long = (self._line + first > self._max_line
                        or _first_long_line(chunk, self._max_line, first + 1, last + 1) >= 0)
            self._line = len(chunk) - last - 1
        if too_long:  # the record path names the line and its offset
            raise VectorFallback(f"{self._where}: a line longer than {self._max_line} bytes")

    def _lone_cr(self, chunk: bytes) -> bool:
        """A \\r not followed by \\n in the stream so far (the end of the stream included)."""
        if self._cr and not chunk.startswith(b"\n"):
            return True
        if b"\r" not in chunk:
            return False
        return chunk.count(b"\r") != chunk.count(b"\r\n") + chunk.endswith(b"\r")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        self.closed = True


from lambda_src import rowformats  # noqa: E402,F401 - registers jsonl, csv and parquet
