"""Round 4 hostile pass: input and output formats, the invocation ledger, coordinator mode.

Each test names the defect it pins: it failed on the code before its fix."""

from __future__ import annotations

import collections
import io

import pyarrow.csv as pacsv

from tests.helpers import read_rows, run_job


def test_a_quoted_csv_field_keeps_its_crlf(tmp_path, fixture_jobs_path):
    """Defect: a quoted CSV field holding ``\\r\\n`` was read as ``\\n`` (the text reader drops
    the ``\\r`` of a line ending; the CSV reader re-joined lines with ``\\n``), so a key changed.
    The reference is pyarrow's CSV reader (RFC 4180), which keeps the field's bytes."""
    data = b'region,amount\r\n"no\r\nrth",1\r\n"a\rb",2\r\n"x\ny",3\nsouth,4\r\n"no\r\nrth",5\n'
    path = tmp_path / "in" / "rows.csv"
    path.parent.mkdir()
    path.write_bytes(data)
    expected = collections.Counter(pacsv.read_csv(io.BytesIO(data)).column("region").to_pylist())
    assert expected["no\r\nrth"] == 2  # the reference reads the field as written
    run_job(job="userjobs.rows:RegionRows", inputs={"": [str(path)]}, output=str(tmp_path / "out"),
            input_format="csv")
    assert {row[0]: int(row[1]) for row in read_rows(str(tmp_path / "out"))} == expected
