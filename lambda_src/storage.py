"""Object storage for handlers and the driver: ``file://`` (and plain paths) and ``s3://``.

Only the standard library and boto3 are used, so this module runs unchanged inside an AWS
Lambda function. Every write is atomic: a reader sees the whole object or none of it (a
rename on a local file system, a single PUT or completed multipart upload on S3), so a
retried or duplicated task can never leave a half-written output behind.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO
from urllib.parse import unquote, urlsplit

READ_CHUNK = 8 * 1024 * 1024


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


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def normalize(uri: str) -> str:
    """Return a canonical URI: ``s3://bucket/key`` or ``file:///absolute/path``."""
    if not uri:
        raise ValueError("empty storage URI")
    if is_s3(uri):
        split_s3(uri)  # validates the bucket
        return uri
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI must not name a host: {uri!r}")
        path = unquote(parts.path)
    elif "://" in uri:
        raise ValueError(f"unsupported storage scheme in {uri!r} (use s3:// or file://)")
    else:
        path = uri
    return "file://" + os.path.abspath(os.path.expanduser(path))


def local_path(uri: str) -> str:
    """The file system path of a ``file://`` URI (or plain path)."""
    uri = normalize(uri)
    if is_s3(uri):
        raise ValueError(f"not a local URI: {uri!r}")
    return uri[len("file://") :]


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket: {uri!r}")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join relative key parts onto a base URI, refusing parts that would escape it.

    A part may contain ``/`` separators, but no empty, ``.`` or ``..`` segment, no leading
    ``/`` and no backslash, so a job id or task key read from a payload can never point
    outside the root it is joined to.
    """
    out = base.rstrip("/")
    for part in parts:
        if not isinstance(part, str) or not part:
            raise ValueError(f"empty path component joined to {base!r}")
        if part.startswith("/") or "\\" in part or "\x00" in part:
            raise ValueError(f"path component {part!r} would escape {base!r}")
        for segment in part.split("/"):
            if segment in ("", ".", ".."):
                raise ValueError(f"path component {part!r} would escape {base!r}")
        out = f"{out}/{part}"
    return out


def basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/"))


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

    @contextlib.contextmanager
    def open_write(self, uri: str) -> Iterator[IO[bytes]]:
        """A binary writer whose object appears atomically when the block exits cleanly."""
        raise NotImplementedError
        yield  # pragma: no cover

    def list(self, uri: str) -> Iterator[ObjectInfo]:
        """Every object at ``uri`` or below it (as a directory), in key order, all pages."""
        raise NotImplementedError

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
        return ObjectInfo(normalize(uri), info.st_size, str(info.st_mtime_ns))

    def write_new(self, uri: str, data: bytes) -> bool:
        path = local_path(uri)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def list(self, uri: str) -> Iterator[ObjectInfo]:
        root = local_path(uri).rstrip("/") or "/"
        if os.path.isfile(root):
            yield self.stat("file://" + root)
            return
        if not os.path.isdir(root):
            return
        found: list[tuple[str, int]] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue  # an atomic write in flight
                full = os.path.join(dirpath, name)
                try:
                    info = os.stat(full)
                except FileNotFoundError:
                    if os.path.islink(full):  # never drop an input silently
                        raise StorageError(f"cannot read {full}: a broken symbolic link") from None
                    continue  # removed while listing (a temporary file)
                found.append((full, info.st_size, str(info.st_mtime_ns)))
        for full, size, version in sorted(found):
            yield ObjectInfo("file://" + full, size, version)

    def delete(self, uris: list[str]) -> None:
        for uri in uris:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local_path(uri))

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
        with tempfile.TemporaryFile(prefix="lambdamr-") as fh:
            yield fh
            size = fh.tell()
            fh.seek(0)
            self.client.upload_fileobj(fh, bucket, key)
            # Above s3transfer's 8 MB threshold: create, one request per part, complete.
            part = 8 * 1024 * 1024
            for _ in range(1 if size <= part else -(-size // part) + 2):
                self._count("put")

    def list(self, uri: str) -> Iterator[ObjectInfo]:
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

