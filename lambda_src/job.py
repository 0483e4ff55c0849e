"""The job API: a MapReduce job is a small class with generator methods.

.. code-block:: python

    from lambda_src.job import MapReduceJob

    class WordCount(MapReduceJob):
        def mapper(self, key, line):
            for word in line.split():
                yield word.lower(), 1

        def combiner(self, key, values):
            yield key, sum(values)

        def reducer(self, key, values):
            yield key, sum(values)

``mapper(key, line)`` gets one decoded line without its line ending (a row of Parquet, JSON
Lines or CSV input: see ``input_format`` and ``input_columns``); ``key`` is ``None``
for a job with one input, or the input's name for a job given named inputs
(``--input visits=s3://...``). ``combiner`` is optional: it must emit the key it is given
and values of the kind the mapper emits, because it may run any number of times (in the
mapper and in every intermediate reduce round). ``reducer`` runs once per key, on every
value of that key, in the final round. Keys and values must be JSON values (str, int,
float, bool, None, lists, dicts); tuples come back as lists.

A job may also define a vectorized mapper, ``map_table(table)``, over a ``pyarrow.Table``
of delimited text columns (``table_columns``), or of Parquet or JSON Lines rows (the columns
of ``table_include``, else ``input_columns``, else all); it is used when pyarrow is importable and
must give the same result as ``mapper``/``combiner``, which stay the reference path (and
the path that reports bad records precisely). ``map_table`` may return (key, value) pairs,
or a table with ``key`` and ``value`` columns; a job that returns tables and also defines
``combine_table`` (associative, like ``combiner``) and ``reduce_table`` (like ``reducer``)
keeps its whole shuffle in Arrow: partial aggregates never become Python objects.

A job of several MapReduce rounds (a join, then an aggregation, then a top-N) defines
``steps()``, returning ``Step`` objects that name bound methods, mrjob-style:

.. code-block:: python

    def steps(self):
        return [
            Step(mapper=self.tag_rows, reducer=self.join),
            Step(combiner=self.add_up, reducer=self.add_up),
        ]

Step 1 reads the job's input lines. Every later step reads the (key, value) pairs the
previous step's reducer emitted: its mapper is called as ``mapper(key, value)`` (a step
without a mapper passes the pairs through). Only the last step's reducer output becomes
the job's CSV result; the pairs between steps stay in the compact intermediate encoding.
A step may set ``partitions`` (for example 1 for a global top-N). The vectorized methods
apply to single-step jobs.

The first step of a job over two named inputs may instead be a ``Join``: an inner
equi-join in Arrow (it needs pyarrow). Each side is a ``TableInput``: the input's
delimited text columns, the join column, and an optional ``select(table)`` that filters
and projects the side's rows before the join. ``emit(table)`` turns joined rows (the
column ``key``, then the left side's other columns, then the right side's) into a table
with a ``key`` column and value columns: each of its rows is a (key, value) pair for the
next step, the value being the ``value`` column's, or the list of the value columns'.
``emit`` may be called on any subset of the joined rows (like a combiner), so what it
aggregates the next step must combine again. A Join is returned by ``table_steps()``, the
vectorized variant of ``steps()`` (same number of steps), which the job uses when it runs
vectorized; ``steps()`` stays the record-mode reference.

A later step of ``table_steps()`` may work on tables too: ``Step(combine_table=...,
reduce_table=...)``, without record-mode functions. It reads the pairs of the step before it
(a Join or another such step) as Arrow tables of a ``key`` column and value columns, passes
them through its map tasks, and combines (``combine_table``, optional, associative like a
combiner: in the map tasks and in every intermediate reduce round) and reduces
(``reduce_table``, once per partition on all of its rows) them as tables: its pairs, or the
job's result rows in the last step. Between such steps the pairs stay Arrow runs, never
Python objects.

.. code-block:: python

    Join(left=TableInput("visits", VISIT_COLUMNS, key="destURL", select=self.in_window),
         right=TableInput("pages", PAGE_COLUMNS, key="pageURL", types={"pageRank": "int64"}),
         emit=self.revenue_by_ip)

The planner picks how the join runs from the input sizes: a broadcast hash join (every
map task over the larger input reads the whole smaller one, keeping its rows that may join) when
the smaller input fits the function's memory, else a partitioned join (both sides
shuffled on the join key). The result is the same either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

Pair = tuple[Any, Any]
Reduce = Callable[[Any, Iterator[Any]], Iterable[Pair]]


@dataclass(frozen=True)
class Step:
    """One MapReduce round of a multi-step job; the functions are bound job methods.

    ``mapper(key, value)`` (line input: ``(input name or None, line)``) yields pairs; None
    passes each pair through unchanged. ``mapper_init``/``mapper_final`` run once per map
    task around it (in-mapper combining). ``combiner`` is optional, as in a one-step job.
    ``reducer`` is required in a multi-step job (only a one-step job may be map-only).
    ``partitions`` overrides the job's ``--partitions``. ``input_format`` (first step only)
    says what the step reads, as ``MapReduceJob.input_format`` does.
    """

    mapper: Callable[[Any, Any], Iterable[Pair]] | None = None
    reducer: Reduce | None = None
    combiner: Reduce | None = None
    mapper_init: Callable[[], None] | None = None
    mapper_final: Callable[[], Iterable[Pair]] | None = None
    partitions: int | None = None
    #: The first step's input format (as ``MapReduceJob.input_format``); later steps read pairs.
    input_format: str | Mapping[str, str] | None = None
    #: A later step of ``table_steps()`` in Arrow (see the module docstring): ``key``/value
    #: tables combined (optional) and reduced; such a step has no record-mode functions.
    combine_table: Callable[[Any], Any] | None = None
    reduce_table: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.partitions is not None and not 1 <= self.partitions <= 100_000:
            raise ValueError(f"a step's partitions must be between 1 and 100000, got {self.partitions}")

    @property
    def on_tables(self) -> bool:
        """The step works on Arrow tables (``reduce_table``), not on pairs."""
        return self.reduce_table is not None

    def map_pairs(self, key: Any, value: Any) -> Iterable[Pair]:
        """The step's mapper, or the identity."""
        if self.mapper is None:
            return ((key, value),)
        return self.mapper(key, value)


