"""Object storage for handlers and the driver: ``file://`` (and plain paths) and ``s3://``.

Only the standard library and boto3 are used, so this module runs unchanged inside an AWS
Lambda function. Every write is atomic: a reader sees the whole object or none of it (a
rename on a local file system, a single PUT or completed multipart upload on S3), so a
retried or duplicated task can never leave a half-written output behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import re
import stat
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TypeVar
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit

READ_CHUNK = 8 * 1024 * 1024

log = logging.getLogger(__name__)


class StorageError(Exception):
    """A storage operation failed; the message names the URI."""


class NotFound(StorageError):
    """The object does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    #: What changes when the object's content may have: the ETag on S3, the modification
    #: time in nanoseconds for a local file ("" when unknown).
    version: str = ""
    #: What the object is, whatever name reached it: ``(st_dev, st_ino)`` of a local file
    #: (two links to one file share it); ``None`` on S3, where a key is the object.
    identity: tuple[int, int] | None = field(default=None, compare=False)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


# Local URIs
# ----------
# This module alone converts between local paths and URIs. The canonical form of a local
# location is ``file://`` + its absolute path, percent-encoded: every byte of the path
# (``os.fsencode``, so names that are not UTF-8 survive) except the unreserved characters
# and RFC 3986's ``pchar`` delimiters is written as ``%XX``. So ``%``, ``#``, ``?``,
# spaces, control and non-ASCII characters are always encoded and a canonical URI is
# unambiguous: ``/d/a%41.txt`` is ``file:///d/a%2541.txt``, never ``/d/aA.txt``. That
# canonical URI is what messages, manifests and ``_SUCCESS`` show; ``local_path`` decodes
# it exactly once.
#
# Input forms: a plain path is a path (``~`` expanded, made absolute against this
# process's working directory once) and is never decoded; a ``file:`` URI is an RFC 8089
# URI, decoded once, and must name an absolute path on no host other than ``localhost``.
_PATH_SAFE = "/!$&'()*+,;=:@~"  # kept as is, with the unreserved characters (RFC 3986 pchar)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def from_path(path: str) -> str:
    """The canonical URI of a local path (relative paths against the working directory)."""
    if not isinstance(path, str) or not path:
        raise ValueError("empty local path")
    if "\x00" in path:
        raise ValueError(f"local path {path!r} contains a NUL character")
    path = os.path.abspath(path)
    path = "/" + path.lstrip("/")  # POSIX may keep a leading "//"; Linux reads it as "/"
    return "file://" + quote_from_bytes(os.fsencode(path), safe=_PATH_SAFE)


