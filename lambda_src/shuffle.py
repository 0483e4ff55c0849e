"""The shuffle: partitioning, the intermediate encoding, sorted runs and their merge.

Intermediate data is UTF-8 text, one record a line: the key's compact JSON, a tab, the
value's compact JSON. That encoding is canonical (object members sorted by name, no spaces),
and it alone decides what "the same key" is, everywhere: in the map-side buffer and combiner,
the partitioner, the sort and the reducer's grouping. So ``1``, ``1.0`` and ``true`` are
three keys, ``0`` and ``-0.0`` two, and ``{"a":1,"b":2}`` one key whatever its members'
order, although Python's equality says otherwise. JSON never contains a raw tab or newline (they are escaped), and a tab
sorts before every byte JSON can produce, so sorting whole lines orders records by key
bytes, and the records of one key are adjacent. Runs can therefore be merged and grouped
as plain byte lines, without decoding anything but the keys and values a function needs.
Nothing is ever pickled. :data:`CODEC` (a :class:`ShuffleCodec`) owns the encoding, the
partitioner and the run names, for the record shuffle here and the Arrow one alike.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from lambda_src import contract
from lambda_src import storage as st
from lambda_src.job import Reduce

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True, sort_keys=True)
#: The decoder's (C) scanner: json.loads around it costs several times the parse itself.
_scan_once = json.JSONDecoder().scan_once


def _make_encode() -> Any:
    """``_encoder.encode``, minus the C encoder it builds again on every call for a list."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the pure-Python encoder
        return _encoder.encode
    # No circular check (a JSON value has no cycles); object members sorted: the canonical form.
    iterencode = make(None, _encoder.default, json.encoder.encode_basestring, None, ":", ",",
                      True, False, True)
    encode_str = json.encoder.encode_basestring
    float_repr, int_repr = float.__repr__, int.__repr__
    join = "".join

    def encode(obj: Any) -> str:
        kind = type(obj)
        if kind is str:
            return encode_str(obj)
        # The C encoder writes a finite float as float.__repr__ and an int as int.__repr__.
        if kind is float and obj - obj == 0.0:  # not NaN or an infinity
            return float_repr(obj)
        if kind is int:
            return int_repr(obj)
        return join(iterencode(obj, 0))

    return encode


_encode = _make_encode()


#: Key types whose Python equality agrees with equality of their canonical encodings.
_PLAIN_KEYS = (str, int)


class EncodeError(TypeError):
    """A key or value that is not a JSON value."""


class CombinerKeyError(ValueError):
    """A combiner emitted a key other than the one it was given (a bug in the job)."""


def _encode_error(obj: Any, what: str, err: Exception) -> EncodeError:
    if isinstance(err, RecursionError):
        return EncodeError(f"a {what} of type {type(obj).__name__} cannot be encoded: it is nested too "
                           f"deeply or contains itself")
    return EncodeError(
        f"a {what} of type {type(obj).__name__} cannot be encoded: keys and values must "
        f"be JSON values (str, int, float, bool, None, list, dict): {err}"
    )


