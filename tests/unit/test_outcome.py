"""classify(): every row of the contract's outcome table, and the invariants RAGFlow relies on
(every key present; on non-success stdout "" and stderr non-empty, no result, no artifacts)."""

from __future__ import annotations

import json

import pytest

from orchestrator.outcome import (
    RunRecord,
    busy_result,
    classify,
    clean_stdout,
    internal_error_result,
    rate_limited_result,
    unsafe_code_result,
)

CONTRACT_KEYS = {"status", "stdout", "stderr", "exit_code", "detail", "time_used_ms", "memory_used_kb",
                 "resource_limit_type", "unauthorized_access_type", "runtime_error_type", "artifacts", "result"}
MEMORY = 256 * 1024**2
OUTPUT = 1024**2
ARTIFACT = {"name": "chart.png", "mime_type": "image/png", "size": 3, "content_b64": "AAEC"}
RESULT = {"present": True, "value": {"answer": 42}, "type": "json"}


def run(**fields) -> dict:
    fields.setdefault("wall_ms", 12.3456)
    return classify(RunRecord(**fields), memory_limit_bytes=MEMORY, output_limit_bytes=OUTPUT)


def test_success_with_result_and_artifacts():
    body = run(exit_code=0, returned=True, result_json=json.dumps(RESULT), reported=True,
               stdout=b"hello\n", stderr=b"a warning\n", artifacts=[ARTIFACT], memory_peak_bytes=2048 * 1024)
    assert body == {
        "status": "success", "stdout": "hello\n", "stderr": "a warning\n", "exit_code": 0, "detail": None,
        "time_used_ms": 12.346, "memory_used_kb": 2048.0, "resource_limit_type": None,
        "unauthorized_access_type": None, "runtime_error_type": None, "artifacts": [ARTIFACT], "result": RESULT,
    }


def test_success_strips_every_marker_line_printed_by_user_code():
    fake = "__RAGFLOW_RESULT__:" + "eyJwcmVzZW50IjogdHJ1ZSwgInZhbHVlIjogImZvcmdlZCJ9"
    stdout = f"before\n{fake}\nmiddle\n{fake}\nafter".encode()
    body = run(exit_code=0, returned=True, result_json=json.dumps(RESULT), stdout=stdout)
    assert body["stdout"] == "before\nmiddle\nafter"
    assert "__RAGFLOW_RESULT__:" not in body["stdout"]
    assert body["result"] == RESULT


def test_a_printed_marker_does_not_forge_a_result_when_main_did_not_return():
    fake = b'__RAGFLOW_RESULT__:eyJwcmVzZW50IjogdHJ1ZX0=\n'
    body = run(exit_code=0, returned=False, stdout=fake)
    assert body["status"] == "program_error"
    assert body["result"] is None and body["stdout"] == ""


@pytest.mark.parametrize(("text", "expected"), [
    ("plain\n", "plain\n"),
    ("__RAGFLOW_RESULT__:abc", ""),
    ("a\r\n__RAGFLOW_RESULT__:x\r\nb", "a\r\nb"),
    ("x __RAGFLOW_RESULT__:not at line start\n", "x __RAGFLOW_RESULT__:not at line start\n"),
])
def test_clean_stdout(text, expected):
    assert clean_stdout(text) == expected


def test_success_without_result_channel_is_success_with_null_result():
    body = run(exit_code=0, has_result_channel=False, stdout=b"out\n")
    assert body["status"] == "success"
    assert body["result"] is None
    assert body["stdout"] == "out\n"
    assert body["exit_code"] == 0


def test_returned_none_is_a_present_null_result():
    body = run(exit_code=0, returned=True, result_json='{"present": true, "value": null, "type": "json"}')
    assert body["result"] == {"present": True, "value": None, "type": "json"}


