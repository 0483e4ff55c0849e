"""Storage backends: confinement, atomic writes, listing semantics, ranged reads (moto S3)."""

from __future__ import annotations

import json
import os
import re

import boto3
import pytest

from lambda_src import storage as st


@pytest.mark.parametrize("part", ["..", "a/../b", "/etc/passwd", "a//b", "./x", "a\\b", "", "x\x00"])
def test_join_refuses_parts_that_escape(part):
    with pytest.raises(ValueError, match=r"escape|empty"):
        st.join("file:///data/root", part)


def test_join_and_normalize():
    assert st.join("s3://b/p/", "x", "y/z") == "s3://b/p/x/y/z"
    assert st.normalize("/tmp/x") == "file:///tmp/x"
    assert st.normalize("file:///tmp/x") == "file:///tmp/x"
    with pytest.raises(ValueError, match="unsupported storage scheme"):
        st.normalize("gs://bucket/x")
    with pytest.raises(ValueError, match="must not name a host"):
        st.normalize("file://evil.example/x")


def test_local_write_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    store = st.LocalStorage()
    uri = st.normalize(str(tmp_path / "d" / "obj"))
    with pytest.raises(RuntimeError), store.open_write(uri) as fh:
        fh.write(b"partial")
        raise RuntimeError("boom")
    assert not store.exists(uri)
    assert list(store.list(st.normalize(str(tmp_path)))) == []
    store.write_bytes(uri, b"whole")
    assert store.read_bytes(uri) == b"whole"
    assert store.read_bytes(uri, 1, 3) == b"ho"
    assert b"".join(store.iter_range(uri, 1, None, chunk_size=1)) == b"hole"


def test_s3_listing_treats_a_prefix_as_a_directory(s3_bucket):
    s3 = boto3.client("s3")
    for key in ("in", "in/a", "in/b/c", "in2/x", "input", "other"):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    store = st.for_uri(f"s3://{s3_bucket}/")
    got = [i.uri for i in store.list(f"s3://{s3_bucket}/in")]
    assert got == [f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/in/a", f"s3://{s3_bucket}/in/b/c"]
    assert [i.uri for i in store.list(f"s3://{s3_bucket}/in/")] == got[1:]


def test_s3_listing_reads_every_page(s3_bucket):
    s3 = boto3.client("s3")
    for i in range(1105):
        s3.put_object(Bucket=s3_bucket, Key=f"many/{i:05d}", Body=b"x")
    store = st.for_uri(f"s3://{s3_bucket}")
    assert len(list(store.list(f"s3://{s3_bucket}/many"))) == 1105
    assert store.delete_prefix(f"s3://{s3_bucket}/many") == 1105
    assert list(store.list(f"s3://{s3_bucket}/many")) == []


def test_s3_ranged_reads_and_atomic_writes(s3_bucket):
    store = st.for_uri(f"s3://{s3_bucket}")
    uri = f"s3://{s3_bucket}/obj"
    with store.open_write(uri) as fh:
        fh.write(b"0123456789")
    assert store.size(uri) == 10
    assert store.read_bytes(uri, 2, 5) == b"234"
    assert store.read_bytes(uri, 8) == b"89"
    assert store.read_bytes(uri, 10) == b""
    assert b"".join(store.iter_range(uri, 3, 9, chunk_size=2)) == b"345678"
    with pytest.raises(st.NotFound, match="no such object"):
        store.size(f"s3://{s3_bucket}/missing")
    with pytest.raises(RuntimeError), store.open_write(f"s3://{s3_bucket}/never") as fh:
        fh.write(b"x")
        raise RuntimeError("boom")
    assert not store.exists(f"s3://{s3_bucket}/never")


@pytest.mark.parametrize("content", [b"", b"x", bytes(range(256)) * 1000])
def test_buffers_round_trip_locally_and_on_s3(tmp_path, s3_bucket, content):
    """``write_buffer`` takes any bytes-like object; ``read_buffer`` gives the object back
    (mapped for a local file, without a copy), and names a missing one."""
    import pyarrow as pa

    for uri in (f"file://{tmp_path}/run.arrow", f"s3://{s3_bucket}/run.arrow"):
        store = st.for_uri(uri)
        store.write_buffer(uri, pa.py_buffer(content))
        got = store.read_buffer(uri)
        assert bytes(got) == content
        assert store.read_bytes(uri) == content
        with pytest.raises(st.NotFound):
            store.read_buffer(uri + ".missing")
    mapped = st.for_uri(f"file://{tmp_path}/run.arrow").read_buffer(f"file://{tmp_path}/run.arrow")
    assert not isinstance(mapped, bytes)  # not read into a copy


def test_a_local_listing_of_a_directory_removed_meanwhile_is_empty(tmp_path, monkeypatch):
    """A concurrent cleanup (two coordinator steps committing at once) may remove a job's
    directory between a listing's look at it and its walk: nothing is listed, nothing raised."""
    (tmp_path / "map").mkdir()
    (tmp_path / "map" / "run").write_bytes(b"x")
    store = st.for_uri(str(tmp_path))
    real_stat = os.stat

    def removed(path, *args, **kwargs):
        if os.fspath(path) == str(tmp_path / "map"):
            raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os.path, "isdir", lambda p: True)  # it was there when looked at
    monkeypatch.setattr(os, "stat", removed)
    assert list(store.list(str(tmp_path / "map"))) == []
    assert store.delete_prefix(str(tmp_path / "map")) == 0


