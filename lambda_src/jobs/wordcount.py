"""Word count: the classic MapReduce example, in pure-Python record mode."""

from __future__ import annotations

import re
from collections.abc import Iterator

from lambda_src.job import MapReduceJob

WORD_RE = re.compile(r"[\w']+")


class WordCount(MapReduceJob):
    """Count words (runs of letters, digits, ``_`` and ``'``), case-insensitively."""

    def mapper(self, key: str | None, line: str) -> Iterator[tuple[str, int]]:
        for word in WORD_RE.findall(line.lower()):
            yield word, 1

    def combiner(self, key: str, values: Iterator[int]) -> Iterator[tuple[str, int]]:
        yield key, sum(values)

    def reducer(self, key: str, values: Iterator[int]) -> Iterator[tuple[str, int]]:
        yield key, sum(values)
