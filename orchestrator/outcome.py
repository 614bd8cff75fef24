"""From what a sandbox reported to RAGFlow's CodeExecutionResult: pure classification.

``RunRecord`` is the raw account of one run; ``classify`` maps it onto the contract's table.
Rules RAGFlow depends on and that hold for every body built here: every key is present; on
every non-success ``stdout`` is "" and ``stderr`` is non-empty; ``result`` and ``artifacts``
are set only on success; result-marker lines never survive in ``stdout`` (Go clients re-run
marker extraction on it, so a printed fake marker must not reach them).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field

RESULT_MARKER_PREFIX = "__RAGFLOW_RESULT__:"
EXIT_TIMEOUT = -124
EXIT_OOM = -137
EXIT_OUTPUT = -25  # after SIGXFSZ (25), "file size limit exceeded"
EXIT_UNSAFE = -999
EXIT_BUSY = -10
EXIT_INTERNAL = -3
EXIT_RATE_LIMITED = -429
RESULT_LIMIT_BYTES = 16 * 1024 * 1024  # the largest result main() may return, JSON-encoded


@dataclass
class RunRecord:
    """What happened in one run, as observed by the service."""

    exit_code: int | None = None  # the program's exit status; None when we killed it
    returned: bool = False  # main() returned and its value was serialised (runner protocol)
    result_json: str | None = None
    has_result_channel: bool = True  # False for the script protocol: no structured result exists
    reported: bool = False  # the runner sent its final frame (so exit_code is its own word)
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    output_exceeded: str | None = None  # "stdout", "stderr" or "result" (main()'s value too large)
    oom_killed: bool = False
    pids_limited: bool = False  # the pids limit refused a fork (it can kill gVisor's own sandbox process)
    wall_ms: float = 0.0
    sandbox_ms: float | None = None  # the runner's own timing of the user's code
    cpu_ms: float | None = None  # CPU time the sandbox used for the run (cgroup)
    memory_peak_bytes: int | None = None
    artifacts: list[dict] = field(default_factory=list)


def empty_result(**fields) -> dict:
    """A result body with every key present."""
    body = {
        "status": "success",
        "stdout": "",
        "stderr": "",
        "exit_code": 0,
        "detail": None,
        "time_used_ms": None,
        "memory_used_kb": None,
        "resource_limit_type": None,
        "unauthorized_access_type": None,
        "runtime_error_type": None,
        "artifacts": [],
        "result": None,
    }
    body.update(fields)
    return body


def failure_result(status: str, exit_code: int, stderr: str, **fields) -> dict:
    return empty_result(status=status, exit_code=exit_code, stderr=stderr or "Execution failed", **fields)


def unsafe_code_result(issue_lines: list[str]) -> dict:
    return failure_result("program_runner_error", EXIT_UNSAFE, "\n".join(issue_lines), detail="Code is unsafe")


def busy_result() -> dict:
    return failure_result("program_runner_error", EXIT_BUSY, "Container pool is busy", detail="no_available_container")


def internal_error_result(reason: str) -> dict:
    return failure_result("program_runner_error", EXIT_INTERNAL, reason, detail="internal_error")


def rate_limited_result() -> dict:
    message = "Too many requests, please try again later"
    return failure_result("program_runner_error", EXIT_RATE_LIMITED, message, detail=message)


def clean_stdout(text: str) -> str:
    """Drop every result-marker line, keeping the rest byte for byte."""
    if RESULT_MARKER_PREFIX not in text:
        return text
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(RESULT_MARKER_PREFIX))


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _structured_result(text: str) -> dict | None:
    """``{"present", "value", "type"}`` decoded from the runner's ``result_json``, or None."""
    try:
        result = json.loads(text, parse_constant=_refuse_constant)  # NaN and Infinity are not JSON
    except (ValueError, RecursionError):
        return None
    if not isinstance(result, dict) or set(result) != {"present", "value", "type"}:
        return None
    return result


def classify(record: RunRecord, *, memory_limit_bytes: int, output_limit_bytes: int,
             result_limit_bytes: int = RESULT_LIMIT_BYTES) -> dict:
    """The CodeExecutionResult for ``record``."""
    usage = {
        "time_used_ms": round(record.wall_ms, 3),
        "memory_used_kb": None if record.memory_peak_bytes is None else record.memory_peak_bytes / 1024.0,
    }
    stderr = _decode(record.stderr)
    if record.timed_out:
        return failure_result("resource_limit_exceeded", EXIT_TIMEOUT, "Execution timeout",
                              resource_limit_type="time", **usage)
    if record.oom_killed:
        return failure_result("resource_limit_exceeded", EXIT_OOM,
                              f"Memory limit exceeded (killed by OOM; limit {memory_limit_bytes // 1024**2} MiB)",
                              resource_limit_type="memory", **usage)
    if record.pids_limited and not record.reported and not record.output_exceeded:
        # Under ptrace every process of the program is a host task too: a fork bomb can make
        # gVisor itself fail to start a thread, and the sandbox dies (exit 2, a Go panic).
        # resource_limit_type stays null: RAGFlow's clients know only time, memory and output.
        code = record.exit_code if record.exit_code is not None else -1
        return failure_result("resource_limit_exceeded", code,
                              "Process limit exceeded: the program started more processes than the sandbox "
                              "allows (SANDBOX_MAX_PIDS); the sandbox was stopped",
                              detail="pids_limit_exceeded", **usage)
    if record.output_exceeded:
        limit = result_limit_bytes if record.output_exceeded == "result" else output_limit_bytes
        return failure_result(
            "resource_limit_exceeded", EXIT_OUTPUT,
            f"Output limit exceeded: {record.output_exceeded} passed {limit} bytes; the run was stopped",
            resource_limit_type="output", detail=f"{record.output_exceeded}_limit_exceeded", **usage)

    code = record.exit_code if record.exit_code is not None else -1
    if code == 0 and (record.returned or not record.has_result_channel):
        result = None
        if record.returned and record.result_json:
            result = _structured_result(record.result_json)
            if result is None:  # our runner always sends one; a broken frame is our failure
                return internal_error_result("run: the runner's result is not a structured JSON result") | usage
        return empty_result(stdout=clean_stdout(_decode(record.stdout)), stderr=stderr, exit_code=0,
                            artifacts=record.artifacts, result=result, **usage)
    if code == 0:
        # Exited with status 0 without main() returning (sys.exit(0), os._exit(0), process.exit(0)).
        message = "Error: the program exited with status 0 before main() returned, so there is no result"
        return failure_result("program_error", 0, (stderr + "\n" if stderr else "") + message, **usage)
    if not record.reported and code > 128 and code - 128 < 65:
        number = code - 128
        message = f"Process killed by signal {number} ({_signal_name(number)})"
        return failure_result("runtime_error", -number, (stderr + "\n" if stderr else "") + message,
                              runtime_error_type="signalled", **usage)
    if not stderr.strip():
        stderr = f"Process exited with code {code}"
    if "Permission denied" in stderr:
        return failure_result("unauthorized_access", code, stderr, unauthorized_access_type="file_access", **usage)
    if "Operation not permitted" in stderr:
        return failure_result("unauthorized_access", code, stderr, unauthorized_access_type="disallowed_syscall",
                              **usage)
    if "MemoryError" in stderr:
        return failure_result("resource_limit_exceeded", code, stderr, resource_limit_type="memory", **usage)
    return failure_result("program_error", code, stderr, runtime_error_type="nonzero_exit", **usage)
