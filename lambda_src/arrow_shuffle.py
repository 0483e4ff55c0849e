"""The Arrow shuffle, for jobs whose map, combine and reduce steps work on tables.

Runs are Arrow IPC streams of a ``key``/``value`` table. Rows go to the same partition as
the record-mode shuffle would send them (the partition of the key's JSON encoding), so a
task that falls back to record mode still lands every key in the right partition, and a
reducer given both kinds of run converts the Arrow ones to sorted lines. Imported only
when pyarrow is importable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from lambda_src import shuffle
from lambda_src import storage as st

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
    pids = pa.array(CODEC.partition_keys(table.column("key"), partitions), pa.int32())
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


def _nonempty(table: pa.Table) -> pa.Table | None:
    return table if table.num_rows else None


def to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def write_run(uri: str, table: pa.Table) -> tuple[int, int]:
    data = to_bytes(table)
    st.for_uri(uri).write_bytes(uri, data)
    return table.num_rows, len(data)


def read_run(uri: str) -> pa.Table:
    data = st.for_uri(uri).read_bytes(uri)
    try:
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except pa.ArrowInvalid as err:
        raise ValueError(f"{uri} is not a valid Arrow run: {err}") from None


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


def _column_text(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A column as CSV text, or None when it needs Python's formatting (nested values)."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if pc.any(pc.match_substring_regex(col, r'[,"\r\n]')).as_py():
            return None  # needs quoting: let the csv module do it
        return pc.fill_null(col, "")
    if pa.types.is_floating(t):
        text = pc.cast(col, pa.string())
        # Both write the shortest round-trip digits, but Python (repr) and Arrow switch to
        # exponent notation at different magnitudes ("1e-05" and "0.00001", "1000000000000000.0"
        # and "1e+15"), and Python writes integral floats as "3.0", Arrow as "3".
        if not pc.all(pc.match_substring_regex(text, _SAME_AS_REPR)).as_py():
            return None
        integral = pc.match_substring_regex(text, r"^-?[0-9]+$")
        return pc.fill_null(pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text), "")
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pc.fill_null(pc.cast(col, pa.string()), "")
    return None


def table_to_csv(table: pa.Table) -> bytes:
    """CSV bytes for a result table (no header), built in Arrow when the columns allow.

    Strings are written as they are, integers and booleans as Python writes them, floats
    in shortest round-trip form; anything else goes through the csv module.
    """
    if table.num_rows == 0 or table.num_columns == 0:
        return b""
    texts = [_column_text(col) for col in table.columns]
    if any(t is None for t in texts) or (len(texts) == 1 and pc.any(pc.equal(texts[0], "")).as_py()):
        from lambda_src import output

        return output.columns_to_csv([col.to_pylist() for col in table.columns])
    lines = pc.binary_join_element_wise(*texts, ",") if len(texts) > 1 else texts[0]
    lines = pc.binary_join_element_wise(lines, "", "\n")  # each row + "\n" + ""
    arr = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    offsets = arr.buffers()[1]
    data = arr.buffers()[2]
    first, last = (
        int.from_bytes(offsets[(arr.offset + i) * 4 : (arr.offset + i) * 4 + 4], "little", signed=True)
        for i in (0, len(arr))
    )
    return data[first:last].to_pybytes()