FAILURES = [
    # id, record fields, expected subset
    ("timeout", dict(timed_out=True, stdout=b"partial", stderr=b"x"),
     dict(status="resource_limit_exceeded", exit_code=-124, stderr="Execution timeout", resource_limit_type="time")),
    ("timeout_wins_over_oom", dict(timed_out=True, oom_killed=True, exit_code=137),
     dict(status="resource_limit_exceeded", exit_code=-124, resource_limit_type="time")),
    ("oom", dict(oom_killed=True, exit_code=137, stdout=b"partial"),
     dict(status="resource_limit_exceeded", exit_code=-137, resource_limit_type="memory",
          stderr="Memory limit exceeded (killed by OOM; limit 256 MiB)")),
    ("output_cap", dict(output_exceeded="stdout", stdout=b"x" * 100),
     dict(status="resource_limit_exceeded", exit_code=-25, resource_limit_type="output",
          detail="stdout_limit_exceeded",
          stderr="Output limit exceeded: stdout passed 1048576 bytes; the run was stopped")),
    ("permission_denied", dict(exit_code=1, reported=True, stdout=b"partial",
                               stderr=b"PermissionError: [Errno 13] Permission denied: '/etc/shadow'\n"),
     dict(status="unauthorized_access", exit_code=1, unauthorized_access_type="file_access",
          stderr="PermissionError: [Errno 13] Permission denied: '/etc/shadow'\n")),
    ("operation_not_permitted", dict(exit_code=1, reported=True,
                                     stderr=b"PermissionError: [Errno 1] Operation not permitted\n"),
     dict(status="unauthorized_access", exit_code=1, unauthorized_access_type="disallowed_syscall")),
    ("memory_error", dict(exit_code=1, reported=True, stderr=b"Traceback ...\nMemoryError\n"),
     dict(status="resource_limit_exceeded", exit_code=1, resource_limit_type="memory",
          stderr="Traceback ...\nMemoryError\n")),
    ("killed_by_signal", dict(exit_code=137),
     dict(status="runtime_error", exit_code=-9, runtime_error_type="signalled",
          stderr="Process killed by signal 9 (SIGKILL)")),
    ("killed_by_signal_keeps_stderr", dict(exit_code=139, stderr=b"oops"),
     dict(status="runtime_error", exit_code=-11, runtime_error_type="signalled",
          stderr="oops\nProcess killed by signal 11 (SIGSEGV)")),
    ("reported_137_is_an_exit_code", dict(exit_code=137, reported=True, stderr=b"bye"),
     dict(status="program_error", exit_code=137, runtime_error_type="nonzero_exit", stderr="bye")),
    ("nonzero_exit", dict(exit_code=1, reported=True, stdout=b"partial\n",
                          stderr=b"Traceback...\nZeroDivisionError: division by zero\n"),
     dict(status="program_error", exit_code=1, runtime_error_type="nonzero_exit",
          stderr="Traceback...\nZeroDivisionError: division by zero\n")),
    ("nonzero_exit_silent", dict(exit_code=3),
     dict(status="program_error", exit_code=3, runtime_error_type="nonzero_exit",
          stderr="Process exited with code 3")),
    ("nonzero_exit_whitespace_stderr", dict(exit_code=2, stderr=b"  \n"),
     dict(status="program_error", exit_code=2, stderr="Process exited with code 2")),
    ("no_exit_code", dict(exit_code=None),
     dict(status="program_error", exit_code=-1, runtime_error_type="nonzero_exit")),
    ("exit_0_without_return", dict(exit_code=0, returned=False, stdout=b"printed\n"),
     dict(status="program_error", exit_code=0, runtime_error_type=None,
          stderr="Error: the program exited with status 0 before main() returned, so there is no result")),
    ("exit_0_without_return_keeps_stderr", dict(exit_code=0, returned=False, stderr=b"warn"),
     dict(status="program_error", exit_code=0,
          stderr="warn\nError: the program exited with status 0 before main() returned, so there is no result")),
    ("invalid_utf8_stderr", dict(exit_code=1, stderr=b"bad \xff byte"),
     dict(status="program_error", exit_code=1, stderr="bad \ufffd byte")),
    ("pids_limit_killed_the_sandbox", dict(pids_limited=True, exit_code=2),
     dict(status="resource_limit_exceeded", exit_code=2, resource_limit_type=None, detail="pids_limit_exceeded",
          stderr="Process limit exceeded: the program started more processes than the sandbox allows "
                 "(SANDBOX_MAX_PIDS); the sandbox was stopped")),
    ("pids_limit_met_by_a_program_that_went_on", dict(pids_limited=True, exit_code=1, reported=True,
                                                      stderr=b"BlockingIOError: [Errno 11]\n"),
     dict(status="program_error", exit_code=1, runtime_error_type="nonzero_exit", detail=None)),
]


