"""The Arrow shuffle, for jobs whose map, combine and reduce steps work on tables.

Runs are Arrow IPC streams of a ``key``/``value`` table. Rows go to the same partition as
the record-mode shuffle would send them (the partition of the key's JSON encoding), so a
task that falls back to record mode still lands every key in the right partition, and a
reducer given both kinds of run converts the Arrow ones to sorted lines. Imported only
when pyarrow is importable.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from lambda_src import shuffle
from lambda_src import storage as st
from lambda_src.function_env import BLOCK_ROWS_ENV

CODEC = shuffle.CODEC


def check_table(table: object, where: str) -> pa.Table:
    if not isinstance(table, pa.Table) or table.column_names[:2] != ["key", "value"]:
        raise TypeError(f"{where} must return a pyarrow.Table with columns 'key' and 'value'")
    return table


def partition_table(table: pa.Table, partitions: int) -> list[pa.Table | None]:
    """Split a table by the codec's partitioner (the record path's); None for an empty partition."""
    if table.num_rows == 0:
        return [None] * partitions
    if partitions == 1:
        return [table]
    pids = partition_ids(table.column("key"), partitions)
    if partitions <= 8:
        return [_nonempty(table.filter(pc.equal(pids, p))) for p in range(partitions)]
    order = pc.sort_indices(pids)
    ordered = table.take(order)
    counts = dict.fromkeys(range(partitions), 0)
    for item in pc.value_counts(pids).to_pylist():
        counts[item["values"]] = item["counts"]
    out: list[pa.Table | None] = []
    offset = 0
    for p in range(partitions):
        n = counts[p]
        out.append(ordered.slice(offset, n) if n else None)
        offset += n
    return out


#: Schema metadata of an Arrow run whose rows lie in key blocks (``partition_blocks``): the
#: number of rows of each block, in order, as a JSON list.
BLOCKS_META = b"lambdamr.blocks"
#: A reduce task's blocks are aimed at this many rows or more: a hash aggregation over the
#: keys of one block keeps its table in a core's cache (2a's final group-by of 505K rows took
#: 0.45x the time in 8 blocks as in one, on this project's VM).
BLOCK_ROWS = 32768
#: The most blocks a run has.
MAX_BLOCKS = 64


def block_count(rows: int) -> int:
    """The blocks for a partition that reaches its reduce task with about ``rows`` rows: a
    power of two, each block at least ``block_rows()`` rows (1: no blocks)."""
    target = block_rows()
    blocks = 1
    while blocks < MAX_BLOCKS and rows >= 2 * blocks * target:
        blocks *= 2
    return blocks


def block_rows() -> int:
    """The rows a key block is aimed at: the function's ``LAMBDAMR_BLOCK_ROWS``, else ``BLOCK_ROWS``."""
    raw = os.environ.get(BLOCK_ROWS_ENV)
    if not raw:
        return BLOCK_ROWS
    try:
        rows = int(raw)
    except ValueError:
        rows = 0
    if rows < 1:
        raise ValueError(f"{BLOCK_ROWS_ENV}={raw[:40]!r} in the function's environment: expected a positive "
                         f"number of rows")
    return rows


def block_ids(keys: pa.Array | pa.ChunkedArray, partitions: int, blocks: int) -> pa.Array:
    """The block of each key among ``blocks`` (a power of two): the CRC-32 of its encoding (the
    partitioner's) divided by ``partitions``, modulo ``blocks``. Bits the partition does not
    use, so a partition's keys spread over all its blocks."""
    crcs = _crcs(keys)
    return pc.cast(pc.remainder(pc.divide(crcs, partitions), blocks), pa.int32()).combine_chunks()


