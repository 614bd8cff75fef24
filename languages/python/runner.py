"""In-sandbox runner for Python: speaks the control protocol on fd 0, runs ``main(**arguments)``.

Protocol (one JSON object per line on fd 0, a socket to the service):
  runner -> service  {"type": "ready", "preload_errors": {module: error}}
  service -> runner  {"type": "run", "source": file name in the working directory, "arguments": {...}}
  runner -> service  {"type": "done", "exit_code": n, "returned": bool, "result_json": str|null}
User code never sees the control socket on a standard stream: fd 0 becomes /dev/null before
the user's module is loaded, and the result travels on that socket, not on stdout, so
printing a fake result marker cannot forge ``result``.  This file runs inside the sandbox
under any Python 3.8+, so it uses the standard library only.
"""

import importlib
import importlib.util
import json
import os
import socket
import sys
import time
import traceback

PRELOAD_ENV = "SANDBOX_PRELOAD"


def _send(ctl, message):
    ctl.sendall(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")


def _receive(ctl):
    chunks = []
    while True:
        chunk = ctl.recv(1 << 16)
        if not chunk:
            raise EOFError("control channel closed before a request arrived")
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return json.loads(b"".join(chunks))


def _preload(modules):
    errors = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # a broken preload must not kill the sandbox
            errors[name] = "%s: %s" % (type(exc).__name__, exc)
    return errors


def _print_user_traceback(exc):
    """The exception as Python would print it, without this runner's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


def _run(request):
    """Load the user's module and call main; return (exit_code, returned, result_json)."""
    workdir = os.getcwd()
    source = os.path.join(workdir, request["source"])
    sys.argv = [source]
    sys.path.insert(0, workdir)
    try:
        spec = importlib.util.spec_from_file_location("main", source)
        module = importlib.util.module_from_spec(spec)
        sys.modules["main"] = module
        spec.loader.exec_module(module)
        main = getattr(module, "main", None)
        if not callable(main):
            print("Error: the code must define a function main(**arguments)", file=sys.stderr)
            return 1, False, None
        value = main(**request.get("arguments", {}))
    except SystemExit as exc:
        code = exc.code
        if code is None or code is True or code is False:
            code = int(bool(code))
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        return code, False, None
    except BaseException as exc:
        _print_user_traceback(exc)
        return 1, False, None
    try:
        payload = json.dumps({"present": True, "value": value, "type": "json"},
                             ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        print("TypeError: main() returned a value that is not JSON-serializable: %s" % exc, file=sys.stderr)
        return 1, False, None
    return 0, True, payload


def serve():
    ctl = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="backslashreplace")
    preload = [name for name in os.environ.get(PRELOAD_ENV, "").split(",") if name]
    _send(ctl, {"type": "ready", "preload_errors": _preload(preload)})
    request = _receive(ctl)
    started = time.monotonic()
    exit_code, returned, result_json = _run(request)
    duration_ms = (time.monotonic() - started) * 1000.0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _send(ctl, {"type": "done", "exit_code": exit_code, "returned": returned,
                "result_json": result_json, "duration_ms": duration_ms})
    os._exit(exit_code & 0xFF)


if __name__ == "__main__":
    serve()
