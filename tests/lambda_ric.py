"""Lambda as a function's runtime client sees it, on 127.0.0.1.

``RuntimeApi`` serves the Lambda Runtime API (the HTTP protocol AWS's runtime clients speak:
``GET /2018-06-01/runtime/invocation/next``, ``POST .../invocation/{id}/response``,
``POST .../invocation/{id}/error``, ``POST .../runtime/init/error``). ``LambdaProcess`` runs
``python -m awslambdaric HANDLER`` against it the way Lambda starts a function: a Python of
the function's runtime version, without site-packages, whose path holds only the function's
code (``/var/task``), its layers (``/opt/python``) and the runtime (``/var/runtime``:
awslambdaric and the AWS SDK, as Lambda's Python runtimes include them).
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from airflow_provider_lambdamr.engine import packaging

PREFIX = "/2018-06-01/runtime"
#: The runtime client and what it needs, built for the runtime's Python (C extensions).
RUNTIME_CLIENT = ("awslambdaric", "simplejson", "snapshot-restore-py")
#: The AWS SDK Lambda's Python runtimes include (pure Python: the venv's own copies serve).
SDK = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")


def find_python(version: str) -> str | None:
    """A ``python<version>`` interpreter on this machine (PATH or pyenv), or None."""
    candidates = [shutil.which(f"python{version}"),
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))]
    for exe in filter(None, candidates):
        res = subprocess.run([exe, "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2], sys.executable)"],
                             capture_output=True, text=True)
        if res.returncode == 0 and res.stdout.split()[0] == version:
            return res.stdout.split()[1]
    return None


def runtime_dir(target: packaging.LayerTarget, dest: Path) -> Path:
    """Lambda's ``/var/runtime`` for ``target``: awslambdaric (the version pinned in the venv)
    from its wheels for that Python, and the AWS SDK."""
    for project in RUNTIME_CLIENT:
        with zipfile.ZipFile(packaging.wheel(project, importlib.metadata.version(project), target)) as whl:
            whl.extractall(dest)
    for project in SDK:
        files = importlib.metadata.distribution(project).files or []
        tops = {f.parts[0] for f in files if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
        for top in tops:
            source = Path(str(importlib.metadata.distribution(project).locate_file(top)))
            if source.exists() and not (dest / top).exists():
                (dest / top).symlink_to(source)
    return dest


@dataclass
class Invocation:
    request_id: str
    event: bytes
    #: ("response" | "error", body, headers) per time the function answered.
    answers: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)


class RuntimeApi:
    """One function's Runtime API: ``invoke`` queues an event, the runtime client takes it."""

    def __init__(self, function_arn: str, timeout_s: float = 60.0) -> None:
        self.function_arn = function_arn
        self.timeout_s = timeout_s
        self.pending: queue.Queue[Invocation] = queue.Queue()
        self.invocations: dict[str, Invocation] = {}
        self.init_errors: list[tuple[dict, str | None]] = []
        self.answered = threading.Condition()
        self.closed = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def invoke(self, event: dict, request_id: str | None = None) -> str:
        """Queue ``event``; a ``request_id`` already used delivers that invocation again."""
        rid = request_id or str(uuid.uuid4())
        inv = self.invocations.setdefault(rid, Invocation(rid, json.dumps(event).encode()))
        self.pending.put(inv)
        return rid

    def wait(self, request_id: str, answers: int = 1, timeout: float = 60.0) -> Invocation:
        inv = self.invocations[request_id]
        end = time.monotonic() + timeout
        with self.answered:
            while len(inv.answers) < answers:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"invocation {request_id} got {len(inv.answers)} answers, not {answers}")
                self.answered.wait(left)
        return inv

    def wait_init_error(self, timeout: float = 60.0) -> tuple[dict, str | None]:
        end = time.monotonic() + timeout
        with self.answered:
            while not self.init_errors:
                if not self.answered.wait(max(0.0, end - time.monotonic())):
                    raise TimeoutError("no init error")
        return self.init_errors[0]

    def next_invocation(self) -> Invocation | None:
        """The next event, held until there is one (as Lambda does); None once closed."""
        while not self.closed.is_set():
            try:
                return self.pending.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, rid: str, kind: str, body: bytes, headers: dict[str, str]) -> bool:
        with self.answered:
            inv = self.invocations.get(rid)
            if inv is None:
                return False
            inv.answers.append((kind, body, headers))
            self.answered.notify_all()
        return True

    def _init_error(self, body: bytes, error_type: str | None) -> None:
        with self.answered:
            self.init_errors.append((json.loads(body), error_type))
            self.answered.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a runtime client stopped while it waited for its next event

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self._reply(404, b'{"errorMessage": "unknown path"}')
                    return
                inv = api.next_invocation()
                if inv is None:
                    self._reply(503, b'{"errorMessage": "the emulator is closed"}')
                    return
                self._reply(200, inv.event, {
                    "Content-Type": "application/json",
                    "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(int((time.time() + api.timeout_s) * 1000)),
                    "Lambda-Runtime-Invoked-Function-Arn": api.function_arn,
                })

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
                parts = self.path.removeprefix(PREFIX).strip("/").split("/")
                if parts == ["init", "error"]:
                    api._init_error(body, error_type)
                    self._reply(202, b'{"status": "OK"}')
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    found = api._answer(parts[1], parts[2], body, dict(self.headers.items()))
                    self._reply(202 if found else 400, b'{"status": "OK"}' if found else b'{"errorMessage": "?"}')
                else:
                    self._reply(404, b'{"errorMessage": "unknown path"}')

        return Handler


class LambdaProcess:
    """``python -m awslambdaric HANDLER`` in a clean interpreter, against ``api``."""

    def __init__(self, python: str, handler: str, api: RuntimeApi, path: list[Path], env: dict[str, str],
                 task_root: Path) -> None:
        self.log = task_root.parent / f"{handler}-{uuid.uuid4().hex[:6]}.log"
        full_env = {
            "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": ":UTC",
            "PYTHONPATH": os.pathsep.join(str(p) for p in path),
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "LAMBDA_TASK_ROOT": str(task_root),
            **env,
        }
        with open(self.log, "wb") as out:
            # -S: no site-packages (nor .pth files); -s: no user site; -P: no script directory.
            # (-I would also drop PYTHONPATH, which is how Lambda puts the code on the path.)
            self.proc = subprocess.Popen([python, "-S", "-s", "-P", "-m", "awslambdaric", handler],
                                         env=full_env, cwd=task_root, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
