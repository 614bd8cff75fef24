"""In-sandbox runner for Python: speaks the control protocol on fd 0, runs ``main(**arguments)``.

Protocol (one JSON object per line on fd 0, a socket to the service):
  runner -> service  {"type": "ready", "preload_errors": {module: error}}
  service -> runner  {"type": "resume"}             (only to a sandbox restored from a snapshot)
  runner -> service  {"type": "ready", "preload_errors": {...}, "reseeded": [generator, ...]}
  service -> runner  {"type": "run", "source": file name in the working directory, "code": its text
                      (optional), "arguments": {...}}
  runner -> service  {"type": "artifact", "name": str, "size": n} and then exactly n bytes, once
                      per artifact (only when the run frame asks, see below), then
  runner -> service  {"type": "done", "exit_code": n, "returned": bool, "result_json": str|null,
                      "duration_ms": float}
A sealed sandbox (its workspace is a tmpfs inside gVisor, not a host directory: nothing of
it needs runsc's gofer) has the run frame say so: ``"write_source": true`` has the runner
write ``code`` to the source file first, and ``"artifacts": {"max_count", "max_bytes",
"suffixes", "exclude"}`` has it send, after a run that ended with exit code 0, the files
``artifacts/`` and then the workspace root hold, by the rules the service applies to a host
workspace.  The service checks every artifact frame again: this process runs the user's code.
A snapshot is taken while the runner waits for its request, so every sandbox restored from it
is a clone of that process: ``resume`` reseeds, from fresh entropy, every generator seeded
before the checkpoint (``_reseed``) before any user code can draw from one.
User code never sees the control socket on a standard stream: fd 0 becomes /dev/null before
the user's module is loaded, and the result travels on that socket, not on stdout, so
printing a fake result marker cannot forge ``result``.

Start-up time matters (it is most of a cold request under gVisor's ptrace platform), so this
file imports nothing but ``os`` and ``sys`` on its way to "ready": it reads and writes fd 0
with ``os.read``/``os.write`` instead of the ``socket`` module, compiles the user's file
itself instead of importing ``importlib.util``, imports ``traceback`` only when it needs it,
and encodes and decodes JSON with the ``_json`` accelerator directly — the same C code the
``json`` package uses, without the ~35 ms of ``re`` and ``enum`` that importing ``json``
costs there — falling back to ``json`` where ``_json`` is missing.  Standard library only,
any Python 3.8+.
"""

import os
import sys

PRELOAD_ENV = "SANDBOX_PRELOAD"
CONTROL_FD = 0


def _not_serializable(value):
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def _json_codec():
    """(dumps, loads) with json.dumps(ensure_ascii=False, allow_nan=False, compact) semantics."""
    try:
        import _json

        def dumps(value):
            if isinstance(value, str):
                return _json.encode_basestring(value)
            # A fresh encoder per call: its circular-reference markers must not outlive a failure.
            encode = _json.make_encoder({}, _not_serializable, _json.encode_basestring, None, ":", ",",
                                        False, False, False)
            return "".join(encode(value, 0))

        class _Context:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            memo = {}

            @staticmethod
            def parse_constant(name):
                return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]

        scan = _json.make_scanner(_Context())

        def loads(text):
            start = len(text) - len(text.lstrip(" \t\n\r"))
            try:
                value, end = scan(text, start)
            except StopIteration as exc:
                raise ValueError("invalid JSON at offset %d" % exc.value) from None
            if text[end:].strip(" \t\n\r"):
                raise ValueError("extra data after the JSON value")
            return value

        dumps({"probe": [1, 2.5, None, True, "é"]})
        loads('{"probe": [1, 2.5, null, true, "\\u00e9"]}')
        return dumps, loads
    except Exception:  # a Python without the accelerator, or with another signature
        import json

        return (lambda value: json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")),
                json.loads)


_dumps, _loads = _json_codec()


def _send(fd, message):
    data = (_dumps(message) + "\n").encode("utf-8")
    while data:
        data = data[os.write(fd, data):]