@dataclass(frozen=True)
class TableInput:
    """One side of a ``Join``: a named input's delimited text read as a ``pyarrow.Table``.

    ``columns`` name the fields of a line, ``key`` is the join column, ``include`` the
    columns to keep (default: all), ``types`` pyarrow type names by column (default
    ``"string"``). ``select(table)`` (optional) filters and projects the rows; it must keep
    the ``key`` column.
    """

    name: str
    columns: tuple[str, ...]
    key: str
    include: tuple[str, ...] | None = None
    types: Mapping[str, str] = field(default_factory=dict)
    delimiter: str = ","
    select: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.key not in (self.include or self.columns):
            raise ValueError(f"join input {self.name!r}: the key column {self.key!r} is not read "
                             f"(columns {list(self.include or self.columns)})")

    def parse_line(self, line: str) -> list[Any] | None:
        """The record path's reading of one line: the included columns, converted as Python
        converts them (``int``, ``float``), or None for an empty line; ``BadRecord`` when
        the line does not parse. Used for splits the vectorized reader gives up on."""
        if not line:
            return None
        cols = split_columns(line, self.columns, self.delimiter)
        return [parse_value(cols[i], name, self.types.get(name, "string")) for i, name in self._included]

    @functools.cached_property
    def _included(self) -> tuple[tuple[int, str], ...]:
        return tuple((self.columns.index(name), name) for name in (self.include or self.columns))

    # The names the text reader looks for (a job's table_* attributes).
    @property
    def table_columns(self) -> tuple[str, ...]:
        return self.columns

    @property
    def table_include(self) -> tuple[str, ...] | None:
        return self.include

    @property
    def table_types(self) -> Mapping[str, str]:
        return self.types

    @property
    def table_delimiter(self) -> str:
        return self.delimiter


@dataclass(frozen=True)
class Join:
    """A first step that joins two named inputs in Arrow; see the module docstring."""

    left: TableInput
    right: TableInput
    emit: Callable[[Any], Any]
    partitions: int | None = None

    #: A join has no record-mode functions; these keep the Step interface.
    reducer = None
    combiner = None

    def __post_init__(self) -> None:
        if self.left.name == self.right.name:
            raise ValueError(f"a join needs two different inputs, got {self.left.name!r} twice")
        if self.partitions is not None and not 1 <= self.partitions <= 100_000:
            raise ValueError(f"a step's partitions must be between 1 and 100000, got {self.partitions}")

    def side(self, name: str | None) -> TableInput:
        """The side reading input ``name``."""
        for side in (self.left, self.right):
            if side.name == name:
                return side
        raise ValueError(f"the join reads inputs {self.left.name!r} and {self.right.name!r}, not {name!r}")


def _check_table_step(name: str, n: int, step: Step, before: Step | Join | None) -> None:
    """A step on tables reads the Arrow pairs of a Join or of another step on tables."""
    if step.reduce_table is None:
        raise TypeError(f"{name}: step {n} has a combine_table but no reduce_table")
    record = [f for f in ("mapper", "combiner", "reducer", "mapper_init", "mapper_final")
              if getattr(step, f) is not None]
    if record:
        raise TypeError(f"{name}: step {n} works on tables (reduce_table) and cannot also have "
                        f"{', '.join(record)}")
    if not (isinstance(before, Join) or (isinstance(before, Step) and before.on_tables)):
        raise TypeError(f"{name}: step {n} works on tables, so it must follow a Join or another step on "
                        f"tables (it reads their Arrow pairs)")