class ShuffleCodec:
    """The intermediate encoding, the partitioner and the names of runs, for both shuffles.

    A record is a line: the key's canonical JSON, a tab, the value's, a newline. A key's
    partition is the CRC-32 of its encoding modulo the partition count, in the record path
    (:meth:`partition_of`) and for a whole Arrow column of keys (:meth:`partition_keys`)
    alike. A run of lines has no suffix; an Arrow IPC run of a ``key``/``value`` table ends
    in :attr:`ARROW_SUFFIX`.
    """

    #: Name suffix of a run in Arrow IPC form (the other runs are JSON lines): the contract's.
    ARROW_SUFFIX = contract.ARROW_SUFFIX

    def encode_key(self, key: Any) -> bytes:
        try:
            return _encode(key).encode("utf-8")
        except (RecursionError, TypeError, ValueError) as err:
            raise _encode_error(key, "key", err) from None

    def encode_value(self, value: Any) -> bytes:
        try:
            return _encode(value).encode("utf-8")
        except (RecursionError, TypeError, ValueError) as err:
            raise _encode_error(value, "value", err) from None

    def line(self, key_bytes: bytes, value_bytes: bytes) -> bytes:
        return key_bytes + b"\t" + value_bytes + b"\n"

    def decode(self, data: bytes) -> Any:
        """One JSON value, optionally followed by whitespace such as the line's newline."""
        text = data.decode("utf-8")
        try:
            obj, end = _scan_once(text, 0)
        except StopIteration as err:
            raise ValueError(f"not a JSON value at character {err.value} of {text[:80]!r}") from None
        if end != len(text) and text[end:].strip():
            raise ValueError(f"extra data at character {end} of {text[:80]!r}")
        return obj

    def key_of(self, line: bytes) -> bytes:
        return line[: line.index(b"\t")]

    def value_of(self, line: bytes) -> Any:
        return self.decode(line[line.index(b"\t") + 1 :])

    def decode_pair(self, line: bytes) -> tuple[Any, Any]:
        """``(key, value)`` of a line; ``ValueError`` when it is not one."""
        tab = line.index(b"\t")
        return self.decode(line[:tab]), self.decode(line[tab + 1 :])

    def partition_of(self, key_bytes: bytes, partitions: int) -> int:
        """The partition of an encoded key: stable across processes, machines and runs."""
        if partitions == 1:
            return 0
        return zlib.crc32(key_bytes) % partitions

    def partition_keys(self, keys: Any, partitions: int) -> list[int]:
        """:meth:`partition_of` of each key of an Arrow array (needs pyarrow)."""
        from lambda_src import arrow_shuffle

        return arrow_shuffle.partition_ids(keys, partitions).to_pylist()

    def iter_lines(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Lines (with their ``\\n``) from a stream of byte chunks."""
        carry = b""
        for chunk in chunks:
            if carry:
                chunk = carry + chunk
            lines = chunk.split(b"\n")
            carry = lines.pop()
            for line in lines:
                yield line + b"\n"
        if carry:
            yield carry + b"\n"


CODEC = ShuffleCodec()


def merge(runs: list[Iterable[bytes]]) -> Iterator[bytes]:
    """K-way merge of sorted runs of lines, streamed."""
    if len(runs) == 1:
        return iter(runs[0])
    return heapq.merge(*runs)


#: Values decoded together: one call of the JSON decoder for a batch of lines.
GROUP_BATCH = 4096


def decode_all(items: list[bytes], what: str) -> list[Any]:
    """Decode encoded values (each optionally followed by its newline) in one decoder call.

    Each item is wrapped in its own brackets, so an item that is not one JSON value changes
    the count or the shape of what comes back; then each one is decoded alone, to name it.
    """
    if not items:
        return []
    try:
        wrapped = json.loads(b"[[" + b"],[".join(items) + b"]]")
        if len(wrapped) == len(items):
            return [value for (value,) in wrapped]
    except ValueError:
        pass
    for n, item in enumerate(items, 1):
        try:
            CODEC.decode(item)
        except ValueError as err:
            raise ValueError(f"{what} {n} of a batch of {len(items)}: {err}") from None
    raise ValueError(f"a batch of {len(items)} {what}s does not decode item by item")


class KeyGroups:
    """``(encoded key, key, values)`` for each key of a sorted stream of lines, in order.

    Lines are grouped by their key bytes and decoded in batches (:func:`decode_all`); a key
    with more than ``batch`` values has the rest of them streamed, decoded one by one, so a
    hot key never has to fit in memory. Counts the lines (``records``) and keys seen.
    """

    def __init__(self, lines: Iterable[bytes], batch: int = GROUP_BATCH) -> None:
        self.lines = lines
        self.batch = batch
        self.records = 0
        self.keys = 0

    def __iter__(self) -> Iterator[tuple[bytes, Any, Iterator[Any]]]:
        batch = self.batch
        lines = iter(self.lines)
        keys: list[bytes] = []  # the batch's encoded keys
        starts: list[int] = []  # where each key's values start in ``values``
        values: list[bytes] = []  # encoded values
        prev = None
        while True:
            hot = None
            for line in lines:
                key, _, value = line.partition(b"\t")
                if key != prev:
                    if len(values) >= batch:
                        yield from self._decoded(keys, starts, values)
                        keys, starts, values = [], [], []
                    keys.append(key)
                    starts.append(len(values))
                    prev = key
                elif len(values) - starts[-1] >= batch:
                    values.append(value)
                    hot = key
                    break
                values.append(value)
            if hot is None:
                yield from self._decoded(keys, starts, values)
                return
            # A hot key: the keys before it go as a batch, its values are streamed.
            first = starts.pop()
            keys.pop()
            held = values[first:]
            del values[first:]
            yield from self._decoded(keys, starts, values)
            keys, starts, values = [], [], []
            tail = _KeyTail(lines, hot)
            self.records += len(held)
            self.keys += 1
            yield hot, CODEC.decode(hot), itertools.chain(decode_all(held, "value"), tail)
            for _ in tail:  # what the function left unread
                pass
            self.records += tail.count
            if tail.next_line is None:
                return
            lines = itertools.chain((tail.next_line,), lines)

    def _decoded(
        self, keys: list[bytes], starts: list[int], values: list[bytes]
    ) -> Iterator[tuple[bytes, Any, Iterator[Any]]]:
        if not keys:
            return
        self.records += len(values)
        self.keys += len(keys)
        decoded = decode_all(values, "value")
        ends = starts[1:]
        ends.append(len(values))
        for key_bytes, key, start, end in zip(keys, decode_all(keys, "key"), starts, ends, strict=True):
            yield key_bytes, key, iter(decoded[start:end])


class _KeyTail:
    """The rest of one key's values from a sorted stream, decoded one by one; the first line
    of the next key is kept in ``next_line``."""

    def __init__(self, lines: Iterator[bytes], key: bytes) -> None:
        self.lines = lines
        self.key = key
        self.next_line: bytes | None = None
        self.count = 0
        self.done = False

    def __iter__(self) -> _KeyTail:
        return self

    def __next__(self) -> Any:
        if self.done:
            raise StopIteration
        for line in self.lines:
            key, _, value = line.partition(b"\t")
            if key != self.key:
                self.next_line = line
                break
            self.count += 1
            return CODEC.decode(value)
        self.done = True
        raise StopIteration


def combine_stream(groups: KeyGroups, combiner: Reduce, where: str) -> Iterator[bytes]:
    """Apply a combiner to every key group of a sorted stream; output stays sorted."""
    encode_key, encode_value = CODEC.encode_key, CODEC.encode_value
    for key_bytes, key, values in groups:
        prefix = key_bytes + b"\t"
        for out_key, out_value in combiner(key, values):
            if out_key is not key:
                out_key_bytes = encode_key(out_key)
                if out_key_bytes != key_bytes:
                    raise CombinerKeyError(
                        f"the combiner changed key {key_bytes.decode()} into "
                        f"{out_key_bytes.decode()} ({where}); a combiner must emit the key it is "
                        f"given, because it may run in any round"
                    )
            yield prefix + encode_value(out_value) + b"\n"


class RejectedRecord(Exception):
    """A record's pairs were refused (none of them was added): ``error`` says why.

    ``index`` is the record's position in the list given to ``add_records``; the records
    before it were added, the ones after it were not looked at.
    """

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


class _BadPair(Exception):
    """Something a mapper emitted that cannot be added: ``error`` says why."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def not_a_pair(pairs: list[Any]) -> ValueError | None:
    """The error for the first item of a record's ``pairs`` that is not a (key, value) pair."""
    bad = next((p for p in pairs if not (isinstance(p, tuple | list) and len(p) == 2)), None)
    if bad is None:
        return None
    return ValueError(f"the mapper emitted {bad!r}, not a (key, value) pair")


class MapOutputBuffer:
    """Collects a mapper's pairs grouped by key, combines them, and spills sorted runs.

    Pairs are held in a hash table by key (the key's canonical encoding decides identity).
    With a combiner, each key's values are combined in place when ``flush_values`` values
    are held, so only combined pairs are ever encoded, partitioned and sorted; when still
    half that many are held, or without a combiner, they become sorted, encoded runs, one
    per partition. Runs stay in memory until they pass ``spill_bytes``, then go to
    temporary files, so a mapper's memory stays bounded whatever its output size.
    """

    def __init__(
        self,
        partitions: int,
        combiner: Reduce | None,
        flush_values: int = 1_000_000,
        spill_bytes: int = 256 * 1024 * 1024,
        spill_dir: str | None = None,
    ) -> None:
        self.partitions = partitions
        self.combiner = combiner
        self.flush_values = flush_values
        self.spill_bytes = spill_bytes
        self.spill_dir = spill_dir
        #: key (str or int as itself, any other key as its _Encoded form) -> its value, or
        #: its values as a _Several when it has more than one (no list for a lone value)
        self.groups: dict[Any, Any] = {}
        self.held = 0
        self.records_in = 0
        # runs[p] is a list of runs: bytes in memory or an open temporary file
        self.runs: list[list[bytes | IO[bytes]]] = [[] for _ in range(partitions)]
        self.memory_bytes = 0
        self.spills = 0

    def add(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        """Add one record's pairs: all of them, or none (the refusal is raised)."""
        try:
            self.add_records([list(pairs)])
        except RejectedRecord as rejected:
            raise rejected.error from None

    def add_records(self, records: list[list[Any]], first: int = 0) -> None:
        """Add the pairs of ``records[first:]``, each a list of one record's pairs.

        A record holding something other than a (key, value) pair, or a key that is not a
        JSON value, is refused whole: :class:`RejectedRecord` is raised with its index,
        after the records before it were added.
        """
        failure = self.map_records(_own_pairs, None, records, first)
        if failure is not None:
            raise RejectedRecord(*failure)

    def map_records(
        self, mapper: Callable[[Any, Any], Iterable[Any]], key: Any, records: list[Any], first: int = 0
    ) -> tuple[int, Exception] | None:
        """Run ``mapper(key, record)`` over ``records[first:]``, adding each one's pairs as
        they come (no list of them is made).

        Stops at the first record whose mapper raises or that emits something other than a
        (key, value) pair of JSON values: that record's pairs are taken back (a record adds
        all its pairs or none), and ``(its index, the error)`` is returned; None when every
        record was added. The flush threshold is checked after each record, as :meth:`add`
        checks it (and the Node.js plane's buffer), so runs are cut at the same points.
        """
        groups = self.groups
        encode_key = CODEC.encode_key
        trail: list[Any] = []  # the groups of the record's pairs after its first
        added = 0
        until_flush = self.flush_values - self.held  # checked after each record, as add() does
        for index in range(first, len(records)):
            head = None  # the group of the record's first pair
            try:
                for pair in mapper(key, records[index]):
                    try:
                        out_key, value = pair
                        # str and int keys are equal in Python exactly when their encodings are;
                        # any other key (1.0, True, -0.0, a dict or list) is held by its encoding.
                        group = out_key if type(out_key) in _PLAIN_KEYS else _Encoded(encode_key(out_key))
                        held = groups.get(group, _NONE)
                        if held is _NONE:
                            groups[group] = value
                        elif type(held) is _Several:
                            held.append(value)
                        else:
                            groups[group] = _Several((held, value))
                    except (TypeError, ValueError) as err:
                        raise _BadPair(not_a_pair([pair]) or err) from None
                    if head is None:
                        head = group
                    else:
                        trail.append(group)
                    added += 1
            except Exception as err:  # the record adds nothing; the caller decides what next
                for group in (() if head is None else (head, *trail)):
                    held = groups[group]
                    if type(held) is not _Several:
                        del groups[group]
                    elif len(held) == 2:
                        groups[group] = held[0]
                    else:
                        held.pop()
                    added -= 1
                self._count(added)
                return index, err.error if type(err) is _BadPair else err
            if trail:
                trail.clear()
            if added >= until_flush:
                self._count(added)
                added = 0
                groups = self.groups  # written out: a new table
                until_flush = self.flush_values - self.held
        self._count(added)
        return None

    def _count(self, added: int) -> None:
        self.records_in += added
        self.held += added
        if self.held >= self.flush_values:
            if self.combiner is not None:
                self._combine_groups()
            if self.held >= self.flush_values // 2:
                self._write_runs()

    def _combine_groups(self) -> None:
        """Replace each key's values by the combiner's output for them (only where it can
        change anything: a key with a single value keeps it)."""
        combiner = self.combiner
        emptied = []
        held = 0
        for key, values in self.groups.items():
            if type(values) is not _Several:
                held += 1
                continue
            real_key = key.value if type(key) is _Encoded else key
            out = []
            for out_key, out_value in combiner(real_key, iter(values)):
                if out_key is not real_key and not (
                    type(out_key) is type(real_key) and type(out_key) in _PLAIN_KEYS and out_key == real_key
                ):
                    key_bytes = key.encoded if type(key) is _Encoded else CODEC.encode_key(real_key)
                    if CODEC.encode_key(out_key) != key_bytes:
                        raise CombinerKeyError(
                            f"the combiner changed key {key_bytes.decode()} into "
                            f"{CODEC.encode_key(out_key).decode()}; a combiner must emit the key it is given"
                        )
                out.append(out_value)
            held += len(out)
            if len(out) > 1:
                values[:] = out
            elif out:
                self.groups[key] = out[0]  # the same keys: iterating goes on
            else:
                emptied.append(key)
        for key in emptied:
            del self.groups[key]
        self.held = held

    def _write_runs(self) -> None:
        """Write the held pairs as one sorted run per partition."""
        try:
            blobs = _sorted_runs(self.groups, self.partitions)
        except (RecursionError, TypeError, ValueError):
            _raise_unencodable(self.groups)
            raise
        self.groups = {}
        self.held = 0
        for p, blob in enumerate(blobs):
            if blob is not None:
                self.runs[p].append(blob)
                self.memory_bytes += len(blob)
        if self.memory_bytes > self.spill_bytes:
            self._spill()

    def _spill(self) -> None:
        for runs in self.runs:
            for i, run in enumerate(runs):
                if isinstance(run, bytes):
                    fh = st.spool_file("lambdamr-spill-", self.spill_dir)  # closed by close()
                    fh.write(run)
                    runs[i] = fh
        self.memory_bytes = 0
        self.spills += 1

    def finish(self) -> list[bytes | Iterator[bytes] | None]:
        """For each partition: its sorted (and combined) lines, or None when empty.

        A partition that fits one in-memory run comes back as that run's bytes.
        """
        if self.groups:
            if self.combiner is not None:
                self._combine_groups()
            self._write_runs()
        out: list[bytes | Iterator[bytes] | None] = []
        for p, runs in enumerate(self.runs):
            if not runs:
                out.append(None)
                continue
            if len(runs) == 1 and isinstance(runs[0], bytes):
                out.append(runs[0])
                continue
            streams = [_run_lines(run) for run in runs]
            merged = merge(streams)
            if self.combiner is not None and len(runs) > 1:
                merged = combine_stream(KeyGroups(merged), self.combiner, f"map output partition {p}")
            out.append(merged)
        return out

    def close(self) -> None:
        for runs in self.runs:
            for run in runs:
                if not isinstance(run, bytes):
                    run.close()
        self.runs = [[] for _ in range(self.partitions)]


class _Several(list):
    """The values of a key of ``MapOutputBuffer.groups`` that holds more than one."""

    __slots__ = ()


#: Not a value: what ``groups.get`` gives for a key not held.
_NONE = object()


def _own_pairs(_key: Any, pairs: list[Any]) -> list[Any]:
    """The mapper ``add_records`` runs: its records are lists of pairs already."""
    return pairs


class _Encoded:
    """A key held by its canonical encoding (its decoded value is what a combiner sees)."""

    __slots__ = ("encoded",)

    def __init__(self, encoded: bytes) -> None:
        self.encoded = encoded

    @property
    def value(self) -> Any:
        return CODEC.decode(self.encoded)

    def __hash__(self) -> int:
        return hash(self.encoded)

    def __eq__(self, other: object) -> bool:
        return type(other) is _Encoded and other.encoded == self.encoded


def _sorted_runs(groups: dict[Any, Any], partitions: int) -> list[bytes | None]:
    """For each partition, the sorted lines of the pairs ``groups`` holds (None for none).

    Encoded in batches (:func:`_texts`) and sorted as text: UTF-8 keeps the order of code
    points, so text lines sort as their bytes do, and each run is encoded once.
    """
    keys = _texts(list(groups))
    values = list(groups.values())
    counts = None
    if _Several in set(map(type, values)):  # some key holds several values: its text for each
        counts = [len(held) if type(held) is _Several else 1 for held in values]
        values = list(itertools.chain.from_iterable(_held_values(held) for held in values))
    lines = [
        f"{key}\t{value}\n"
        for key, value in zip(_repeat(keys, counts), _texts(values), strict=True)
    ]
    if partitions == 1:
        parts = [lines]
    else:
        crc = zlib.crc32
        owners = _repeat([crc(key) % partitions for key in map(str.encode, keys)], counts)
        parts = [[] for _ in range(partitions)]
        appends = [part.append for part in parts]
        for owner, line in zip(owners, lines, strict=True):
            appends[owner](line)
    for part in parts:
        part.sort()
    return ["".join(part).encode("utf-8") if part else None for part in parts]


#: Types a JSON array of which has commas only between its items.
_COMMA_FREE = frozenset({float, int, bool, type(None)})


def _texts(items: list[Any]) -> list[str]:
    """The canonical JSON text of each item (of a key held as :class:`_Encoded`, its
    encoding), a batch of one kind at a time."""
    kinds = set(map(type, items))
    if kinds == {str}:
        return list(map(json.encoder.encode_basestring, items))
    if kinds <= _COMMA_FREE and items:  # one encoder call for the lot, split at its commas
        return _encoder.encode(items)[1:-1].split(",")
    if _Encoded in kinds:
        return [item.encoded.decode("utf-8") if type(item) is _Encoded else _encode(item) for item in items]
    return list(map(_encode, items))


def _raise_unencodable(groups: dict[Any, Any]) -> None:
    """Raise the :class:`EncodeError` of the first key or value held that is not a JSON
    value (or is text with a lone surrogate, which UTF-8 cannot hold)."""
    for key, held in groups.items():
        if type(key) is not _Encoded:
            CODEC.encode_key(key)
        for value in _held_values(held):
            CODEC.encode_value(value)


def _held_values(held: Any) -> Any:
    """The values of a key of ``MapOutputBuffer.groups``."""
    return held if type(held) is _Several else (held,)


def _repeat(items: list[Any], counts: list[int] | None) -> list[Any]:
    """Each item ``counts`` times (once each without counts)."""
    if counts is None:
        return items
    return [item for item, count in zip(items, counts, strict=True) for _ in range(count)]


def _run_lines(run: bytes | IO[bytes]) -> Iterator[bytes]:
    if isinstance(run, bytes):
        return iter(run.splitlines(keepends=True))
    run.seek(0)
    return CODEC.iter_lines(iter(lambda: run.read(1024 * 1024), b""))


#: Collector thresholds while a task holds its data: a young collection every 200,000
#: allocations rather than 700, and almost never a full one. With the default ones, the
#: collector rescans the task's growing tables of live keys and values over and over: a
#: third of a record-mode map task's time. Cycles of garbage are still collected.
BULK_GC_THRESHOLDS = (200_000, 20, 1000)


@contextlib.contextmanager
def bulk_gc() -> Iterator[None]:
    """Run the body with :data:`BULK_GC_THRESHOLDS`, then restore the collector's."""
    before = gc.get_threshold()
    gc.set_threshold(*BULK_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def spill_dir() -> str | None:
    """Lambda's writable scratch space is /tmp; locally, the system default."""
    return os.environ.get("LAMBDAMR_SPILL_DIR") or None
