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

import collections
import heapq
import itertools
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, Any

from lambda_src import contract
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
    join = "".join

    def encode(obj: Any) -> str:
        if type(obj) is str:
            return encode_str(obj)
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
        import pyarrow as pa
        import pyarrow.compute as pc

        crc = zlib.crc32
        if partitions == 1:
            return [0] * len(keys)
        if pa.types.is_string(keys.type) and keys.null_count == 0 and not pc.any(
            pc.match_substring_regex(keys, r'["\\\x00-\x1f\x7f]')
        ).as_py():
            # Strings JSON encodes as themselves in quotes: build those bytes in Arrow.
            quoted = pc.cast(pc.binary_join_element_wise('"', keys, '"', ""), pa.binary())
            return [crc(b) % partitions for b in quoted.to_pylist()]
        encode_key = self.encode_key
        return [crc(encode_key(k)) % partitions for k in keys.to_pylist()]

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


def groups(lines: Iterable[bytes]) -> Iterator[tuple[bytes, Iterator[bytes]]]:
    """(encoded key, its lines) for each key of a sorted stream, lazily."""
    yield from itertools.groupby(lines, CODEC.key_of)


def combine_stream(
    lines: Iterable[bytes], combiner: Reduce, where: str
) -> Iterator[bytes]:
    """Apply a combiner to every key group of a sorted stream; output stays sorted."""
    decode, value_of, encode_key, encode_value = CODEC.decode, CODEC.value_of, CODEC.encode_key, CODEC.encode_value
    for key_bytes, grp in groups(lines):
        key = decode(key_bytes)
        values = (value_of(line) for line in grp)
        for out_key, out_value in combiner(key, values):
            out_key_bytes = encode_key(out_key)
            if out_key_bytes != key_bytes:
                raise CombinerKeyError(
                    f"the combiner changed key {key_bytes.decode()} into "
                    f"{out_key_bytes.decode()} ({where}); a combiner must emit the key it is "
                    f"given, because it may run in any round"
                )
            yield CODEC.line(key_bytes, encode_value(out_value))