def _receive(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise EOFError("control channel closed before a request arrived")
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return _loads(b"".join(chunks).decode("utf-8"))


def _preload(modules):
    errors = {}
    for name in modules:
        try:
            __import__(name)
        except BaseException as exc:  # a broken preload must not kill the sandbox
            errors[name] = "%s: %s" % (type(exc).__name__, exc)
    return errors


def _reseed():
    """Reseed what the process seeded before a checkpoint; return the names of what was."""
    reseeded = []
    random = sys.modules.get("random")
    if random is not None:
        random.seed()  # from os.urandom: the kernel's entropy, fresh in every restored sandbox
        reseeded.append("random")
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # the legacy global RandomState behind numpy.random.rand() and friends
        reseeded.append("numpy.random")
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None and hasattr(tempfile, "_name_sequence"):
        tempfile._name_sequence = None  # its own Random, made on first use
        reseeded.append("tempfile")
    ssl = sys.modules.get("_ssl")
    if ssl is not None:
        ssl.RAND_add(os.urandom(48), 48.0)  # OpenSSL's DRBG state is part of the snapshot too
        reseeded.append("ssl")
    return reseeded


def _acceptable(name, suffixes):
    """The service's rule for an artifact's name (orchestrator.artifacts.is_acceptable_name)."""
    return (bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name and ".." not in name
            and not any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
            and os.path.splitext(name)[1].lower() in suffixes)


def _regular_content(directory, name, max_bytes):
    """A non-empty regular file's bytes (no symlink followed), or None."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(os.path.join(directory, name), flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (info.st_mode & 0o170000) != 0o100000 or not 0 < info.st_size <= max_bytes:
            return None
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
        return data if 0 < len(data) <= max_bytes else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _artifacts(workdir, rules):
    """(name, bytes) of what a sealed workspace holds: ``artifacts/`` first, then the root
    (``workdir``, wherever the user's code moved the current directory to)."""
    suffixes = frozenset(rules.get("suffixes") or ())
    max_count, max_bytes = int(rules.get("max_count", 0)), int(rules.get("max_bytes", 0))
    found, taken = [], set(rules.get("exclude") or ())
    for directory in (os.path.join(workdir, "artifacts"), workdir):
        try:
            names = sorted(os.listdir(directory)) if not os.path.islink(directory) else []
        except OSError:
            names = []
        for name in names:
            if len(found) >= max_count:
                return found
            if name in taken or not _acceptable(name, suffixes):
                continue
            data = _regular_content(directory, name, max_bytes)
            if data is not None:
                found.append((name, data))
                taken.add(name)
    return found


def _directory_marks(workdir):
    """When the workspace and its artifacts/ last gained or lost an entry.  Equal before and
    after a run: no file was created there, so no listing is needed (each system call is a
    round trip to the sentry under ptrace; the two listings cost ~1 ms)."""
    marks = []
    for directory in (workdir, os.path.join(workdir, "artifacts")):
        try:
            info = os.lstat(directory)
            marks.append((info.st_mtime_ns, info.st_ctime_ns, info.st_ino))
        except OSError:
            marks.append(None)
    return marks


def _send_artifacts(fd, workdir, rules):
    for name, data in _artifacts(workdir, rules):
        _send(fd, {"type": "artifact", "name": name, "size": len(data)})
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


def _write_source(source, text):
    """The user's file, in a sealed workspace that only this sandbox sees."""
    data = memoryview(text.encode("utf-8"))
    fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o444)
    try:  # os calls only: each is a round trip to the sentry (fdopen adds an fstat and an ioctl)
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _print_user_traceback(exc):
    """The exception as Python would print it, without this runner's own frames."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


def _load_main(source, text=None):
    """Run the user's file as module ``main`` (as ``from main import main`` would) and
    return its ``main`` attribute.  ``text`` is the file's content when the request carries
    it (one file system round trip less); tracebacks still point at the file."""
    if text is None:
        with open(source, "rb") as handle:
            text = handle.read()
    code = compile(text, source, "exec", dont_inherit=True)
    module = type(sys)("main")
    module.__file__ = source
    module.__builtins__ = __builtins__
    sys.modules["main"] = module
    exec(code, module.__dict__)
    return getattr(module, "main", None)


def _run(request):
    """Load the user's module and call main; return (exit_code, returned, result_json)."""
    workdir = os.getcwd()
    source = os.path.join(workdir, request["source"])
    sys.argv = [source]
    sys.path.insert(0, workdir)
    try:
        main = _load_main(source, request.get("code"))
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
        payload = _dumps({"present": True, "value": value, "type": "json"})
    except (TypeError, ValueError, RecursionError) as exc:
        print("TypeError: main() returned a value that is not JSON-serializable: %s" % exc, file=sys.stderr)
        return 1, False, None
    return 0, True, payload


def serve():
    import time

    ctl = os.dup(CONTROL_FD)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, CONTROL_FD)
    os.close(null)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="backslashreplace")
    try:
        os.mkdir("artifacts", 0o755)  # a sealed workspace starts empty; a host one has it already
    except OSError:
        pass
    preload = [name for name in os.environ.get(PRELOAD_ENV, "").split(",") if name]
    preload_errors = _preload(preload)
    _send(ctl, {"type": "ready", "preload_errors": preload_errors})
    request = _receive(ctl)
    while request.get("type") == "resume":
        _send(ctl, {"type": "ready", "preload_errors": preload_errors, "reseeded": _reseed()})
        request = _receive(ctl)
    workdir = os.getcwd()
    started = time.monotonic()
    if request.get("write_source") and request.get("code") is not None:
        try:
            _write_source(os.path.join(workdir, request["source"]), request["code"])
        except OSError as exc:
            print("Error: writing the source failed: %s" % exc, file=sys.stderr)
    marks = _directory_marks(workdir) if request.get("artifacts") else None
    exit_code, returned, result_json = _run(request)
    duration_ms = (time.monotonic() - started) * 1000.0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if exit_code == 0 and request.get("artifacts") and _directory_marks(workdir) != marks:
        try:
            _send_artifacts(ctl, workdir, request["artifacts"])
        except (OSError, TypeError, ValueError) as exc:
            print("Error: sending the artifacts failed: %s" % exc, file=sys.stderr)
    _send(ctl, {"type": "done", "exit_code": exit_code, "returned": returned,
                "result_json": result_json, "duration_ms": duration_ms})
    os._exit(exit_code & 0xFF)


if __name__ == "__main__":
    serve()
