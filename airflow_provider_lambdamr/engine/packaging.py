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
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lambda_src
from lambda_src import storage as st

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
PYTHON = "python"
NODEJS = "nodejs"
#: Lambda's instruction set architectures, and the runtimes its functions run jobs on.
ARCHITECTURES = ("x86_64", "arm64")
RUNTIME_VERSIONS = ("python3.11", "python3.12", "python3.13", "nodejs20.x", "nodejs22.x")
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
    entries = sorted((arcname, path) for arcname, path in entries if not arcname.startswith("lambda_src/nodejs/"))
    return _cached_zip_bytes((arcname, path.read_bytes(), 0o644) for arcname, path in entries), tuple(sorted(tops))


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


def _zip_bytes(entries: Iterable[tuple[str, bytes, int]]) -> bytes:
    """A deterministic zip of (name, data, mode) entries, in the order given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for arcname, data, mode in entries:
            info = zipfile.ZipInfo(arcname, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.create_system = 3
            zf.writestr(info, data)
    return buf.getvalue()


#: Part of a cached zip's key: what ``_zip_bytes`` makes of entries (change it with ``_zip_bytes``).
ZIP_FORMAT = b"lambdamr zip 1: deflate level 9, fixed time, mode 0644"


def _cached_zip_bytes(entries: Iterable[tuple[str, bytes, int]]) -> bytes:
    """``_zip_bytes(entries)``, deflated once per content: every command builds its job's zip,
    and compressing it (level 9) took longer than the rest of a small job's start-up.

    The cache is keyed by a hash of the zip format and the entries' names, modes and bytes;
    beside each zip lies the SHA-256 of its bytes, written after it: a zip that does not hash
    to it (truncated, damaged, replaced, or its hash not yet written) is built again and
    replaced. Hashing the bytes costs a fraction of a millisecond; inflating them, several.
    """
    entries = list(entries)
    key = hashlib.sha256(ZIP_FORMAT)
    for arcname, data, mode in entries:
        key.update(f"{len(arcname)}:{arcname}:{mode}:{len(data)}:".encode())
        key.update(data)
    cached = cache_dir() / "zips" / "content" / f"{key.hexdigest()[:32]}.zip"
    digest = cached.with_suffix(".sha256")
    try:
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == digest.read_text().strip():
            return data
    except (OSError, UnicodeDecodeError):
        pass
    data = _zip_bytes(entries)
    _write_atomic(cached, data)
    _write_atomic(digest, hashlib.sha256(data).hexdigest().encode())
    return data


def _cache_write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically unless it already holds that many bytes."""
    if target.exists() and target.stat().st_size == len(data):
        return
    _write_atomic(target, data)


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``target`` whole or not at all, as the engine writes local files (at most
    ``WRITE_CHUNK`` bytes a system call; a failed write leaves no temporary file behind)."""
    st.LocalStorage().write_bytes(st.from_path(str(target)), data)


def build_node_zip_bytes(module: str) -> bytes:
    """A JavaScript job's zip: the Node.js handlers and the job's package under ``job/``."""
    root, _ = node_package(module)
    handlers = [(f"lambda_src/nodejs/{p.name}", p) for p in sorted(NODE_HANDLERS_DIR.glob("*.mjs"))]
    entries = sorted(handlers + _node_files(root, NODE_JOB_DIR))
    return _cached_zip_bytes((arcname, path.read_bytes(), 0o644) for arcname, path in entries)


def build(job_ref: str, tracing: bool = False, include: tuple[str, ...] = ()) -> CodePackage:
    """Build (or find in the cache) the versioned zip for a job: a Python job's (with the X-Ray
    SDK if tracing, and the top-level packages ``include`` names: the coordinator's zip adds
    the engine), or a JavaScript job's."""
    language = language_of(job_ref)
    if language == NODEJS:
        if include:
            raise PackagingError(f"a JavaScript job ({job_ref}) cannot carry the Python packages {include}")
        data, modules = build_node_zip_bytes(job_ref), (NODE_JOB_DIR, "lambda_src")
    else:
        data, modules = build_zip_bytes(job_ref, (*include, *(TRACING_MODULES if tracing else ())))
    digest = hashlib.sha256(data).hexdigest()
    target = cache_dir() / "zips" / f"lambdamr-{digest[:16]}.zip"
    _cache_write(target, data)
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



def unzipped_size(zip_path: str) -> int:
    """The bytes a zip's files take once extracted (what Lambda's size limit counts)."""
    with zipfile.ZipFile(zip_path) as zf:
        return sum(info.file_size for info in zf.infolist())


# -- the pyarrow layer -------------------------------------------------------------------------
#: Lambda's limit on a function's code and all its layers together, unzipped.
UNZIPPED_LIMIT = 262_144_000
#: The glibc minor version of each Lambda Python runtime's OS: python3.11 runs on Amazon
#: Linux 2 (glibc 2.26), python3.12 and later on Amazon Linux 2023 (glibc 2.34).
RUNTIME_GLIBC = {"python3.11": 26, "python3.12": 34, "python3.13": 34}
WHEEL_MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}
#: What a layer leaves out of the wheel: C++ headers and sources, Cython sources, pyarrow's tests.
LAYER_SKIP_DIRS = ("pyarrow/include/", "pyarrow/src/", "pyarrow/tests/")
LAYER_SKIP_SUFFIXES = (".pyx", ".pxd", ".pxi")
#: Layer descriptions start with this: cleanup deletes only layer versions that carry it.
LAYER_MARK = "lambdamr pyarrow"
_SHARED_LIBRARY = re.compile(r"\.so(\.[0-9.]+)?$")