class MapOutputBuffer:
    """Collects a mapper's pairs, combines them, and spills sorted runs when large.

    With a combiner, pairs are grouped by key in memory and combined; without one they are
    only collected (the sort groups them). When ``flush_values`` values are held they become
    sorted, encoded runs, one per partition. Runs stay in memory until they pass
    ``spill_bytes``, then go to temporary files, so a mapper's memory stays bounded whatever
    its output size.
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
        self.groups: collections.defaultdict[Any, list[Any]] = collections.defaultdict(list)
        self.pairs: list[tuple[Any, Any]] = []  # without a combiner: the pairs as they come
        self.held = 0
        self.records_in = 0
        # runs[p] is a list of runs: bytes in memory or an open temporary file
        self.runs: list[list[bytes | IO[bytes]]] = [[] for _ in range(partitions)]
        self.memory_bytes = 0
        self.spills = 0

    def add(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        if type(pairs) is not list:
            pairs = list(pairs)
        # The shape is checked before anything is added: a bad pair is blamed on the record
        # that made it, and a skipped record adds none of its pairs.
        try:
            for _key, _value in pairs:
                pass
        except (TypeError, ValueError):
            bad = next(p for p in pairs if not (isinstance(p, tuple | list) and len(p) == 2))
            raise ValueError(f"the mapper emitted {bad!r}, not a (key, value) pair") from None
        if self.combiner is None:
            self.pairs += pairs
            count = len(pairs)
            self.records_in += count
            self.held += count
            if self.held >= self.flush_values:
                self._write_runs()
            return
        groups = self.groups
        for key, value in pairs:
            # str and int keys are equal in Python exactly when their encodings are; any
            # other key (1.0, True, -0.0, a dict or list) is held by its canonical encoding.
            if type(key) not in _PLAIN_KEYS:
                key = _Encoded(CODEC.encode_key(key))
            groups[key].append(value)
        count = len(pairs)
        self.records_in += count
        self.held += count
        if self.held >= self.flush_values:
            self._compact()

    def _compact(self) -> None:
        """Combine in place; when still too many values are held, write runs."""
        if self.combiner is not None:
            self._combine_groups()
        if self.held >= self.flush_values // 2:
            self._write_runs()

    def _combine_groups(self) -> None:
        combined: collections.defaultdict[Any, list[Any]] = collections.defaultdict(list)
        held = 0
        for key, values in self.groups.items():
            if len(values) == 1:
                combined[key] = values
                held += 1
                continue
            if isinstance(key, _Encoded):
                real_key, key_bytes = key.value, key.encoded
            else:
                real_key, key_bytes = key, None
            out = []
            for out_key, out_value in self.combiner(real_key, iter(values)):
                if not (type(out_key) is type(real_key) and type(out_key) in _PLAIN_KEYS
                        and out_key == real_key):
                    key_bytes = key_bytes or CODEC.encode_key(real_key)
                    if CODEC.encode_key(out_key) != key_bytes:
                        raise CombinerKeyError(
                            f"the combiner changed key {key_bytes.decode()} into "
                            f"{CODEC.encode_key(out_key).decode()}; a combiner must emit the key it is given"
                        )
                out.append(out_value)
            combined[key] = out
            held += len(out)
        self.groups = combined
        self.held = held

    def _write_runs(self) -> None:
        parts: list[list[bytes]] = [[] for _ in range(self.partitions)]
        encode_key, encode_value, partition_of = CODEC.encode_key, CODEC.encode_value, CODEC.partition_of
        for pair in self.pairs:
            try:
                key, value = pair
            except (TypeError, ValueError):
                raise EncodeError(f"the mapper emitted {pair!r}, not a (key, value) pair") from None
            kb = encode_key(key)
            parts[partition_of(kb, self.partitions)].append(kb + b"\t" + encode_value(value) + b"\n")
        self.pairs = []
        for key, values in self.groups.items():
            kb = key.encoded if isinstance(key, _Encoded) else encode_key(key)
            prefix = kb + b"\t"
            target = parts[partition_of(kb, self.partitions)]
            for value in values:
                target.append(prefix + encode_value(value) + b"\n")
        self.groups = collections.defaultdict(list)
        self.held = 0
        for p, lines in enumerate(parts):
            if not lines:
                continue
            lines.sort()
            blob = b"".join(lines)
            self.runs[p].append(blob)
            self.memory_bytes += len(blob)
        if self.memory_bytes > self.spill_bytes:
            self._spill()

    def _spill(self) -> None:
        for runs in self.runs:
            for i, run in enumerate(runs):
                if isinstance(run, bytes):
                    fh = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
                        prefix="lambdamr-spill-", dir=self.spill_dir
                    )
                    fh.write(run)
                    runs[i] = fh
        self.memory_bytes = 0
        self.spills += 1

    def finish(self) -> list[bytes | Iterator[bytes] | None]:
        """For each partition: its sorted (and combined) lines, or None when empty.

        A partition that fits one in-memory run comes back as that run's bytes.
        """
        if self.groups or self.pairs:
            if self.combiner is not None:
                self._combine_groups()
            self._write_runs()
        out: list[Iterator[bytes] | None] = []
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
                merged = combine_stream(merged, self.combiner, f"map output partition {p}")
            out.append(merged)
        return out

    def close(self) -> None:
        for runs in self.runs:
            for run in runs:
                if not isinstance(run, bytes):
                    run.close()
        self.runs = [[] for _ in range(self.partitions)]


class _Encoded:
    """A key held by its canonical encoding (its decoded value is what a combiner sees)."""

    __slots__ = ("encoded", "value")

    def __init__(self, encoded: bytes) -> None:
        self.encoded = encoded
        self.value = CODEC.decode(encoded)

    def __hash__(self) -> int:
        return hash(self.encoded)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Encoded) and other.encoded == self.encoded


def _run_lines(run: bytes | IO[bytes]) -> Iterator[bytes]:
    if isinstance(run, bytes):
        return iter(run.splitlines(keepends=True))
    run.seek(0)
    return CODEC.iter_lines(iter(lambda: run.read(1024 * 1024), b""))


def spill_dir() -> str | None:
    """Lambda's writable scratch space is /tmp; locally, the system default."""
    return os.environ.get("LAMBDAMR_SPILL_DIR") or None