def partition_blocks(table: pa.Table, partitions: int, blocks: int) -> list[tuple[pa.Table, list[int]] | None]:
    """Split a table by the codec's partitioner, each partition's rows in ``blocks`` key blocks
    (``block_ids``): per partition, its rows, block after block, and the rows of each block
    (None for an empty partition). A reduce task aggregates block by block (``key_blocks``)."""
    if blocks == 1:
        return [None if part is None else (part, [part.num_rows]) for part in partition_table(table, partitions)]
    if table.num_rows == 0:
        return [None] * partitions
    buckets = pc.remainder(_crcs(table.column("key")), partitions * blocks)
    # bucket = partition + partitions * block: ordered by partition, then block
    order_ids = pc.add(pc.multiply(pc.remainder(buckets, partitions), blocks), pc.divide(buckets, partitions))
    order_ids = pc.cast(order_ids, pa.int32()).combine_chunks()
    counts = _bincount(order_ids, partitions * blocks)
    ordered = table.take(pc.sort_indices(order_ids))
    out: list[tuple[pa.Table, list[int]] | None] = []
    start = 0
    for p in range(partitions):
        sizes = counts[p * blocks:(p + 1) * blocks]
        rows = sum(sizes)
        out.append((ordered.slice(start, rows), sizes) if rows else None)
        start += rows
    return out


def _bincount(ids: pa.Array, n: int) -> list[int]:
    """How many of ``ids`` (each from 0 to n - 1) equal each value."""
    counts = [0] * n
    for item in pc.value_counts(ids).to_pylist():
        counts[item["values"]] = item["counts"]
    return counts


#: A reduce task splits by ``block_ids`` (a CRC-32 a key) runs holding at most this share of
#: its rows, to use the blocks of the others (``key_blocks``).
SPLIT_SHARE = 0.125


def key_blocks(runs: list[tuple[pa.Table, list[int] | None]], partitions: int) -> list[pa.Table | None]:
    """The rows of one partition's runs (``read_blocked_run``), block by block: each table
    holds every row of its keys (None for an empty block). The blocks: the most that leaves
    at most ``SPLIT_SHARE`` of the rows in runs with fewer (a run with more merges its
    blocks, one with fewer, such as a small run or one written without blocks, is split by
    ``block_ids``). Without blocks (or rows), one table of all the rows."""
    filled = [(table, sizes) for table, sizes in runs if table.num_rows]
    total = sum(table.num_rows for table, _ in filled)
    blocks = 1
    for candidate in sorted({len(sizes) for _, sizes in filled if sizes}, reverse=True):
        coarser = sum(table.num_rows for table, sizes in filled if len(sizes or ()) < candidate)
        if coarser <= SPLIT_SHARE * total:
            blocks = candidate
            break
    if blocks == 1:
        return [concat([table for table, _ in runs])]
    parts: list[list[pa.Table]] = [[] for _ in range(blocks)]
    for table, sizes in filled:
        if not sizes or len(sizes) < blocks:
            ids = block_ids(table.column("key"), partitions, blocks)
            table, sizes = table.take(pc.sort_indices(ids)), _bincount(ids, blocks)
        start = 0
        for block, rows in enumerate(sizes):
            if rows:
                parts[block % blocks].append(table.slice(start, rows))
            start += rows
    return [concat(tables) if tables else None for tables in parts]


def partition_ids(keys: pa.Array | pa.ChunkedArray, partitions: int) -> pa.Array:
    """The partition of each key (``ShuffleCodec.partition_of`` of its encoding), as int32.

    Computed ``_CRC_ROWS`` keys at a time (``_crc32_of_keys``): that bounds the copies made,
    whatever the column's size (a padded copy of millions of keys outgrew an Arrow string's
    32-bit offsets).
    """
    if partitions == 1 or len(keys) == 0:
        return pa.repeat(pa.scalar(0, pa.int32()), len(keys))
    return pc.cast(pc.remainder(_crcs(keys), partitions), pa.int32()).combine_chunks()