class BadRecord(ValueError):
    """Raised by a mapper for an input record it cannot parse.

    The task fails with the file, byte offset and a sample of the line, unless the job
    allows some bad records (``--max-bad-records``), in which case the record is skipped
    and counted.
    """


def split_columns(line: str, columns: tuple[str, ...], delimiter: str = ",") -> list[str]:
    """A delimited line's fields; ``BadRecord`` unless there is one per column."""
    cols = line.split(delimiter)
    if len(cols) != len(columns):
        kind = "comma-separated" if delimiter == "," else f"{delimiter!r}-separated"
        raise BadRecord(f"expected {len(columns)} {kind} columns, found {len(cols)}")
    return cols


def parse_value(text: str, column: str, type_name: str) -> Any:
    """A field as the pyarrow type named ``type_name`` reads it, converted by Python."""
    if type_name.startswith(("float", "double", "halffloat")):
        try:
            return float(text)
        except ValueError:
            raise BadRecord(f"column {column} is not a number: {text!r}") from None
    if type_name.startswith(("int", "uint")):
        try:
            return int(text)
        except ValueError:
            raise BadRecord(f"column {column} is not an integer: {text!r}") from None
    return text


class MapReduceJob:
    """Base class for a MapReduce job; see the module docstring."""

    #: The named inputs the job reads (``--input NAME=URI``), or None for any inputs.
    input_names: tuple[str, ...] | None = None
    #: Column names of delimited text input; enables ``map_table`` when pyarrow is present.
    table_columns: tuple[str, ...] | None = None
    #: Field delimiter of that text.
    table_delimiter: str = ","
    #: Columns ``map_table`` needs (default: all), so the reader can skip the others.
    table_include: tuple[str, ...] | None = None
    #: pyarrow type names (``"float64"``, ``"string"``, ``"int64"``) by column name; a column
    #: without one is read as ``"string"``.
    table_types: Mapping[str, str] = MappingProxyType({})
    #: What the job reads: ``"text"``, ``"jsonl"``, ``"csv"`` or ``"parquet"``, or such a
    #: name per input name; None: each object's extension and first bytes say (text unless
    #: they say otherwise). ``--input-format`` overrides it.
    input_format: str | Mapping[str, str] | None = None
    #: Columns of Parquet, JSON Lines or CSV rows, by name: record mode receives each row as a
    #: tuple of them, in this order (without them: a dict of every column); Parquet reads
    #: only the columns the job needs.
    input_columns: tuple[str, ...] | None = None
    #: Rows to read from Parquet, JSON Lines or CSV: ``(column, op, value)`` conditions a row
    #: must all meet (op: ``==`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` ``in`` ``not in``; a null
    #: meets none). Parquet skips the row groups whose statistics rule every row out.
    input_filter: tuple[tuple[str, str, Any], ...] = ()
    #: The result's column names in JSON Lines and Parquet results (``--output-format``);
    #: default ``key`` and ``value`` (``value_1``, ``value_2``, ... for a list value).
    output_columns: tuple[str, ...] | None = None
    #: Parquet column types by name (pyarrow type names or ``pyarrow.DataType``); a column
    #: without one takes the type of its values (one of bool, int64, float64, string).
    output_types: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, params: Mapping[str, str] | None = None) -> None:
        self.params: dict[str, str] = dict(params or {})

    # -- record mode -------------------------------------------------------------------
    def mapper_init(self) -> None:
        """Called once per record-mode map task before the first line."""

    def mapper(self, key: str | None, line: str) -> Iterable[Pair]:
        raise NotImplementedError(f"{type(self).__name__} must define mapper(key, line)")

    def mapper_final(self) -> Iterable[Pair]:
        """Called once per record-mode map task after the last line; may yield more pairs."""
        return ()

    def combiner(self, key: Any, values: Iterator[Any]) -> Iterable[Pair]:
        raise NotImplementedError  # optional; see has_combiner()

    def reducer(self, key: Any, values: Iterator[Any]) -> Iterable[Pair]:
        raise NotImplementedError(f"{type(self).__name__} must define reducer(key, values)")

    # -- vectorized mode ---------------------------------------------------------------
    def map_table(self, table: Any) -> Iterable[Pair]:
        """Map a ``pyarrow.Table`` of input rows to (key, value) pairs."""
        raise NotImplementedError

    def combine_table(self, table: Any) -> Any:
        """Combine a ``key``/``value`` table of partial results (associative, like combiner).
        Each key on its own: a partition's rows may come in several tables, a key's in one."""
        raise NotImplementedError

    def reduce_table(self, table: Any) -> Any:
        """Final result rows from a ``key``/``value`` table; columns become CSV columns.
        Each key on its own, as ``reducer`` does: a reduce task calls it once for each key
        block of its partition (see docs/contract.md), every row of a key in the same call."""
        raise NotImplementedError

    # -- multi-step jobs ----------------------------------------------------------------
    def steps(self) -> list[Step]:
        """The job's MapReduce rounds; a job that does not override this has one."""
        cls = type(self)
        return [
            Step(
                mapper=self.mapper,
                reducer=self.reducer if cls.has_reducer() else None,
                combiner=self.combiner if cls.has_combiner() else None,
                mapper_init=self.mapper_init,
                mapper_final=self.mapper_final,
                input_format=self.input_format,
            )
        ]

    def declared_input_format(self, input_name: str) -> str | None:
        """The format the job (its first step, else the class) says input ``input_name`` is in."""
        declared = self.checked_steps()[0].input_format or self.input_format
        if isinstance(declared, Mapping):
            return declared.get(input_name)
        return declared

    def table_steps(self) -> list[Step | Join]:
        """The vectorized variant of ``steps()`` (its first step may be a ``Join``), used
        when the job runs vectorized; ``steps()`` stays the reference. Same number of steps."""
        raise NotImplementedError

    def checked_steps(self, vectorized: bool = False) -> list[Step | Join]:
        """``steps()`` (``table_steps()`` when ``vectorized`` and defined), checked: a clear
        error for a malformed multi-step definition."""
        name = type(self).__name__
        steps = reference = self.steps()
        if vectorized and self._defines("table_steps"):
            steps = self.table_steps()
            if isinstance(steps, list | tuple) and len(steps) != len(reference):
                raise TypeError(f"{name}.table_steps() has {len(steps)} steps, steps() {len(reference)}: "
                                f"they must have as many")
        if not isinstance(steps, list | tuple) or not steps:
            raise TypeError(f"{name}.steps() must return a non-empty list of Step objects")
        for n, step in enumerate(steps, 1):
            if isinstance(step, Join):
                if n != 1 or len(steps) == 1:
                    raise TypeError(f"{name}: a Join must be the first step of several (it is "
                                    f"step {n} of {len(steps)})")
                continue
            if not isinstance(step, Step):
                raise TypeError(f"{name}.steps() item {n} is {type(step).__name__}, not a Step")
            if n > 1 and step.input_format is not None:
                raise TypeError(f"{name}: step {n} declares an input_format, but only the first step "
                                f"reads the job's input (later steps read the pairs before them)")
            if step.on_tables or step.combine_table is not None:
                _check_table_step(name, n, step, steps[n - 2] if n > 1 else None)
            elif step.reducer is None and len(steps) > 1:
                raise TypeError(f"{name}: step {n} of {len(steps)} has no reducer; every step "
                                f"of a multi-step job needs one")
        if steps is not reference:  # the driver plans each step's partitions from steps()
            for n, (step, ref) in enumerate(zip(steps, reference, strict=True), 1):
                if step.partitions != getattr(ref, "partitions", None):
                    raise TypeError(f"{name}: step {n} has {step.partitions} partitions in table_steps(), "
                                    f"{getattr(ref, 'partitions', None)} in steps(): they must have as many")
        return list(steps)

    @classmethod
    def is_multi_step(cls) -> bool:
        return cls._defines("steps")

    # -- introspection -----------------------------------------------------------------
    @classmethod
    def _defines(cls, name: str) -> bool:
        return getattr(cls, name) is not getattr(MapReduceJob, name)

    @classmethod
    def has_combiner(cls) -> bool:
        return cls._defines("combiner")

    @classmethod
    def has_reducer(cls) -> bool:
        """A one-step job without a reducer is map-only: its mapper's pairs are the result."""
        return cls._defines("reducer")

    @classmethod
    def has_table_mapper(cls) -> bool:
        """A vectorized mapper (its input format decides whether it can be given tables)."""
        return cls._defines("map_table") and not cls.is_multi_step()

    @classmethod
    def has_table_shuffle(cls) -> bool:
        """map_table returns tables, and the combine and reduce steps work on tables too."""
        return (
            cls.has_table_mapper()
            and cls._defines("combine_table")
            and cls._defines("reduce_table")
        )

    # -- helpers -----------------------------------------------------------------------
    def param(self, name: str, default: str | None = None) -> str:
        """A job parameter, or ``default``; a clear error when required and missing."""
        if name in self.params:
            return self.params[name]
        if default is None:
            raise ValueError(
                f"job {type(self).__name__} needs parameter {name!r} (pass --param {name}=...)"
            )
        return default