@pytest.mark.parametrize(("fields", "expected"), [(f, e) for _, f, e in FAILURES], ids=[i for i, _, _ in FAILURES])
def test_failure_rows(fields, expected):
    body = run(artifacts=[ARTIFACT], result_json=json.dumps(RESULT), memory_peak_bytes=4096, **fields)
    for key, value in expected.items():
        assert body[key] == value, key
    # Invariants of every non-success.
    assert body["status"] != "success"
    assert set(body) == CONTRACT_KEYS
    assert body["stdout"] == ""
    assert body["stderr"].strip() != ""
    assert body["result"] is None
    assert body["artifacts"] == []
    assert body["time_used_ms"] == 12.346
    assert body["memory_used_kb"] == 4.0


@pytest.mark.parametrize(("factory", "expected"), [
    (lambda: unsafe_code_result(["Line 1: import of os", "Line 3: call to eval"]),
     dict(exit_code=-999, detail="Code is unsafe", stderr="Line 1: import of os\nLine 3: call to eval")),
    (busy_result, dict(exit_code=-10, detail="no_available_container", stderr="Container pool is busy")),
    (lambda: internal_error_result("runsc failed to start"),
     dict(exit_code=-3, detail="internal_error", stderr="runsc failed to start")),
    (lambda: internal_error_result(""), dict(exit_code=-3, detail="internal_error", stderr="Execution failed")),
    (rate_limited_result, dict(exit_code=-429, detail="Too many requests, please try again later",
                               stderr="Too many requests, please try again later")),
], ids=["unsafe", "busy", "internal", "internal_empty_reason", "rate_limited"])
def test_service_results(factory, expected):
    body = factory()
    assert set(body) == CONTRACT_KEYS
    assert body == {
        "status": "program_runner_error", "stdout": "", "exit_code": expected["exit_code"],
        "stderr": expected["stderr"], "detail": expected["detail"], "time_used_ms": None, "memory_used_kb": None,
        "resource_limit_type": None, "unauthorized_access_type": None, "runtime_error_type": None,
        "artifacts": [], "result": None,
    }


def test_service_results_are_fresh_objects():
    first = busy_result()
    first["artifacts"].append("x")
    assert busy_result()["artifacts"] == []


def test_time_used_is_filled_and_memory_null_when_unknown():
    body = run(exit_code=0, returned=True, result_json=json.dumps(RESULT), wall_ms=0.0004)
    assert body["time_used_ms"] == 0.0
    assert body["memory_used_kb"] is None
    assert isinstance(body["time_used_ms"], float)


def test_oversized_result_names_the_result_limit():
    body = classify(RunRecord(output_exceeded="result", wall_ms=5.0), memory_limit_bytes=1 << 28,
                    output_limit_bytes=1 << 20, result_limit_bytes=16 << 20)
    assert body["exit_code"] == -25 and body["resource_limit_type"] == "output"
    assert body["stderr"].startswith(f"Output limit exceeded: result passed {16 << 20} bytes")
    assert body["stdout"] == "" and body["result"] is None


@pytest.mark.parametrize("result_json", ["not json", "5", '{"present": true}', '{"present": true, "value": NaN, "type": "json"}'])
def test_a_result_that_is_not_a_structured_json_result_is_an_internal_error(result_json):
    """Our runner always sends one; anything else (a forged frame) is our failure, not a success."""
    body = run(exit_code=0, returned=True, reported=True, result_json=result_json, stdout=b"out")
    assert body["status"] == "program_runner_error" and body["exit_code"] == -3 and body["detail"] == "internal_error"
    assert body["stdout"] == "" and body["result"] is None
