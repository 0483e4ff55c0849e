"""The local runtime's worker: one persistent process, like a warm Lambda container.

Run as a script (``python -I _bootstrap.py FD CODE_DIR HANDLER...``) so that it imports
nothing from the driver's environment but the standard library and the packages a Lambda
Python runtime also has: the handlers come from the extracted zip, first on ``sys.path``.
Messages are length-prefixed JSON bytes over a socket; nothing is pickled.
"""

import importlib
import json
import logging
import os
import sys
import time
import traceback
from multiprocessing.connection import Connection


class LambdaContext:
    """The attributes and method of the context object Lambda passes to a handler."""

    def __init__(self, request: dict) -> None:
        self.aws_request_id = request["request_id"]
        self.function_name = request["function_name"]
        self.function_version = request.get("function_version", "$LATEST")
        self.memory_limit_in_mb = str(request["memory_mb"])
        self.invoked_function_arn = (
            f"arn:aws:lambda:local:000000000000:function:{self.function_name}"
        )
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline_ms = request["deadline_ms"]

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))


def _error(err: BaseException, error_type: str | None = None) -> dict:
    return {
        "errorType": error_type or type(err).__name__,
        "errorMessage": str(err),
        "stackTrace": traceback.format_exception(type(err), err, err.__traceback__)[-20:],
    }


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    fd = int(sys.argv[1])
    code_dir = sys.argv[2]
    handler_names = sys.argv[3:]
    sys.path.insert(0, code_dir)
    os.chdir(code_dir)
    logging.basicConfig(
        level=os.environ.get("LAMBDAMR_WORKER_LOG_LEVEL", "WARNING"),
        format="[%(levelname)s] %(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    conn = Connection(fd)
    started = time.time()
    handlers = {}
    init_error = None
    for name in handler_names:
        module_name, _, attr = name.rpartition(".")
        try:
            handlers[name] = getattr(importlib.import_module(module_name), attr)
        except Exception as err:
            init_error = _error(err, "Runtime.ImportModuleError")
            break
    init_ms = (time.time() - started) * 1000
    conn.send_bytes(json.dumps({"type": "ready", "init_ms": init_ms, "pid": os.getpid()}).encode())
    cold = True
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        t0 = time.time()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        # Lambda sets the invocation's trace header in the environment; so do we.
        if request.get("trace_header"):
            os.environ["_X_AMZN_TRACE_ID"] = request["trace_header"]
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        reply = {"type": "result", "request_id": request["request_id"], "cold_start": cold}
        if cold:
            reply["init_ms"] = init_ms
        cold = False
        if init_error is not None:
            reply.update(ok=False, error=init_error)
        else:
            handler = handlers[request["handler"]]
            try:
                payload = handler(request["event"], LambdaContext(request))
                reply.update(ok=True, payload=payload)
            except Exception as err:
                reply.update(ok=False, error=_error(err))
        reply["duration_ms"] = (time.time() - t0) * 1000
        reply["max_memory_mb"] = _peak_rss_mb()
        try:
            data = json.dumps(reply).encode()
        except (TypeError, ValueError) as err:
            data = json.dumps(
                {**{k: v for k, v in reply.items() if k != "payload"}, "ok": False,
                 "error": _error(err, "Runtime.MarshalError")}
            ).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send_bytes(data)


if __name__ == "__main__":
    main()
