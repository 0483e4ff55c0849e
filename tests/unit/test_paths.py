"""Paths and URIs mean what they say: one canonical form, refusals of overlapping locations,
symbolic links followed with cycle protection (local), and the same for S3 keys (moto)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import unicodedata
from urllib.parse import quote

import boto3
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as hs

from airflow_provider_lambdamr.engine import planner
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import storage as st
from lambda_src import task

SPECIAL = ["a%41.txt", "aA.txt", "h#sh.txt", "q?.txt", "sp ace.txt", "ü.txt", unicodedata.normalize("NFD", "ü.txt"),
           "%2e%2e", "a%2Fb", "~", "x=1;y@z", "+plus+", "\t\n", "\udcff-not-utf8"]

# A file name: anything but "/" and NUL (and lone surrogates other than fsdecode's escapes).
names = hs.text(
    hs.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=30
).filter(lambda n: n not in (".", "..") and not n.startswith(".tmp-") and len(os.fsencode(n)) <= 255)


@settings(max_examples=80, deadline=None)
@given(hs.lists(names, min_size=1, max_size=4, unique=True))
@example(["a%41.txt", "aA.txt"])
@example(SPECIAL)
def test_a_file_on_disk_is_listed_once_under_a_uri_that_maps_back_and_reads_its_bytes(file_names):
    top = tempfile.mkdtemp(prefix="lmr-paths-")
    try:
        root = os.path.join(top, "in %23?")  # the directory's own name needs encoding too
        os.mkdir(root)
        for name in file_names:
            with open(os.path.join(root, name), "wb") as fh:
                fh.write(os.fsencode(name) + b"\n")
        store = st.LocalStorage()
        listed = list(store.list(st.normalize(root)))
        assert sorted(st.local_path(i.uri) for i in listed) == sorted(os.path.join(root, n) for n in file_names)
        for info in listed:
            name = st.basename(info.uri)
            assert store.read_bytes(info.uri) == os.fsencode(name) + b"\n"
            assert st.normalize(info.uri) == info.uri
            assert info.uri.isascii() and "#" not in info.uri and "?" not in info.uri
            assert st.relative_to(info.uri, root) == name
    finally:
        shutil.rmtree(top)


paths = hs.lists(names, min_size=0, max_size=5).map(lambda parts: "/" + "/".join(parts))


@settings(max_examples=300, deadline=None)
@given(paths)
@example("/d/a%41.txt")
@example("/d/h#sh.txt?x")
@example("/a/../b/./c")
def test_normalize_is_idempotent_and_a_plain_path_is_never_decoded(path):
    uri = st.normalize(path)
    assert uri.startswith("file:///")
    assert st.normalize(uri) == uri
    assert st.local_path(uri) == os.path.abspath(path)
    # An RFC 8089 URI of the same path, percent-encoded by someone else, means the same.
    assert st.normalize("file://" + quote(os.fsencode(path))) == uri
    assert st.normalize("file://localhost" + quote(os.fsencode(path))) == uri


@settings(max_examples=300, deadline=None)
@given(paths, hs.lists(names.filter(lambda n: "\\" not in n), min_size=1, max_size=3))  # join refuses backslashes
def test_join_round_trips_through_local_path_relative_to_and_basename(base_path, parts):
    base = st.normalize(base_path)
    uri = st.join(base, *parts)
    assert st.normalize(uri) == uri
    assert st.local_path(uri) == os.path.join(os.path.abspath(base_path), *parts)
    assert st.relative_to(uri, base) == "/".join(parts)
    assert st.basename(uri) == parts[-1]
    s3 = st.join("s3://bucket/pre fix%", *parts)
    assert s3 == "s3://bucket/pre fix%/" + "/".join(parts)  # S3 keys are plain strings
    assert st.relative_to(s3, "s3://bucket/pre fix%/") == "/".join(parts)
    assert st.basename(s3) == parts[-1]


def test_the_canonical_uri_encodes_what_would_be_ambiguous_and_keeps_what_is_readable():
    assert st.normalize("/d/a%41.txt") == "file:///d/a%2541.txt"
    assert st.local_path("file:///d/a%41.txt") == "/d/aA.txt"  # a URI is decoded once
    assert st.normalize("/d/h#sh q?.txt") == "file:///d/h%23sh%20q%3F.txt"
    assert st.normalize("/d/ü") == "file:///d/%C3%BC"
    assert st.normalize("/data/date=2020-01-01/x:y@z") == "file:///data/date=2020-01-01/x:y@z"
    assert st.normalize("file:/x/y") == "file:///x/y"
    assert st.normalize("file:///a/../b") == "file:///b"
    assert st.normalize("//x") == "file:///x"
    assert st.normalize("/") == "file:///"
    assert st.normalize("./a://b") == st.normalize(os.path.join(os.getcwd(), "a:", "b"))
    assert st.join("/", "x", "y z") == "file:///x/y%20z"
    assert st.join("file:///d/o%23x", "_jobs") == "file:///d/o%23x/_jobs"


@pytest.mark.parametrize(("uri", "error"), [
    ("file:///d/h#sh.txt", "query or fragment"),
    ("file:///d/q?.txt", "query or fragment"),
    ("file://", "absolute path"),
    ("file:relative/x", "absolute path"),
    ("file://host/x", "must not name a host"),
    ("gs://b/x", "unsupported storage scheme"),
    ("s3:///key", "no bucket"),
    ("/d/\x00", "NUL"),
])
def test_ambiguous_or_foreign_uris_are_refused(uri, error):
    with pytest.raises(ValueError, match=error):
        st.normalize(uri)


@pytest.mark.parametrize(("uri", "base", "rel"), [
    ("/data/in2/x", "/data/in", None),
    ("/data/in/x", "/data/in", "x"),
    ("/data/in", "/data/in/", ""),
    ("/data/in/../in2", "/data/in", None),
    ("/etc/passwd", "/", "etc/passwd"),
    ("s3://b/in2/x", "s3://b/in", None),
    ("s3://b/in/x", "s3://b/in/", "x"),
    ("s3://b/in/x", "s3://b", "in/x"),
    ("s3://c/in/x", "s3://b/in", None),
    ("s3://b/in", "/b/in", None),
])
def test_relative_to_compares_whole_segments(uri, base, rel):
    assert st.relative_to(uri, base) == rel


@pytest.mark.parametrize(("uri", "inside"), [
    ("file:///j/o%23x/job/map/x%20y", "map/x y"),
    ("/j/o#x/job/status/a", "status/a"),
    ("file:///j/o%23x/job/%2e%2e/etc", None),  # decoded once: "..", which leaves the job directory
    ("file:///j/o%23x/job/map/../../x", None),
    ("file:///j/o%23x/job2/x", None),
    ("file:///j/o%23x/job", None),
    ("s3://b/j/x", None),
    ("gs://b/j/x", None),
])
def test_a_payload_uri_must_lie_below_the_job_directory(uri, inside):
    ev = task.TaskEvent(job_id="job", job_dir=st.normalize("/j/o#x/job"), job=None, task={}, attempt=1)
    if inside is None:
        with pytest.raises(task.EventError, match="must lie under the job directory"):
            ev.inside_job_dir(uri, "x")
    else:
        assert ev.inside_job_dir(uri, "x") == st.join(ev.job_dir, inside)


def test_is_root():
    assert st.is_root("/") and st.is_root("file:///") and st.is_root("/..")
    assert st.is_root("s3://b") and st.is_root("s3://b/")
    assert not st.is_root("/x") and not st.is_root("s3://b/k")


# -- refusals -----------------------------------------------------------------------------

def _spec(inputs, output, **kwargs):
    return JobSpec(job="wordcount", inputs=inputs if isinstance(inputs, dict) else {"": inputs}, output=output,
                   **kwargs)


@pytest.mark.parametrize(("inputs", "output", "kwargs", "error"), [
    (["/data/in"], "/data/in/out", {}, "the output file:///data/in/out lies inside the input file:///data/in"),
    (["/data/in"], "/data/in", {}, "lies inside the output"),
    (["/data/in/x"], "/data/in", {}, "input file:///data/in/x lies inside the output file:///data/in"),
    (["/data/in"], "/data/out", {"job_root": "/data/in/jobs"}, "the job root file:///data/in/jobs lies inside"),
    (["/data/in"], "/data/out", {"job_root": "/data/in"}, "the job root file:///data/in lies inside"),
    (["/data/out/_jobs/j1/x"], "/elsewhere", {"job_root": "/data/out/_jobs", "job_id": "j1"},
     "lies inside the job directory file:///data/out/_jobs/j1"),
    (["/data/in", "file:///data/in/"], "/out", {}, "the input lists file:///data/in twice"),
    (["/data/in", "/data/in/f.txt"], "/out", {}, "lists file:///data/in/f.txt and file:///data/in, which holds it"),
    (["/data/in/f.txt", "/data/x", "/data/in"], "/out", {}, "lists file:///data/in/f.txt and file:///data/in,"),
    ({"uv": ["/a", "/b", "/a/c/d"], "rk": ["/c"]}, "/out", {}, "input 'uv' lists file:///a/c/d and file:///a,"),
    (["s3://b/in", "s3://b/in/k"], "s3://b/out", {}, "lists s3://b/in/k and s3://b/in, which holds it"),
    (["s3://b/in/"], "s3://b/in/out", {}, "the output s3://b/in/out lies inside the input s3://b/in/"),
    (["s3://b/in"], "s3://b", {}, "input s3://b/in lies inside the output s3://b"),
    (["/data/in"], "/", {}, "the output must not be the file system root"),
    (["/data/in"], "file:///", {}, "the output must not be the file system root"),
    (["/data/in"], "/out", {"job_root": "/"}, "the job root must not be the file system root"),
])
def test_overlapping_or_root_locations_are_refused_naming_both(inputs, output, kwargs, error):
    with pytest.raises(ValueError) as err:
        _spec(inputs, output, **kwargs)
    assert error in str(err.value)


def test_locations_that_only_share_a_prefix_and_self_joins_are_accepted():
    spec = _spec({"a": ["/data/in", "/data/in2"], "b": ["/data/in"]}, "/data/input", job_root="/data/i")
    assert spec.inputs == {"a": ["file:///data/in", "file:///data/in2"], "b": ["file:///data/in"]}
    spec = _spec(["s3://in/x", "s3://in/x2"], "s3://out")  # a bucket root is an output of its own
    assert (spec.output, spec.job_root) == ("s3://out", "s3://out/_jobs")


def test_overlap_through_a_symbolic_link_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    with pytest.raises(ValueError, match=r"lists .*/alias/f.txt and .*/data, which holds it"):
        _spec([str(tmp_path / "data"), str(tmp_path / "alias" / "f.txt")], str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"the output .*/alias/out lies inside the input .*/data"):
        _spec([str(tmp_path / "data")], str(tmp_path / "alias" / "out"))


# -- symbolic links in a local input --------------------------------------------------------

def _tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_symlinked_directory_in_an_input_is_followed(tmp_path):
    _tree(tmp_path, {"in/a.txt": "a", "elsewhere/deep/b.txt": "b"})
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "elsewhere")
    found = {st.relative_to(i.uri, str(tmp_path / "in")): st.LocalStorage().read_bytes(i.uri)
             for i in planner.list_input(str(tmp_path / "in"))}
    assert found == {"a.txt": b"a", "linked/deep/b.txt": b"b"}
    # Deleting never follows a link: the target survives.
    assert st.LocalStorage().delete_prefix(st.normalize(str(tmp_path / "in"))) == 1
    assert (tmp_path / "elsewhere" / "deep" / "b.txt").read_text() == "b"


def test_a_symlink_cycle_is_cut_with_a_warning_and_every_file_read_once(tmp_path, caplog):
    _tree(tmp_path, {"in/a.txt": "a", "in/sub/b.txt": "b"})
    (tmp_path / "in" / "sub" / "up").symlink_to(tmp_path / "in")
    (tmp_path / "in" / "self").symlink_to(".")
    with caplog.at_level(logging.WARNING, logger="lambda_src.storage"):
        tasks, summary = planner.plan({"": [str(tmp_path / "in")]}, 1 << 20, 500)
    read = sorted(st.relative_to(s.uri, str(tmp_path / "in")) for t in tasks for s in t.splits)
    assert read == ["a.txt", "sub/b.txt"] and summary["objects"] == 2
    warned = [r.getMessage() for r in caplog.records if "symbolic link cycle" in r.getMessage()]
    assert len(warned) == 2 and any("/in/self" in m for m in warned) and any("/sub/up" in m for m in warned)


def test_one_file_reached_through_two_links_is_read_once(tmp_path):
    _tree(tmp_path, {"in/v1/a.txt": "a", "in/v1/b.txt": "b"})
    (tmp_path / "in" / "latest").symlink_to("v1")
    (tmp_path / "in" / "v1" / "c.txt").symlink_to("a.txt")
    tasks, summary = planner.plan({"": [str(tmp_path / "in")]}, 1 << 20, 500)
    read = sorted(st.relative_to(s.uri, str(tmp_path / "in")) for t in tasks for s in t.splits)
    # "latest" sorts before "v1": the first name in path order is kept.
    assert read == ["latest/a.txt", "latest/b.txt"]
    assert summary["bytes"] == 2


def test_a_link_from_one_input_into_another_is_refused_naming_both(tmp_path):
    _tree(tmp_path, {"in1/a.txt": "a", "in2/b.txt": "b"})
    (tmp_path / "in1" / "other").symlink_to(tmp_path / "in2")
    inputs = {"": [st.normalize(str(tmp_path / "in1")), st.normalize(str(tmp_path / "in2"))]}
    with pytest.raises(planner.InputOverlap, match=r"in2/b.txt \(in .*/in2\) is the same file as .*/in1/other/b.txt "
                                                   r"\(in .*/in1\)"):
        planner.plan(inputs, 1 << 20, 500)


def test_an_unreadable_directory_in_an_input_is_an_error(tmp_path, monkeypatch):
    _tree(tmp_path, {"in/a.txt": "a", "in/locked/b.txt": "b"})
    locked = str(tmp_path / "in" / "locked")
    scandir = os.scandir

    def refusing(path):  # chmod 0 does not stop root, so the refusal is made here
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(st.StorageError, match=r"cannot list file://.*/in/locked: Permission denied"):
        planner.list_input(str(tmp_path / "in"))


# -- S3 keys are plain strings ----------------------------------------------------------------

def test_s3_keys_with_special_characters_are_themselves(s3_bucket):
    keys = ["in/a%41.txt", "in/aA.txt", "in/h#sh.txt", "in/q?.txt", "in/sp ace.txt", "in/ü.txt", "in/+=&.txt"]
    store = st.for_uri(f"s3://{s3_bucket}")
    for key in keys:
        store.write_bytes(f"s3://{s3_bucket}/{key}", key.encode())
    base = f"s3://{s3_bucket}/in"
    listed = planner.list_input(base)
    assert sorted(i.uri for i in listed) == sorted(f"s3://{s3_bucket}/{k}" for k in keys)
    for info in listed:
        assert store.read_bytes(info.uri) == st.split_s3(info.uri)[1].encode()
        assert "in/" + st.relative_to(info.uri, base) == st.split_s3(info.uri)[1]
        assert st.normalize(info.uri) == info.uri
    assert sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]) == sorted(keys)
