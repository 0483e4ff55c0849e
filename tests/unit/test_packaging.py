"""Deterministic, versioned zips and safe extraction."""

from __future__ import annotations

import io
import os
import stat
import zipfile

import pytest

from airflow_provider_lambdamr.engine import packaging


def test_builds_are_byte_identical_and_hash_named():
    a, mods = packaging.build_zip_bytes("lambda_src.jobs.wordcount:WordCount")
    b, _ = packaging.build_zip_bytes("lambda_src.jobs.wordcount:WordCount")
    assert a == b
    assert mods == ("lambda_src",)
    pkg = packaging.build("lambda_src.jobs.wordcount:WordCount")
    assert pkg.version == pkg.sha256[:16] and os.path.basename(pkg.path) == f"lambdamr-{pkg.version}.zip"
    with zipfile.ZipFile(pkg.path) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert "lambda_src/mapper.py" in names and "lambda_src/reducer.py" in names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert {i.date_time for i in zf.infolist()} == {packaging.FIXED_TIME}


def test_user_package_is_included_and_changes_the_version(tmp_path, monkeypatch):
    pkg_dir = tmp_path / "myjobs"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("")
    (pkg_dir / "count.py").write_text("from lambda_src.job import MapReduceJob\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    one = packaging.build("myjobs.count:Count")
    assert one.modules == ("lambda_src", "myjobs")
    with zipfile.ZipFile(one.path) as zf:
        assert "myjobs/count.py" in zf.namelist()
    (pkg_dir / "count.py").write_text("from lambda_src.job import MapReduceJob\n# changed\n")
    two = packaging.build("myjobs.count:Count")
    assert two.sha256 != one.sha256


def test_unknown_module_is_a_clear_error():
    with pytest.raises(packaging.PackagingError, match="cannot find module 'no_such_pkg_xyz'"):
        packaging.build("no_such_pkg_xyz.mod:Job")


@pytest.mark.parametrize("name", ["../evil.py", "a/../../evil.py", "/abs/evil.py"])
def test_extraction_refuses_zip_slip(tmp_path, name):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("ok.py", "x = 1\n")
        zf.writestr(name, "boom\n")
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(packaging.PackagingError, match="would escape"):
        packaging.safe_extract(str(bad), target)
    assert not (tmp_path / "evil.py").exists()
    assert list(target.iterdir()) == []


def test_extraction_refuses_symlinks(tmp_path):
    bad = tmp_path / "link.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(packaging.PackagingError, match="symbolic link"):
        packaging.safe_extract(str(bad), tmp_path)


def test_extracted_once_per_version():
    pkg = packaging.build("lambda_src.jobs.wordcount:WordCount")
    first = packaging.extracted(pkg)
    marker = first / ".complete"
    mtime = marker.stat().st_mtime_ns
    assert packaging.extracted(pkg) == first
    assert marker.stat().st_mtime_ns == mtime
    assert (first / "lambda_src" / "mapper.py").is_file()


def test_the_layer_holds_the_wheel_under_python_without_headers_sources_or_tests(tmp_path, monkeypatch):
    from tests.helpers import fake_pyarrow_wheel

    monkeypatch.setenv("LAMBDAMR_WHEEL_DIR", str(tmp_path))
    fake_pyarrow_wheel(tmp_path, python="3.12", platform="manylinux_2_28_aarch64")  # another machine's
    fake_pyarrow_wheel(tmp_path, python="3.11", platform="manylinux_2_28_x86_64")  # another Python's
    fake_pyarrow_wheel(tmp_path, python="3.12", platform="manylinux_2_28_x86_64")
    target = packaging.LayerTarget.for_runtime("x86_64", "python3.12")
    layer = packaging.build_layer(target, version="99.0.0")
    with zipfile.ZipFile(layer.path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert sorted(infos) == ["python/pyarrow-99.0.0.dist-info/METADATA", "python/pyarrow/__init__.py",
                                 "python/pyarrow/libarrow.so.9900"]
        assert zf.read("python/pyarrow/__init__.py") == b"__version__ = '99.0.0'\n"
        assert stat.S_IMODE(infos["python/pyarrow/libarrow.so.9900"].external_attr >> 16) == 0o755
        assert layer.unzipped_size == sum(i.file_size for i in infos.values())
    assert layer.description == f"lambdamr pyarrow 99.0.0 python3.12 x86_64 sha256:{layer.sha256[:16]}"
    again = packaging.build_layer(target, version="99.0.0")
    assert again == layer


def test_layer_targets_follow_each_runtimes_glibc():
    old = packaging.LayerTarget.for_runtime("x86_64", "python3.11").platforms()
    new = packaging.LayerTarget.for_runtime("arm64", "python3.12").platforms()
    assert "manylinux_2_28_x86_64" not in old and "manylinux2014_x86_64" in old  # Amazon Linux 2: glibc 2.26
    assert "manylinux_2_26_x86_64" in old
    assert "manylinux_2_28_aarch64" in new and "manylinux_2_34_aarch64" in new
    assert "manylinux_2_35_aarch64" not in new  # Amazon Linux 2023: glibc 2.34


def test_a_layer_is_cached_by_the_wheels_content_not_its_name(tmp_path, monkeypatch):
    from tests.helpers import fake_pyarrow_wheel

    monkeypatch.setenv("LAMBDAMR_WHEEL_DIR", str(tmp_path))
    target = packaging.LayerTarget.for_runtime("arm64", "python3.13")
    wheel = fake_pyarrow_wheel(tmp_path, version="98.0.0", python="3.13", platform="manylinux_2_28_aarch64")
    first = packaging.build_layer(target, version="98.0.0")
    os.remove(wheel)
    with zipfile.ZipFile(wheel, "w") as zf:  # another file of the same name
        zf.writestr("pyarrow/__init__.py", "# another build\n")
    second = packaging.build_layer(target, version="98.0.0")
    assert second.sha256 != first.sha256
    with zipfile.ZipFile(second.path) as zf:
        assert zf.namelist() == ["python/pyarrow/__init__.py"]


def test_a_zip_is_deflated_once_per_content_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBDAMR_CACHE_DIR", str(tmp_path / "cache"))
    first, _ = packaging.build_zip_bytes("lambda_src.jobs.wordcount:WordCount")
    deflate = packaging._zip_bytes
    with monkeypatch.context() as m:  # the same content again: read from the cache, not deflated
        m.setattr(packaging, "_zip_bytes", lambda entries: pytest.fail("deflated the same content twice"))
        assert packaging.build_zip_bytes("lambda_src.jobs.wordcount:WordCount")[0] == first
    (cached,) = (tmp_path / "cache" / "zips" / "content").glob("*.zip")
    built = []
    monkeypatch.setattr(packaging, "_zip_bytes", lambda entries: built.append(1) or deflate(entries))
    entries = [(i.filename, zipfile.ZipFile(io.BytesIO(first)).read(i), 0o644)
               for i in zipfile.ZipFile(io.BytesIO(first)).infolist()]
    altered = packaging._zip_bytes([(name, body + b"# not the source\n" if name.endswith("mapper.py") else body, mode)
                                    for name, body, mode in entries])  # the same names, other bytes
    for damage in (first[: len(first) // 2], b"not a zip", packaging._zip_bytes([("other.py", b"x", 0o644)]), altered):
        cached.write_bytes(damage)
        assert packaging.build_zip_bytes("lambda_src.jobs.wordcount:WordCount")[0] == first
    assert len(built) == 6  # the foreign and altered zips above, and one rebuild per damaged cache entry
    cached.with_suffix(".sha256").unlink()  # a zip whose hash was never written is not trusted either
    assert packaging.build_zip_bytes("lambda_src.jobs.wordcount:WordCount")[0] == first and len(built) == 7


def test_a_cached_zip_whose_compressed_bytes_are_damaged_is_rebuilt_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBDAMR_CACHE_DIR", str(tmp_path / "cache"))
    first, _ = packaging.build_zip_bytes("lambda_src.jobs.wordcount:WordCount")
    (cached,) = (tmp_path / "cache" / "zips" / "content").glob("*.zip")
    with zipfile.ZipFile(cached) as zf:  # the middle of the first entry's deflated bytes
        info = zf.infolist()[0]
        body = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        middle = body + info.compress_size // 2
    damaged = bytearray(first)
    damaged[middle] ^= 0xFF  # the directory (names, sizes, CRC-32s) untouched, the size too
    cached.write_bytes(bytes(damaged))
    assert packaging.build_zip_bytes("lambda_src.jobs.wordcount:WordCount")[0] == first
    assert cached.read_bytes() == first  # repaired: the next build reads it


@pytest.mark.parametrize("fails", [False, True])
def test_cached_zips_are_written_in_capped_calls_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch, fails):
    from lambda_src import storage as st

    monkeypatch.setattr(st, "WRITE_CHUNK", 7)
    sizes = []
    write = st.ChunkedFileIO.write

    def counted(self, data):  # the bytes each write hands the kernel; the fourth fails when asked
        if fails and len(sizes) == 3:
            raise OSError(28, "No space left on device")
        sizes.append(write(self, data))
        return sizes[-1]

    monkeypatch.setattr(st.ChunkedFileIO, "write", counted)
    data = os.urandom(50)
    target = tmp_path / "zips" / "lambdamr-x.zip"
    if fails:
        with pytest.raises(OSError, match="No space left"):
            packaging._write_atomic(target, data)
        assert os.listdir(target.parent) == []  # no temporary file left behind
    else:
        packaging._write_atomic(target, data)
        assert target.read_bytes() == data
        assert sum(sizes) == len(data)
    assert sizes and max(sizes) <= 7