def _crcs(keys: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """The CRC-32 of each key's encoding (``_crc32_of_keys``), ``_CRC_ROWS`` keys at a time."""
    return pa.chunked_array([_crc32_of_keys(keys.slice(start, _CRC_ROWS))
                             for start in range(0, len(keys), _CRC_ROWS)], pa.uint32())


#: Keys whose CRCs are computed at once (``partition_ids``).
_CRC_ROWS = 1 << 20


def crcs_in_arrow(keys: pa.Array | pa.ChunkedArray) -> bool:
    """Whether the keys' CRC-32s are computed in Arrow (``_crc32_quoted``: printable ASCII
    strings of at most ``_CRC_MAX_BYTES``, no null), not per key in Python."""
    return _crc_way(keys)[0] == "arrow"


def _crc_way(keys: pa.Array | pa.ChunkedArray) -> tuple[str | None, pa.Array | None]:
    """How ``_crc32_of_keys`` computes the keys' CRC-32s: ("arrow", their lengths) for printable
    ASCII strings of at most ``_CRC_MAX_BYTES`` (``_crc32_quoted``); ("quoted", None) for other
    strings JSON writes as themselves in quotes (per key, unencoded); (None, None) otherwise
    (per key, encoded)."""
    if not (pa.types.is_string(keys.type) and keys.null_count == 0):
        return None, None
    kind = _json_plain(keys)
    if kind is None:
        return None, None
    if kind == "ascii" and _QUOTED_CRC_READY:
        lengths = pc.utf8_length(keys)
        if (pc.max(lengths).as_py() or 0) <= _CRC_MAX_BYTES:
            return "arrow", lengths
    return "quoted", None


def _crc32_of_keys(keys: pa.Array | pa.ChunkedArray) -> pa.UInt32Array:
    """The CRC-32 of each key's encoding. Strings JSON writes as themselves in quotes get the
    CRC-32 of those bytes: in Arrow where ``crcs_in_arrow``, else per key in Python; any
    other key is encoded first."""
    crc = zlib.crc32
    way, lengths = _crc_way(keys)
    if way == "arrow":
        if isinstance(keys, pa.ChunkedArray):
            keys, lengths = keys.combine_chunks(), lengths.combine_chunks()
        return _crc32_quoted(keys, lengths)
    if way == "quoted":  # JSON writes the strings as they are, in quotes
        quoted = pc.cast(pc.binary_join_element_wise('"', keys, '"', ""), pa.binary())
        return pa.array(map(crc, quoted.to_pylist()), pa.uint32(), size=len(keys))
    encode_key = CODEC.encode_key
    return pa.array((crc(encode_key(k)) for k in keys.to_pylist()), pa.uint32(), size=len(keys))


#: Keys up to this many bytes get their CRC computed in Arrow (``_crc32_quoted``).
_CRC_MAX_BYTES = 64


@functools.cache
def _byte_crc(distance: int) -> pa.UInt32Array:
    """The contribution of each byte value to a CRC-32 at ``distance`` bytes from the message's
    end: the linear part of the CRC of that byte followed by ``distance`` zero bytes."""
    zeros = bytes(distance)
    base = zlib.crc32(bytes(1) + zeros)
    return pa.array([zlib.crc32(bytes([b]) + zeros) ^ base for b in range(256)], pa.uint32())


@functools.cache
def _quotes_crc() -> pa.UInt32Array:
    """The CRC-32 of ``"`` + ``n`` zero bytes + ``"``, by ``n``: a quoted key's CRC with its bytes' part left out."""
    return pa.array([zlib.crc32(b'"' + bytes(n) + b'"') for n in range(_CRC_MAX_BYTES + 1)], pa.uint32())


#: The Arrow CRC reads keys as little-endian 64-bit words.
_QUOTED_CRC_READY = sys.byteorder == "little"


def _crc32_quoted(keys: pa.StringArray, lengths: pa.Int32Array) -> pa.UInt32Array:
    """``zlib.crc32(b'"' + key + b'"')`` of every key, in Arrow (keys: printable ASCII, none
    longer than ``_CRC_MAX_BYTES``).

    CRC-32 is affine over GF(2): the CRC of a message of length n is a constant of n xor the
    xor of each byte's own contribution, which depends only on the byte and its distance from
    the end. Keys are left-padded with NUL bytes, which contribute nothing, to whole 8-byte
    words and read as unsigned 64-bit integers: a byte is a shift and a mask away, and its
    contribution a lookup in a 256-entry table. About 4 times faster than zlib called per key.
    ``lengths``: the keys' lengths (``pc.utf8_length``).
    """
    words = max(1, -(-(pc.max(lengths).as_py() or 0) // 8))
    width = 8 * words
    padded = pc.utf8_lpad(keys, width=width, padding="\x00")  # ASCII: a character is a byte
    offsets, data = padded.buffers()[1], padded.buffers()[2]
    first = int.from_bytes(offsets[padded.offset * 4: padded.offset * 4 + 4], "little")
    packed = data.slice(first, len(padded) * width)
    if packed.address % 8:  # a 64-bit view wants aligned words
        packed = pa.py_buffer(packed.to_pybytes())
    flat = pa.Array.from_buffers(pa.uint64(), len(padded) * words, [None, packed])
    rows = pa.FixedSizeListArray.from_arrays(flat, words) if words > 1 else None
    crc = pc.take(_quotes_crc(), lengths)
    for w in range(words):
        word = flat if rows is None else pc.list_element(rows, w)
        for b in range(8):
            byte = pc.bit_wise_and(pc.shift_right(word, 8 * b), 0xFF)
            # the byte at position 8w+b of the padded key; the closing quote follows the key
            crc = pc.bit_wise_xor(crc, pc.take(_byte_crc(width - 8 * w - b), byte))
    return crc


def _nonempty(table: pa.Table) -> pa.Table | None:
    return table if table.num_rows else None


def to_buffer(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def write_run(uri: str, table: pa.Table, blocks: list[int] | None = None) -> tuple[int, int]:
    """Write a run; ``blocks``: the rows of each of its key blocks, in order (``partition_blocks``).
    Only ``blocks`` says so: a ``lambdamr.blocks`` the table carries in from elsewhere is dropped."""
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != BLOCKS_META}
    if blocks is not None and len(blocks) > 1:
        if sum(blocks) != table.num_rows:
            raise ValueError(f"key blocks of {sum(blocks)} rows in all for a run of {table.num_rows}")
        metadata[BLOCKS_META] = json.dumps(blocks).encode()
    if metadata != (table.schema.metadata or {}):
        table = table.replace_schema_metadata(metadata or None)
    # The Arrow buffer itself, not a bytes copy of it: every run once less through fresh memory.
    data = to_buffer(table)
    st.for_uri(uri).write_buffer(uri, data)
    return table.num_rows, data.size


def read_run(uri: str) -> pa.Table:
    return read_blocked_run(uri)[0]


def read_blocked_run(uri: str, partitions: int | None = None) -> tuple[pa.Table, list[int] | None]:
    """A run's table (without the blocks in its metadata), and the rows of each of its key
    blocks (None when it has none). ``partitions``: the job's, to check the blocks against
    their keys (``_check_block_edges``) before a reduce task trusts them."""
    # A local run is mapped, and the table's columns point into it: no copy.
    data = st.for_uri(uri).read_buffer(uri)
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        table.validate()  # the IPC reader does not check that offsets stay within their buffers
    except pa.ArrowInvalid as err:
        raise ValueError(f"{uri} is not a valid Arrow run: {err}") from None
    metadata = dict(table.schema.metadata or {})
    if BLOCKS_META not in metadata:
        return table, None
    raw = metadata.pop(BLOCKS_META)
    table = table.replace_schema_metadata(metadata or None)
    try:
        blocks = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser descends
        blocks = None
    if not (isinstance(blocks, list) and 1 < len(blocks) <= MAX_BLOCKS and len(blocks) & (len(blocks) - 1) == 0
            and all(type(n) is int and n >= 0 for n in blocks) and sum(blocks) == table.num_rows):
        raise ValueError(f"{uri} is not a valid Arrow run: its key blocks ({raw[:100]!r}) are not a list of "
                         f"2 to {MAX_BLOCKS} (a power of two) row counts adding up to its {table.num_rows} rows")
    if partitions is not None:
        _check_block_edges(uri, table, blocks, partitions)
    return table, blocks


def _check_block_edges(uri: str, table: pa.Table, blocks: list[int], partitions: int) -> None:
    """Refuse a run whose blocks do not hold their keys: the first and last rows of each
    block must be of that block (``block_ids``). The rows lie block after block, so sizes
    that add up but move a boundary (which would split a key's rows between two blocks, two
    aggregations) leave a row of another block at one end of some block; 2 keys a block."""
    edges: list[int] = []
    expected: list[int] = []
    start = 0
    for block, rows in enumerate(blocks):
        if rows:
            edges += [start, start + rows - 1]
            expected += [block, block]
        start += rows
    if not edges:
        return
    got = block_ids(table.column("key").take(pa.array(edges, pa.int64())), partitions, len(blocks)).to_pylist()
    for row, want, have in zip(edges, expected, got, strict=True):
        if want != have:
            raise ValueError(f"{uri} is not a valid Arrow run: its key blocks ({json.dumps(blocks)[:100]}) do not "
                             f"hold their keys: row {row}, in block {want}, has a key of block {have} "
                             f"(of {len(blocks)}, {partitions} partitions)")


def concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def as_lines(table: pa.Table) -> Iterator[bytes]:
    """The record-mode encoding of an Arrow run: sorted ``key\\tvalue`` lines."""
    encode_key, encode_value, line = CODEC.encode_key, CODEC.encode_value, CODEC.line
    lines = [
        line(encode_key(k), encode_value(v))
        for k, v in zip(table.column("key").to_pylist(), table.column("value").to_pylist(), strict=True)
    ]
    lines.sort()
    return iter(lines)


#: Arrow's text of a float that is also Python's repr (less a ".0"): fixed notation for a decimal
#: exponent from -4 to 15, where Python does not use an exponent, and nan, inf, -inf.
_SAME_AS_REPR = r"^(-?([1-9][0-9]{0,15}(\.[0-9]+)?|0(\.0{0,3}[1-9][0-9]*)?)|nan|inf|-inf)$"


def _absent(col: pa.Array | pa.ChunkedArray, chars: str) -> bool:
    """Whether no string of ``col`` holds any of ``chars`` (ASCII): a byte search of the
    strings' data where it lies (``memchr``), much cheaper than Arrow's search string by
    string (a byte that belongs to a null slot can only make this answer False, which sends
    the caller the exact way)."""
    spans = _string_spans(col)
    if spans is None:
        return not any(pc.any(pc.match_substring(col, c)).as_py() for c in chars)
    memchr = _memchr()
    if memchr is None:  # no C library to call: search a copy
        data = b"".join(buf[first:last].to_pybytes() for buf, first, last in spans)
        return not any(c.encode() in data for c in chars)
    return not any(memchr(buf.address + first, ord(c), last - first)
                   for buf, first, last in spans for c in chars)


def _string_spans(col: pa.Array | pa.ChunkedArray) -> list[tuple[pa.Buffer, int, int]] | None:
    """Where the bytes of every string of a string or large_string column lie: (data buffer,
    first byte, end) of each non-empty chunk, within its buffer (None for other layouts,
    such as string views)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    width = 4 if pa.types.is_string(col.type) else 8 if pa.types.is_large_string(col.type) else 0
    if not width:
        return None
    spans = []
    for chunk in chunks:
        if not len(chunk):
            continue
        offsets, data = chunk.buffers()[1], chunk.buffers()[2]
        first, last = (int.from_bytes(offsets[(chunk.offset + i) * width: (chunk.offset + i + 1) * width],
                                      "little", signed=True) for i in (0, len(chunk)))
        size = 0 if data is None else data.size
        # Checked, not assumed: Arrow's IPC reader does not validate the arrays it reads
        # (read_run does), and memchr would read wherever the offsets point.
        if not 0 <= first <= last <= size:
            raise ValueError(f"not a valid {col.type} array: its strings span bytes {first} to {last} "
                             f"of a data buffer of {size}")
        if last > first:
            spans.append((data, first, last))
    return spans


@functools.cache
def _memchr() -> Callable[[int, int, int], int | None] | None:
    """The C library's ``memchr`` (the address of the first byte equal to a value in a range,
    or None), to search Arrow's buffers where they lie: a copy of a large column into a Python
    bytes object costs more (fresh pages from the C allocator, each a page fault) than the
    search. None where there is no C library to load."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).memchr
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    return fn


def _printable_ascii(col: pa.Array | pa.ChunkedArray) -> bool:
    """Whether every string of ``col`` is printable ASCII: no control character, no DEL,
    nothing beyond ASCII (a cheap test; False only says "look closer")."""
    return pc.all(pc.ascii_is_printable(col)).as_py() is not False


def _has_control(col: pa.Array | pa.ChunkedArray) -> bool:
    """Whether any string of ``col`` holds a control character or DEL (a regular expression)."""
    return bool(pc.any(pc.match_substring_regex(col, r"[\x00-\x1f\x7f]")).as_py())


def _plain_ascii(col: pa.ChunkedArray, specials: str) -> bool:
    """Whether every string of ``col`` is printable ASCII without any of ``specials``."""
    return _printable_ascii(col) and _absent(col, specials)


def _json_plain(keys: pa.Array | pa.ChunkedArray) -> str | None:
    """Whether JSON writes every string of ``keys`` as itself in quotes (no quote, backslash,
    control character or DEL): "ascii" when they are all printable ASCII, "text" when some go
    beyond ASCII, None when not (printable ASCII is checked first, cheaply; text beyond ASCII
    then needs the regular expression)."""
    if not _absent(keys, '"\\'):
        return None
    if _printable_ascii(keys):
        return "ascii"
    return None if _has_control(keys) else "text"


def _fixed_like_repr(col: pa.ChunkedArray, text: pa.ChunkedArray) -> bool:
    """Whether Arrow wrote every float of ``col`` as ``text`` in fixed notation where Python's
    repr does too, the digits being the same shortest round-trip ones: no exponent in Arrow's
    text, and every value zero or of a magnitude from 1e-4 to below 1e16 (Python's fixed range).
    Infinities fail (their magnitude); NaN passes, written "nan" by both."""
    magnitude = pc.abs(col)
    outside = pc.or_(pc.greater_equal(magnitude, 1e16),
                     pc.and_(pc.less(magnitude, 1e-4), pc.not_equal(magnitude, 0.0)))
    return not pc.any(outside).as_py() and _absent(text, "e")


def _column_text(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A column as CSV text, or None when it needs Python's formatting (nested values)."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if not _plain_ascii(col, ',"') and pc.any(pc.match_substring_regex(col, r'[,"\r\n]')).as_py():
            return None  # needs quoting: let the csv module do it
        return pc.fill_null(pc.cast(col, pa.string()), "")  # one string type for the writer
    if pa.types.is_floating(t):
        if t != pa.float64():  # Python writes a float32's exact float64 value, not its shortest float32 text
            col = pc.cast(col, pa.float64())
        text = pc.cast(col, pa.string())
        # Both write the shortest round-trip digits, but Python (repr) and Arrow switch to
        # exponent notation at different magnitudes ("1e-05" and "0.00001", "1000000000000000.0"
        # and "1e+15"), and Python writes integral floats as "3.0", Arrow as "3". The cheap
        # check first (numbers and a literal search), the exact one (a regex per value) after.
        if _fixed_like_repr(col, text):
            integral = pc.equal(pc.floor(col), col)  # NaN is not; no value here is infinite
        elif pc.all(pc.match_substring_regex(text, _SAME_AS_REPR)).as_py():
            integral = pc.match_substring_regex(text, r"^-?[0-9]+$")
        else:
            return None
        if pc.any(integral).as_py():  # rare in most data: the join only then
            text = pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text)
        return pc.fill_null(text, "") if text.null_count else text
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pc.fill_null(pc.cast(col, pa.string()), "")
    return None


def table_to_csv(table: pa.Table) -> bytes | pa.Buffer:
    """CSV bytes for a result table (no header), built in Arrow when the columns allow (then
    an Arrow buffer: written as it is, not copied into ``bytes`` first).

    Strings are written as they are, integers and booleans as Python writes them, floats
    in shortest round-trip form; anything else goes through the csv module.
    """
    if table.num_rows == 0 or table.num_columns == 0:
        return b""
    texts = [_column_text(col) for col in table.columns]
    if any(t is None for t in texts) or (len(texts) == 1 and pc.any(pc.equal(texts[0], "")).as_py()):
        from lambda_src import output

        return output.columns_to_csv([col.to_pylist() for col in table.columns])
    # Every value is text now, none needing quotes: Arrow's CSV writer joins them as they are.
    sink = pa.BufferOutputStream()
    pacsv.write_csv(pa.table([t.cast(pa.string()) for t in texts], names=[str(i) for i in range(len(texts))]), sink,
                    pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return sink.getvalue()
