"""Word count: the classic MapReduce example, in pure-Python record mode."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from lambda_src.job import MapReduceJob

WORD_RE = re.compile(r"[\w']+")


class WordCount(MapReduceJob):
    """Count words (runs of letters, digits, ``_`` and ``'``), case-insensitively."""

    # In-mapper combining: each map task counts into one Counter (C-speed updates) and
    # emits every word once, in mapper_final; the combiner and reducer still sum.
    def mapper_init(self) -> None:
        self.counts: Counter[str] = Counter()

    def mapper(self, key: str | None, line: str) -> tuple[()]:
        self.counts.update(WORD_RE.findall(line.lower()))
        return ()

    def mapper_final(self) -> Iterator[tuple[str, int]]:
        yield from self.counts.items()

    def combiner(self, key: str, values: Iterator[int]) -> Iterator[tuple[str, int]]:
        yield key, sum(values)

    def reducer(self, key: str, values: Iterator[int]) -> Iterator[tuple[str, int]]:
        yield key, sum(values)
