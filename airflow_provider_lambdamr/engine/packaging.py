"""Deterministic function zips: the runtime (``lambda_src``) plus the job's own package.

Entries are sorted, timestamps fixed and permissions normalised, so the same code always
gives the same bytes; the SHA-256 of those bytes is the code version. The local runtime
extracts a version once (refusing entries that would escape the target directory) and AWS
Lambda gets the very same zip.

A job is written in Python (``package.module:ClassName``) or in JavaScript (the path of a
``.mjs``/``.cjs``/``.js`` module, see ``lambda_src/nodejs/job.mjs``). A JavaScript job's zip
holds the Node.js handlers (``lambda_src/nodejs/``) and, under ``job/``, the job's package:
the directory of the nearest ``package.json`` above the module (with its ``node_modules``), or
the module alone when there is none. Its event names the module by its path in the zip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import lambda_src

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
PYTHON = "python"
NODEJS = "nodejs"
LANGUAGES = (PYTHON, NODEJS)
NODE_EXTENSIONS = (".mjs", ".cjs", ".js")
#: Where a JavaScript job's package lies in its zip.
NODE_JOB_DIR = "job"
NODE_HANDLERS_DIR = Path(lambda_src.__file__).parent / "nodejs"
SKIP_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo")


class PackagingError(Exception):
    """The job's code cannot be packaged."""


@dataclass(frozen=True)
class CodePackage:
    path: str
    sha256: str
    size: int
    modules: tuple[str, ...]
    #: The language of the handlers in the zip (``python`` or ``nodejs``).
    language: str = PYTHON

    @property
    def version(self) -> str:
        """A short content hash: names function versions, aliases and cache directories."""
        return self.sha256[:16]


def cache_dir() -> Path:
    base = os.environ.get("LAMBDAMR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lambdamr"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_root(module_name: str) -> tuple[str, Path]:
    """(top-level name, path to its package directory or module file)."""
    top = module_name.split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise PackagingError(f"cannot find module {top!r} on the Python path")
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        if len(locations) != 1:
            raise PackagingError(f"namespace package {top!r} spans {locations}; use a regular package")
        return top, Path(locations[0])
    if spec.origin and spec.origin.endswith(".py"):
        return top, Path(spec.origin)
    raise PackagingError(f"module {top!r} is not pure-Python source ({spec.origin}); cannot package it")


def _files(top: str, root: Path) -> list[tuple[str, Path]]:
    if root.is_file():
        return [(f"{top}.py", root)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((*SKIP_SUFFIXES, ".so", ".pyd", ".dylib")) or name.startswith("."):
                continue  # compiled extensions are built for this machine, not for Lambda
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            out.append((f"{top}/{rel}", full))
    return out


#: What the handlers need for X-Ray (Lambda's Python runtime has botocore, not these).
TRACING_MODULES = ("aws_xray_sdk", "wrapt")


def build_zip_bytes(job_ref: str, include: tuple[str, ...] = ()) -> tuple[bytes, tuple[str, ...]]:
    """The zip's bytes and its top-level modules: the runtime, the job's module, ``include``."""
    module_name = job_ref.partition(":")[0]
    tops: dict[str, Path] = {"lambda_src": Path(lambda_src.__file__).parent}
    for name in (module_name, *include):
        top, root = _package_root(name)
        tops.setdefault(top, root)
    entries: list[tuple[str, Path]] = []
    for name, path in sorted(tops.items()):
        entries.extend(_files(name, path))
    # The Node.js handlers have zips of their own (build_node_zip_bytes).
    entries = [(arcname, path) for arcname, path in entries if not arcname.startswith("lambda_src/nodejs/")]
    return _zip(entries), tuple(sorted(tops))


def language_of(job_ref: str) -> str:
    """``nodejs`` for a JavaScript module's path, else ``python``."""
    return NODEJS if job_ref.endswith(NODE_EXTENSIONS) else PYTHON


def node_package(module: str) -> tuple[Path, str]:
    """(directory packaged under ``job/``, the module's path below it) of a JavaScript job.

    The directory is the nearest one holding a ``package.json``, from the module's own
    directory up; without one, the module is packaged alone.
    """
    path = Path(module).resolve()
    if not path.is_file():
        raise PackagingError(f"JavaScript job module {module} does not exist")
    for parent in path.parents:
        if (parent / "package.json").is_file():
            return parent, path.relative_to(parent).as_posix()
    return path, path.name


def event_ref(job_ref: str) -> str:
    """What a task event names the job by: its Python reference, or its module's path in the zip."""
    if language_of(job_ref) == PYTHON:
        return job_ref
    return f"{NODE_JOB_DIR}/{node_package(job_ref)[1]}"


def _node_files(root: Path, prefix: str) -> list[tuple[str, Path]]:
    """``root``'s files (a file: itself) as zip entries under ``prefix``; dot-names skipped."""
    if root.is_file():
        return [(f"{prefix}/{root.name}", root)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                full = Path(dirpath) / name
                out.append((f"{prefix}/{full.relative_to(root).as_posix()}", full))
    return out


def _zip(entries: list[tuple[str, Path]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for arcname, path in sorted(entries):
            info = zipfile.ZipInfo(arcname, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.create_system = 3
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def build_node_zip_bytes(module: str) -> bytes:
    """A JavaScript job's zip: the Node.js handlers and the job's package under ``job/``."""
    root, _ = node_package(module)
    handlers = [(f"lambda_src/nodejs/{p.name}", p) for p in sorted(NODE_HANDLERS_DIR.glob("*.mjs"))]
    return _zip(handlers + _node_files(root, NODE_JOB_DIR))


def build(job_ref: str, tracing: bool = False) -> CodePackage:
    """Build (or find in the cache) the versioned zip for a job (with the X-Ray SDK if tracing)."""
    language = language_of(job_ref)
    if language == NODEJS:
        data, modules = build_node_zip_bytes(job_ref), (NODE_JOB_DIR, "lambda_src")
    else:
        data, modules = build_zip_bytes(job_ref, TRACING_MODULES if tracing else ())
    digest = hashlib.sha256(data).hexdigest()
    target = cache_dir() / "zips" / f"lambdamr-{digest[:16]}.zip"
    if not target.exists() or target.stat().st_size != len(data):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    return CodePackage(str(target), digest, len(data), modules, language)


def safe_extract(zip_path: str, target: Path) -> None:
    """Extract a zip, refusing any entry that would land outside ``target`` (zip-slip)."""
    root = target.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            name = info.filename
            dest = (root / name).resolve()
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or (
                dest != root and root not in dest.parents
            ):
                raise PackagingError(f"zip entry {name!r} in {zip_path} would escape {target}")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise PackagingError(f"zip entry {name!r} in {zip_path} is a symbolic link")
        zf.extractall(root)


def extracted(package: CodePackage) -> Path:
    """The directory holding this version's code, extracted once per version."""
    target = cache_dir() / "code" / package.version
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        safe_extract(package.path, tmp)
        (tmp / ".complete").write_text(package.sha256)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ".complete").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target

