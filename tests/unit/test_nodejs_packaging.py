"""A JavaScript job's code package: the Node.js handlers and the job's package (with its
node_modules) under job/, deterministic; the job imports its dependencies from it when it runs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine import packaging
from airflow_provider_lambdamr.engine.spec import JobSpec, resolve_job_ref

JOB = """\
import shout from "shout";
import { sep } from "./lib/sep.mjs";

export function* mapper(key, line) {
  for (const word of line.split(sep)) if (word) yield [shout(word), 1];
}

export function* reducer(key, values) {
  let n = 0;
  for (const v of values) n += v;
  yield [key, n];
}
"""


def _package(root: Path) -> Path:
    """A job's npm package: package.json, a local module, a dependency in node_modules, and clutter."""
    (root / "jobs" / "lib").mkdir(parents=True)
    (root / "package.json").write_text('{"name": "myjobs", "private": true}')
    (root / "jobs" / "words.mjs").write_text(JOB)
    (root / "jobs" / "lib" / "sep.mjs").write_text('export const sep = " ";\n')
    dep = root / "node_modules" / "shout"
    dep.mkdir(parents=True)
    (dep / "package.json").write_text('{"name": "shout", "main": "index.js"}')
    (dep / "index.js").write_text("module.exports = (s) => s.toUpperCase() + '!';\n")
    (root / "node_modules" / ".bin").mkdir()
    (root / "node_modules" / ".bin" / "tool").write_text("#!/bin/sh\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root / "jobs" / "words.mjs"


def test_the_zip_holds_the_handlers_and_the_jobs_package_and_is_deterministic(tmp_path):
    module = _package(tmp_path / "pkg")
    first = packaging.build(str(module))
    assert first.language == "nodejs"
    assert packaging.build(str(module)).sha256 == first.sha256
    names = zipfile.ZipFile(first.path).namelist()
    assert names == sorted(names)
    assert {n for n in names if n.startswith("job/")} == {
        "job/package.json", "job/jobs/words.mjs", "job/jobs/lib/sep.mjs", "job/node_modules/shout/package.json",
        "job/node_modules/shout/index.js"}
    assert {"lambda_src/nodejs/mapper.mjs", "lambda_src/nodejs/reducer.mjs", "lambda_src/nodejs/codec.mjs"} <= set(names)
    assert not [n for n in names if n.endswith(".py") or "/jobs/wordcount" in n]
    assert packaging.event_ref(str(module)) == "job/jobs/words.mjs"
    (tmp_path / "pkg" / "jobs" / "lib" / "sep.mjs").write_text('export const sep = ",";\n')
    assert packaging.build(str(module)).sha256 != first.sha256, "other code, another version"


def test_a_module_without_a_package_json_is_packaged_alone(tmp_path):
    (tmp_path / "other.mjs").write_text("export const unrelated = 1;\n")
    module = tmp_path / "solo.mjs"
    module.write_text(JOB)
    names = zipfile.ZipFile(packaging.build(str(module)).path).namelist()
    assert [n for n in names if n.startswith("job/")] == ["job/solo.mjs"]
    assert packaging.event_ref(str(module)) == "job/solo.mjs"


def test_a_javascript_job_is_named_by_its_path(tmp_path):
    module = _package(tmp_path / "pkg")
    assert resolve_job_ref(str(module)) == str(module)
    assert packaging.language_of(resolve_job_ref("wordcount-js")) == "nodejs"
    assert packaging.language_of(resolve_job_ref("wordcount")) == "python"
    with pytest.raises(ValueError, match=r"JavaScript job module .*missing.mjs does not exist"):
        resolve_job_ref(str(tmp_path / "missing.mjs"))
    spec = JobSpec(job=str(module), inputs={"": [str(tmp_path / "pkg")]}, output=str(tmp_path / "out"))
    assert spec.job_id.startswith("words-mjs-")


def test_the_job_imports_its_dependencies_from_the_package_when_it_runs(tmp_path, node):
    from tests.helpers import read_counts, run_job

    module = _package(tmp_path / "pkg")
    (tmp_path / "in.txt").write_text("a b a\n")
    run_job(job=str(module), inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"))
    assert read_counts(str(tmp_path / "out")) == {"A!": 2, "B!": 1}


def test_a_python_jobs_zip_holds_no_nodejs_handlers():
    names = zipfile.ZipFile(packaging.build("lambda_src.jobs.wordcount:WordCount").path).namelist()
    assert "lambda_src/mapper.py" in names
    assert not [n for n in names if n.startswith("lambda_src/nodejs/")]


def test_a_commonjs_job_runs_too(tmp_path, node):
    from tests.helpers import read_counts, run_job

    module = tmp_path / "job" / "count.cjs"
    module.parent.mkdir()
    module.write_text('exports.mapper = function* (key, line) { for (const w of line.split(" ")) if (w) yield [w, 1]; };\n'
                      "exports.reducer = function* (key, values) { let n = 0; for (const v of values) n += v; "
                      "yield [key, n]; };\n")
    (tmp_path / "in.txt").write_text("x y x\n")
    run_job(job=str(module), inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"))
    assert read_counts(str(tmp_path / "out")) == {"x": 2, "y": 1}