@dataclass(frozen=True)
class LayerTarget:
    """Where a layer's native code must load: a CPU architecture, a Python, a glibc."""

    architecture: str
    python: str  # "3.12"
    glibc: int  # minor version: 34 is glibc 2.34

    @classmethod
    def for_runtime(cls, architecture: str, runtime_version: str) -> LayerTarget:
        if architecture not in WHEEL_MACHINES or runtime_version not in RUNTIME_GLIBC:
            raise PackagingError(f"no layer target for {runtime_version} on {architecture}")
        return cls(architecture, runtime_version.removeprefix("python"), RUNTIME_GLIBC[runtime_version])

    def platforms(self) -> list[str]:
        """The manylinux tags a wheel may carry to load here, newest first (PEP 600: a wheel
        for glibc 2.Y loads on 2.Y and later; manylinux2014, 2010 and 1 are 2.17, 2.12, 2.5)."""
        machine = WHEEL_MACHINES[self.architecture]
        return [f"manylinux_2_{minor}_{machine}" for minor in range(self.glibc, 4, -1)] + [
            f"manylinux{legacy}_{machine}" for legacy in ("2014", "2010", "1")]

    def describe(self) -> str:
        return f"Python {self.python} on {self.architecture} (glibc 2.{self.glibc})"


@dataclass(frozen=True)
class LayerPackage:
    """A layer zip holding pyarrow under ``python/`` (Lambda puts ``/opt/python`` on the path)."""

    path: str
    sha256: str
    size: int
    unzipped_size: int
    pyarrow_version: str
    target: LayerTarget

    @property
    def version(self) -> str:
        return self.sha256[:16]

    @property
    def description(self) -> str:
        """The layer version's description: how a later deploy finds it by content."""
        return (f"{LAYER_MARK} {self.pyarrow_version} python{self.target.python} "
                f"{self.target.architecture} sha256:{self.version}")


def pyarrow_version() -> str:
    """The pyarrow a layer holds: the one installed here (constraints.txt pins it)."""
    from importlib.metadata import version

    return version("pyarrow")


def wheel_dir() -> Path:
    """Downloaded wheels, kept across runs (``LAMBDAMR_WHEEL_DIR``, else the user cache)."""
    base = os.environ.get("LAMBDAMR_WHEEL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lambdamr", "wheels")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wheel_fits(name: str, project: str, version: str, target: LayerTarget) -> bool:
    """Whether the wheel file ``name`` is ``project`` ``version`` and loads on ``target``."""
    parts = name.removesuffix(".whl").split("-")
    if len(parts) != 5 or parts[:2] != [project.replace("-", "_"), version]:
        return False
    cp = "cp" + target.python.replace(".", "")
    pythons, abis, platforms = (set(tag.split(".")) for tag in parts[2:])
    return (bool(pythons & {cp, "py3"}) and bool(abis & {cp, "abi3", "none"})
            and bool(platforms & {*target.platforms(), "any"}))


def wheel(project: str, version: str, target: LayerTarget) -> Path:
    """The wheel of ``project`` ``version`` for ``target``: from the wheel cache, else
    downloaded by pip (binary only, no dependencies) into it."""
    import subprocess
    import sys

    cache = wheel_dir()
    found = sorted(p for p in cache.glob("*.whl") if _wheel_fits(p.name, project, version, target))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--no-deps", "--implementation", "cp", "--python-version", target.python,
               *[arg for tag in target.platforms() for arg in ("--platform", tag)],
               f"{project}=={version}", "--dest", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = [p for p in Path(tmp).glob("*.whl") if _wheel_fits(p.name, project, version, target)]
        if res.returncode != 0 or len(wheels) != 1:
            detail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise PackagingError(f"cannot get a {project} {version} wheel for {target.describe()}: {detail[0]}")
        os.replace(wheels[0], cache / wheels[0].name)
    return cache / wheels[0].name


def build_layer(target: LayerTarget, version: str | None = None) -> LayerPackage:
    """Build (or find in the cache) the pyarrow layer for ``target``, content-hashed.

    The layer built from a wheel is cached by the wheel's own hash (not its name, which two
    different files can share).
    """
    version = version or pyarrow_version()
    try:
        pyarrow = wheel("pyarrow", version, target)
    except PackagingError as err:
        if target.glibc >= 28:
            raise
        raise PackagingError(
            f"{err}. pyarrow has had no wheels for glibc 2.{target.glibc} since 21.0 (they need glibc 2.28), "
            f"and Lambda's python3.11 runs on Amazon Linux 2 (glibc 2.26): use --runtime-version python3.12 or "
            f"later, or name a layer holding pyarrow with --layer ARN") from None
    with open(pyarrow, "rb") as fh:
        wheel_sha = hashlib.file_digest(fh, "sha256").hexdigest()
    cached = cache_dir() / "layers" / f"pyarrow-{version}-{wheel_sha[:16]}.zip"
    if not cached.exists():
        with zipfile.ZipFile(pyarrow) as whl:
            infos = sorted((i for i in whl.infolist() if not i.is_dir()
                            and not i.filename.startswith(LAYER_SKIP_DIRS)
                            and not i.filename.endswith(LAYER_SKIP_SUFFIXES)), key=lambda i: i.filename)
            _cache_write(cached, _zip_bytes(
                (f"python/{i.filename}", whl.read(i), 0o755 if _SHARED_LIBRARY.search(i.filename) else 0o644)
                for i in infos))
    data = cached.read_bytes()
    return LayerPackage(str(cached), hashlib.sha256(data).hexdigest(), len(data), unzipped_size(str(cached)),
                        version, target)