SIZES = [0, 1, 6, 7, 8, 20, 49, 50]


@pytest.mark.parametrize("kind", ["bytes", "memoryview", "arrow", "ints"])
@pytest.mark.parametrize("size", SIZES)
def test_local_files_are_written_whole_in_capped_system_calls(tmp_path, monkeypatch, kind, size):
    monkeypatch.setattr(st, "WRITE_CHUNK", 7)  # many chunks, and their edges, in a small file
    payload = bytes(range(size))
    if kind == "memoryview":
        data = memoryview(b"..." + payload)[3:]
    elif kind == "arrow":
        import pyarrow as pa

        data = pa.py_buffer(b"." + payload)[1:]
    elif kind == "ints":  # a view of 4-byte items: written as its bytes
        import array

        ints = array.array("i", bytes(range(size - size % 4)))
        data, payload = memoryview(ints), ints.tobytes()
    else:
        data = payload
    store = st.LocalStorage()
    store.write_buffer(f"file://{tmp_path}/buffer", data)
    assert (tmp_path / "buffer").read_bytes() == payload
    assert store.write_new(f"file://{tmp_path}/new", data)
    assert (tmp_path / "new").read_bytes() == payload
    with store.open_write(f"file://{tmp_path}/stream") as fh:
        fh.write(b"ab")
        fh.write(data)
        fh.flush()
        # the file under the buffer hands the kernel no more than WRITE_CHUNK bytes a call
        assert fh.raw.write(payload) == min(len(payload), 7)
    assert (tmp_path / "stream").read_bytes() == b"ab" + payload + payload[:7]
    with st.spool_file("test-", str(tmp_path)) as fh:
        fh.write(data)
        fh.flush()
        assert fh.raw.write(payload) == min(len(payload), 7)
        fh.seek(0)
        assert fh.read() == payload + payload[:7]
    assert not list(tmp_path.glob("test-*"))  # nameless, gone once closed


def test_a_large_write_is_split_at_the_real_chunk_size(tmp_path):
    data = os.urandom(2 * st.WRITE_CHUNK + 3)
    with st.LocalStorage().open_write(f"file://{tmp_path}/big") as fh:
        assert fh.raw.write(data) == st.WRITE_CHUNK
        fh.write(memoryview(data)[st.WRITE_CHUNK:])
    assert (tmp_path / "big").read_bytes() == data


def test_the_nodejs_plane_writes_local_files_whole_in_capped_calls(tmp_path, node):
    import subprocess
    from pathlib import Path

    module = Path(st.__file__).parent / "nodejs" / "storage.mjs"
    data = os.urandom(2 * st.WRITE_CHUNK + 3)
    (tmp_path / "in").write_bytes(data)
    # every write system call is counted: the most bytes one of them was given is printed
    script = (f"import fs from 'node:fs'; import {{ syncBuiltinESMExports }} from 'node:module';"
              f"let most = 0; const write = fs.writeSync;"
              f"fs.writeSync = (fd, buf, off, len) => {{ most = Math.max(most, len ?? buf.length - (off ?? 0));"
              f"  return write(fd, buf, off, len); }};"
              f"syncBuiltinESMExports();"
              f"const s = await import({json.dumps(module.as_uri())});"
              f"const fd = fs.openSync({json.dumps(str(tmp_path / 'out'))}, 'wx');"
              f"s.writeChunked(fd, fs.readFileSync({json.dumps(str(tmp_path / 'in'))})); fs.closeSync(fd);"
              f"console.log(JSON.stringify([s.WRITE_CHUNK, most]));")
    out = subprocess.run([node, "--input-type=module", "-e", script], check=True, timeout=60,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == [st.WRITE_CHUNK, st.WRITE_CHUNK]
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.parametrize("how", ["write_bytes", "write_new", "open_write"])
def test_a_local_write_the_kernel_refuses_names_the_file_and_leaves_nothing(tmp_path, how):
    import resource

    store, uri = st.LocalStorage(), f"file://{tmp_path}/out/part"
    data = os.urandom(3 * st.WRITE_CHUNK)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # the kernel refuses a file beyond 1.5 chunks (EFBIG; Python ignores SIGXFSZ): a real
    # failure partway, as a full disk would give
    resource.setrlimit(resource.RLIMIT_FSIZE, (st.WRITE_CHUNK * 3 // 2, hard))
    try:
        with pytest.raises(OSError, match=f"File too large: '{re.escape(str(tmp_path))}/out/\\.tmp-"):
            if how == "write_bytes":
                store.write_bytes(uri, data)
            elif how == "write_new":
                store.write_new(uri, data)
            else:
                with store.open_write(uri) as fh:
                    for start in range(0, len(data), 1000):
                        fh.write(data[start:start + 1000])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert os.listdir(tmp_path / "out") == []