def _file_uri_path(uri: str) -> str:
    """The path an RFC 8089 ``file:`` URI names, decoded once."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file URI must not name a host: {uri!r}")
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise ValueError(
            f"file URI {uri!r} has a query or fragment: write '?' as %3F and '#' as %23, "
            f"or give the plain path"
        )
    if not parts.path.startswith("/"):
        raise ValueError(
            f"file URI {uri!r} must name an absolute path (file:///abs/path); "
            f"give a relative path without 'file:'"
        )
    return os.fsdecode(unquote_to_bytes(parts.path))


def normalize(uri: str) -> str:
    """Return a canonical URI: ``s3://bucket/key`` or ``file:///absolute/path``.

    Idempotent: a canonical URI normalizes to itself. S3 keys are kept as given (an S3
    key is the plain string after ``s3://bucket/``).
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError("empty storage URI")
    if is_s3(uri):
        split_s3(uri)  # validates the bucket
        return uri
    if uri.startswith("file:"):
        return from_path(_file_uri_path(uri))
    if _SCHEME_RE.match(uri):
        raise ValueError(f"unsupported storage scheme in {uri!r} (use s3:// or file://)")
    return from_path(os.path.expanduser(uri))


def local_path(uri: str) -> str:
    """The file system path of a ``file://`` URI (or plain path)."""
    uri = normalize(uri)
    if is_s3(uri):
        raise ValueError(f"not a local URI: {uri!r}")
    return _decoded(uri)


def _decoded(canonical: str) -> str:
    """The path of a canonical local URI (``normalize`` made it)."""
    return os.fsdecode(unquote_to_bytes(canonical[len("file://") :]))


def resolved(uri: str) -> str:
    """The canonical URI with symbolic links resolved (local), or the URI itself (S3)."""
    uri = normalize(uri)
    return uri if is_s3(uri) else from_path(os.path.realpath(local_path(uri)))


def is_root(uri: str) -> bool:
    """Whether ``uri`` is the file system root or a bucket root."""
    uri = normalize(uri)
    if is_s3(uri):
        return not split_s3(uri)[1].strip("/")
    return local_path(uri) == "/"


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket: {uri!r}")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join relative names onto a base URI, refusing parts that would escape it.

    A part is a name, not a URI fragment: on a local base it is encoded like any path.
    It may contain ``/`` separators, but no empty, ``.`` or ``..`` segment, no leading
    ``/`` and no backslash, so a job id or task key read from a payload can never point
    outside the root it is joined to.
    """
    for part in parts:
        if not isinstance(part, str) or not part:
            raise ValueError(f"empty path component joined to {base!r}")
        if part.startswith("/") or "\\" in part or "\x00" in part:
            raise ValueError(f"path component {part!r} would escape {base!r}")
        for segment in part.split("/"):
            if segment in ("", ".", ".."):
                raise ValueError(f"path component {part!r} would escape {base!r}")
    if is_s3(base):
        return "/".join([base.rstrip("/"), *parts])
    return from_path(os.path.join(local_path(base), *parts))


def relative_to(uri: str, base: str) -> str | None:
    """The ``/``-separated names of ``uri`` below ``base``: ``""`` when they are the same
    location, ``None`` when ``uri`` is not ``base`` nor below it. Compared segment by
    segment on canonical forms, so ``/data/in2`` is not below ``/data/in``."""
    uri, base = normalize(uri), normalize(base)
    if is_s3(uri) != is_s3(base):
        return None
    if is_s3(uri):
        (bucket, key), (base_bucket, base_key) = split_s3(uri), split_s3(base)
        if bucket != base_bucket:
            return None
        key, base_key = key.rstrip("/"), base_key.rstrip("/")
    else:
        key, base_key = _decoded(uri).lstrip("/"), _decoded(base).lstrip("/")
    if not base_key:
        return key
    if key == base_key:
        return ""
    return key[len(base_key) + 1 :] if key.startswith(base_key + "/") else None


def basename(uri: str) -> str:
    """The last name of ``uri`` (decoded: a name, not a URI fragment)."""
    if is_s3(uri):
        return posixpath.basename(split_s3(uri)[1].rstrip("/"))
    return os.path.basename(local_path(uri))


T = TypeVar("T")
R = TypeVar("R")


def per_object(fn: Callable[[T], R], items: Sequence[T], uri_of: Callable[[T], str]) -> list[R]:
    """``[fn(item) for item in items]``, where each call is a request about the object
    ``uri_of(item)``: several at once when more than one is on S3, so many small objects do
    not wait for each other's round trips."""
    if len(items) > 1 and any(is_s3(uri_of(item)) for item in items):
        from concurrent.futures import ThreadPoolExecutor  # only here: a task's start-up spares it

        with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
            return list(pool.map(fn, items))
    return [fn(item) for item in items]


class Storage:
    """The operations the engine needs from an object store."""

    def size(self, uri: str) -> int:
        raise NotImplementedError

    def stat(self, uri: str) -> ObjectInfo:
        """Size and version of one object; NotFound when there is none."""
        raise NotImplementedError

    def write_new(self, uri: str, data: bytes) -> bool:
        """Create ``uri`` only if no object is there (atomically); False when one already is."""
        raise NotImplementedError

    def is_dir(self, uri: str) -> bool:
        """Whether ``uri`` names a directory (a prefix with objects below it, on S3)."""
        return any(True for _ in self.list(uri.rstrip("/") + "/"))

    def exists(self, uri: str) -> bool:
        try:
            self.size(uri)
        except NotFound:
            return False
        return True

    def read_bytes(self, uri: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of an object (``end=None``: to the end)."""
        raise NotImplementedError

    def iter_range(
        self, uri: str, start: int = 0, end: int | None = None, chunk_size: int = READ_CHUNK
    ) -> Iterator[bytes]:
        """Stream bytes ``[start, end)`` in chunks of at most ``chunk_size``."""
        raise NotImplementedError

    def open_read(self, uri: str) -> IO[bytes]:
        """A streaming binary reader over the whole object."""
        raise NotImplementedError

    def write_bytes(self, uri: str, data: bytes) -> None:
        raise NotImplementedError

    def read_buffer(self, uri: str) -> bytes | memoryview:
        """The whole object as a bytes-like object: ``read_bytes``, unless the store can give
        it without a copy (a local file is mapped: see ``LocalStorage``)."""
        return self.read_bytes(uri)

    def write_buffer(self, uri: str, data: bytes | memoryview) -> None:
        """``write_bytes`` of any bytes-like object (an Arrow buffer), copied only if the store
        needs ``bytes``."""
        self.write_bytes(uri, bytes(data))

    @contextlib.contextmanager
    def open_write(self, uri: str) -> Iterator[IO[bytes]]:
        """A binary writer whose object appears atomically when the block exits cleanly."""
        raise NotImplementedError
        yield  # pragma: no cover

    def list(self, uri: str, follow_links: bool = False) -> Iterator[ObjectInfo]:
        """Every object at ``uri`` or below it (as a directory), in key order, all pages.

        ``follow_links``: a local store also lists the files below symbolic links to
        directories (for reading input; deleting never follows a link). Object stores
        have no links and ignore it.
        """
        raise NotImplementedError
    def list_children(self, uri: str) -> Iterator[ObjectInfo]:
        """The objects directly in ``uri`` (as a directory), not those in its subdirectories."""
        for info in self.list(uri):
            if "/" not in (relative_to(info.uri, uri) or "/"):
                yield info

    def delete(self, uris: list[str]) -> None:
        raise NotImplementedError

    def delete_prefix(self, uri: str) -> int:
        """Delete every object below ``uri`` (as a directory); return how many."""
        found = [info.uri for info in self.list(uri)]
        self.delete(found)
        self.remove_empty_dirs(uri)
        return len(found)

    def remove_empty_dirs(self, uri: str) -> None:
        """Remove the directories left empty below ``uri`` (object stores have none)."""


def _local_info(path: str, info: os.stat_result) -> ObjectInfo:
    return ObjectInfo(from_path(path), info.st_size, str(info.st_mtime_ns), (info.st_dev, info.st_ino))


#: The most bytes one ``write`` system call hands the kernel for a local file. A larger write
#: lets Linux (6.x, ext4 and other filesystems with large folios) take 2 MiB page-cache folios
#: for it; on this project's VM (Firecracker, which takes memory back from free pages) a
#: 7 MiB write then took 20-80 ms instead of 2 ms, in 1 MiB writes 2 ms every time.
WRITE_CHUNK = 1 << 20


class ChunkedFileIO(io.FileIO):
    """A file whose ``write`` hands the kernel at most ``WRITE_CHUNK`` bytes at a time (a
    partial write, as raw files may do: ``io.BufferedWriter`` writes the rest). A failed
    write (no space left, say) names the file, when it was opened by name."""

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data)
        if view.nbytes > WRITE_CHUNK:
            view = view.cast("B")[:WRITE_CHUNK]
        try:
            return super().write(view)
        except OSError as err:
            if err.filename is None and isinstance(self.name, str):
                err.filename = self.name
            raise


def open_chunked(path: str) -> io.BufferedWriter:
    """A new file at ``path`` (created exclusively, mode 0666 less the umask), buffered, that
    writes at most ``WRITE_CHUNK`` bytes a system call (see ``ChunkedFileIO``)."""
    return io.BufferedWriter(ChunkedFileIO(path, "xb"))


def spool_file(prefix: str, directory: str | None = None) -> io.BufferedRandom:
    """A temporary file with no name (gone once closed), to write and read back, that writes
    at most ``WRITE_CHUNK`` bytes a system call (see ``ChunkedFileIO``)."""
    import tempfile  # only here: a task's start-up spares it and what it imports

    with tempfile.TemporaryFile(prefix=prefix, dir=directory, buffering=0) as unbuffered:
        fd = os.dup(unbuffered.fileno())
    return io.BufferedRandom(ChunkedFileIO(fd, "r+"))


class LocalStorage(Storage):
    def size(self, uri: str) -> int:
        path = local_path(uri)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFound(f"no such object: {uri}") from None
        if not os.path.isfile(path):
            raise NotFound(f"not a file: {uri}")
        return st.st_size

    def stat(self, uri: str) -> ObjectInfo:
        path = local_path(uri)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise NotFound(f"no such object: {uri}") from None
        if not os.path.isfile(path):
            raise NotFound(f"not a file: {uri}")
        return _local_info(path, info)

    def write_new(self, uri: str, data: bytes) -> bool:
        path = local_path(uri)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
        fh = open_chunked(tmp)
        try:
            with fh:
                fh.write(data)
            os.link(tmp, path)  # whole and exclusive: fails if the name exists
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def read_bytes(self, uri: str, start: int = 0, end: int | None = None) -> bytes:
        path = local_path(uri)
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                return fh.read() if end is None else fh.read(max(0, end - start))
        except FileNotFoundError:
            raise NotFound(f"no such object: {uri}") from None
        except IsADirectoryError:
            raise NotFound(f"not a file: {uri}") from None

    def read_buffer(self, uri: str) -> bytes | memoryview:
        """The file mapped read-only (no copy into fresh memory: the pages are the page
        cache's), or its bytes when it cannot be mapped.

        Mapped by Arrow (only Arrow code reads buffers), not by Python's ``mmap``, which keeps
        a descriptor open for as long as the mapping lives: a reduce task holding the runs it
        read (up to ``fan_in`` of them) would run out of descriptors."""
        import pyarrow as pa

        try:
            with pa.memory_map(local_path(uri)) as fh:
                return fh.read_buffer()  # the mapping outlives the file, closed here
        except OSError:  # missing, a directory or unmappable: read_bytes says which, or reads it
            return self.read_bytes(uri)

    def write_buffer(self, uri: str, data: bytes | memoryview) -> None:
        self.write_bytes(uri, data)  # a file takes any bytes-like object

    def iter_range(
        self, uri: str, start: int = 0, end: int | None = None, chunk_size: int = READ_CHUNK
    ) -> Iterator[bytes]:
        path = local_path(uri)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed in the finally below
        except FileNotFoundError:
            raise NotFound(f"no such object: {uri}") from None
        try:
            fh.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                want = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = fh.read(want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            fh.close()

    def open_read(self, uri: str) -> IO[bytes]:
        try:
            return open(local_path(uri), "rb")
        except FileNotFoundError:
            raise NotFound(f"no such object: {uri}") from None

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self.open_write(uri) as fh:
            fh.write(data)

    @contextlib.contextmanager
    def open_write(self, uri: str) -> Iterator[IO[bytes]]:
        path = local_path(uri)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        # Not mkstemp: its 0600 mode would survive the rename; O_EXCL with 0666 honours umask.
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
        fh = open_chunked(tmp)
        try:
            with fh:
                yield fh
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def list(self, uri: str, follow_links: bool = False) -> Iterator[ObjectInfo]:
        """Files at or below ``uri``, in path order.

        Symbolic links to files are listed (their target's size and identity). With
        ``follow_links``, so are links to directories; a link back to a directory being
        walked (a cycle) is not entered again, with a warning: everything behind it is
        already listed under the directory's own name. A second link to one file or
        directory lists its files again under the second name, with the same ``identity``
        (the planner reads an object once). An unreadable directory is an error, never
        silently skipped.
        """
        root = local_path(uri)
        try:
            top = os.stat(root)
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing there, or removed just now (a concurrent cleanup)
        if stat.S_ISREG(top.st_mode):
            yield _local_info(root, top)
            return
        if not stat.S_ISDIR(top.st_mode):
            return

        def unreadable(err: OSError) -> None:
            if isinstance(err, FileNotFoundError):
                return  # removed while listing
            raise StorageError(f"cannot list {from_path(err.filename)}: {err.strerror}") from err

        walking = {root: frozenset([(top.st_dev, top.st_ino)])}  # each directory's ancestors
        found: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=follow_links):
            above = walking.pop(dirpath)
            kept = []
            for name in sorted(dirnames):
                full = os.path.join(dirpath, name)
                if not follow_links and os.path.islink(full):
                    continue  # os.walk does not enter it either
                try:
                    info = os.stat(full)
                except FileNotFoundError:
                    continue  # removed while listing
                if (info.st_dev, info.st_ino) in above:
                    log.warning("not following %s: a symbolic link cycle (it leads back to a "
                                "directory whose files are listed already)", from_path(full))
                    continue
                walking[full] = above | {(info.st_dev, info.st_ino)}
                kept.append(name)
            dirnames[:] = kept
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue  # an atomic write in flight
                full = os.path.join(dirpath, name)
                try:
                    found.append((full, os.stat(full)))
                except FileNotFoundError:
                    if os.path.islink(full):  # never drop an input silently
                        raise StorageError(f"cannot read {from_path(full)}: a broken symbolic link") from None
                    continue  # removed while listing (a temporary file)
        for full, info in sorted(found, key=lambda item: item[0]):
            yield _local_info(full, info)

    def is_dir(self, uri: str) -> bool:
        return os.path.isdir(local_path(uri))

    def list_children(self, uri: str) -> Iterator[ObjectInfo]:
        root = local_path(uri)
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and not entry.name.startswith(".tmp-"):
                yield _local_info(entry.path, entry.stat(follow_symlinks=False))

    def delete(self, uris: list[str]) -> None:
        for uri in uris:
            try:
                os.unlink(local_path(uri))
            except FileNotFoundError:
                pass
            except (IsADirectoryError, PermissionError) as err:
                raise StorageError(f"cannot delete {uri}: {err.strerror}") from None

    def remove_empty_dirs(self, uri: str) -> None:
        # Deepest first; a directory that still holds anything stays.
        for dirpath, _, _ in sorted(os.walk(local_path(uri)), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


class S3Storage(Storage):
    """S3 through boto3; honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` like the CLI."""

    def __init__(self, client=None, max_pool_connections: int = 32):
        self._client = client
        self._max_pool_connections = max_pool_connections
        self._lock = threading.Lock()
        #: Requests made, by price class, for the cost estimate.
        self.requests = {"put": 0, "get": 0, "list": 0, "head": 0}

    def _count(self, kind: str) -> None:
        with self._lock:
            self.requests[kind] += 1

    @property
    def client(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    # Set by the local runtime when the Airflow connection disables TLS checks.
                    verify = os.environ.get("LAMBDAMR_S3_VERIFY", "").lower() != "false"
                    self._client = boto3.session.Session().client(
                        "s3",
                        verify=None if verify else False,
                        config=Config(
                            max_pool_connections=self._max_pool_connections,
                            retries={"mode": "standard", "max_attempts": 8},
                        ),
                    )
        return self._client

    @staticmethod
    def _not_found(err) -> bool:
        code = str(err.response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")

    def size(self, uri: str) -> int:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        self._count("head")
        try:
            return int(self.client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as err:
            if self._not_found(err):
                raise NotFound(f"no such object: {uri}") from None
            raise StorageError(f"cannot stat {uri}: {err}") from err

    def stat(self, uri: str) -> ObjectInfo:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        self._count("head")
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if self._not_found(err):
                raise NotFound(f"no such object: {uri}") from None
            raise StorageError(f"cannot stat {uri}: {err}") from err
        return ObjectInfo(uri, int(head["ContentLength"]), str(head.get("ETag", "")))

    def write_new(self, uri: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        self._count("put")
        try:  # S3's conditional write: 412 when the key exists, 409 while another is in flight
            self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise StorageError(f"cannot create {uri}: {err}") from err
        return True

    def _get(self, uri: str, start: int, end: int | None):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        kwargs = {"Bucket": bucket, "Key": key}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        self._count("get")
        try:
            return self.client.get_object(**kwargs)["Body"]
        except ClientError as err:
            if self._not_found(err):
                raise NotFound(f"no such object: {uri}") from None
            if err.response.get("Error", {}).get("Code") == "InvalidRange":
                return None
            raise StorageError(f"cannot read {uri}: {err}") from err

    def read_bytes(self, uri: str, start: int = 0, end: int | None = None) -> bytes:
        if end is not None and end <= start:
            return b""
        body = self._get(uri, start, end)
        if body is None:
            return b""
        with contextlib.closing(body):
            return body.read()

    def iter_range(
        self, uri: str, start: int = 0, end: int | None = None, chunk_size: int = READ_CHUNK
    ) -> Iterator[bytes]:
        if end is not None and end <= start:
            return
        body = self._get(uri, start, end)
        if body is None:
            return
        with contextlib.closing(body):
            yield from body.iter_chunks(chunk_size)

    def open_read(self, uri: str) -> IO[bytes]:
        body = self._get(uri, 0, None)
        if body is None:
            import io

            return io.BytesIO(b"")
        return body

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        self._count("put")
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    @contextlib.contextmanager
    def open_write(self, uri: str) -> Iterator[IO[bytes]]:
        bucket, key = split_s3(uri)
        # Spool to a temporary file, then one upload: a PUT or a multipart upload that
        # only becomes visible when complete, so readers never see a partial object.
        with spool_file("lambdamr-") as fh:
            yield fh
            size = fh.tell()
            fh.seek(0)
            self.client.upload_fileobj(fh, bucket, key)
            # Above s3transfer's 8 MB threshold: create, one request per part, complete.
            part = 8 * 1024 * 1024
            for _ in range(1 if size <= part else -(-size // part) + 2):
                self._count("put")

    def list(self, uri: str, follow_links: bool = False) -> Iterator[ObjectInfo]:
        bucket, key = split_s3(uri)
        if key and not key.endswith("/"):
            # The object itself, when it exists, then everything below it as a directory;
            # never other keys that merely share the prefix ("in" must not match "in2/").
            # A one-key LIST, not a HEAD: the exact key sorts first among keys with its
            # prefix, and a role allowed to list only this prefix gets 403, not 404, from
            # a HEAD of a missing key.
            self._count("list")
            first = self.client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents") or []
            if first and first[0]["Key"] == key:
                yield ObjectInfo(uri, int(first[0]["Size"]), str(first[0].get("ETag", "")))
            key += "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            self._count("list")
            for item in page.get("Contents", ()):
                yield ObjectInfo(f"s3://{bucket}/{item['Key']}", int(item["Size"]), str(item.get("ETag", "")))

    def list_children(self, uri: str) -> Iterator[ObjectInfo]:
        # One level, with a delimiter: a large tree below (another job's state) is not listed.
        bucket, key = split_s3(uri)
        key = key.rstrip("/") + "/" if key.strip("/") else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key, Delimiter="/"):
            self._count("list")
            for item in page.get("Contents", ()):
                yield ObjectInfo(f"s3://{bucket}/{item['Key']}", int(item["Size"]), str(item.get("ETag", "")))

    def delete(self, uris: list[str]) -> None:
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            bucket, key = split_s3(uri)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), 1000):
                self._count("put")
                batch = [{"Key": k} for k in keys[i : i + 1000]]
                resp = self.client.delete_objects(
                    Bucket=bucket, Delete={"Objects": batch, "Quiet": True}
                )
                errors = resp.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"could not delete s3://{bucket}/{first.get('Key')}: "
                        f"{first.get('Code')} {first.get('Message')} "
                        f"({len(errors)} keys failed)"
                    )


_local = LocalStorage()
_s3: S3Storage | None = None
_s3_lock = threading.Lock()


def for_uri(uri: str) -> Storage:
    """The storage backend that serves ``uri`` (shared per process; thread-safe)."""
    global _s3
    if is_s3(uri):
        if _s3 is None:
            with _s3_lock:
                if _s3 is None:
                    _s3 = S3Storage()
        return _s3
    return _local


def s3_requests() -> dict[str, int]:
    """S3 requests this process has made so far, by price class."""
    return dict(_s3.requests) if _s3 is not None else {"put": 0, "get": 0, "list": 0, "head": 0}


def set_s3_client(client) -> None:
    """Use a preconfigured boto3 S3 client (e.g. one built by an Airflow connection)."""
    global _s3
    with _s3_lock:
        _s3 = S3Storage(client=client)

