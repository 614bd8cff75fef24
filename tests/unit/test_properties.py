"""Hypothesis properties of the pure parts: whatever comes in, a defined answer comes out.

- the request parser: any bytes give a ``RunRequest`` or a 4xx ``BadRequestError``, and it
  accepts exactly the bodies ``/openapi.json``'s ``RunRequest`` schema describes;
- the static check: any source text gives a verdict (issues, imported modules), never a crash,
  also for inputs built to be pathological (deep nesting, long lines, NUL bytes);
- settings parsing: any value of any variable gives settings or a ``ConfigError`` naming it;
- outcome classification: total over ``RunRecord``, and every body keeps the contract's rules.

No timing: "bounded time" is held by the pathological inputs finishing at all (each is a
worst case the parser or the checker could recurse or loop on), not by a stopwatch.
"""

from __future__ import annotations

import base64
import binascii
import json

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import outcome
from orchestrator.errors import BadRequestError, ConfigError
from orchestrator.executor import RunRequest
from orchestrator.http.openapi import STATUSES, run_request_schema
from orchestrator.http.request import parse_run_request
from orchestrator.settings import HostCapacity, Settings
from orchestrator.static_check import analyze

LANGUAGES = ["nodejs", "python"]
PROPERTY = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
RESULT_KEYS = {"status", "stdout", "stderr", "exit_code", "detail", "time_used_ms", "memory_used_kb",
               "resource_limit_type", "unauthorized_access_type", "runtime_error_type", "artifacts", "result"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
code_b64_values = st.one_of(
    st.text().map(lambda text: base64.b64encode(text.encode("utf-8")).decode()),  # what clients send
    st.binary().map(lambda data: base64.b64encode(data).decode()),  # base64 of bytes that may not be UTF-8
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n"),  # near-base64
    json_values)
request_bodies = st.fixed_dictionaries(
    {"code_b64": code_b64_values},
    optional={"language": st.sampled_from([*LANGUAGES, None, "ruby", "", "Python"]) | json_values,
              "arguments": json_values, "base_image": st.text()})


# -- the request parser ---------------------------------------------------------------------------

def _parse(raw: bytes) -> RunRequest | BadRequestError:
    try:
        return parse_run_request(raw, LANGUAGES)
    except BadRequestError as exc:
        return exc


def _check_refusal(refusal: BadRequestError) -> None:
    assert 400 <= refusal.status < 500
    assert refusal.details and all({"type", "loc", "msg", "input"} <= set(detail) for detail in refusal.details)
    json.dumps(refusal.details)  # the 422 body must serialise


@PROPERTY
@given(st.binary())
def test_any_bytes_give_a_request_or_a_4xx(raw):
    parsed = _parse(raw)
    if isinstance(parsed, BadRequestError):
        _check_refusal(parsed)
    else:
        assert parsed.language in LANGUAGES and isinstance(parsed.source, str) and isinstance(parsed.arguments, dict)


def _decodes_to_text(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    return True


@PROPERTY
@given(request_bodies)
def test_the_parser_accepts_exactly_what_the_openapi_schema_describes(fields):
    """Schema-valid with a ``code_b64`` that decodes to UTF-8 text (what the schema's
    contentEncoding and contentMediaType say) is accepted; anything else is a 422."""
    parsed = _parse(json.dumps(fields).encode())
    valid = jsonschema.Draft202012Validator(run_request_schema(LANGUAGES)).is_valid(fields)
    if valid and _decodes_to_text(fields["code_b64"]):
        assert isinstance(parsed, RunRequest), parsed.details
        assert parsed.source == base64.b64decode(fields["code_b64"]).decode("utf-8")
        assert parsed.language == (fields.get("language") or "python")
        assert parsed.arguments == (fields.get("arguments") or {})
    else:
        assert isinstance(parsed, BadRequestError) and parsed.status == 422


@PROPERTY
@given(json_values)
def test_any_json_document_gives_a_request_or_a_4xx(document):
    parsed = _parse(json.dumps(document).encode())
    if isinstance(parsed, BadRequestError):
        _check_refusal(parsed)


def test_pathological_bodies_are_refused_not_crashed_on():
    cases = [b"[" * 100_000, b'{"a":' * 100_000, b'{"code_b64": "' + b"A" * 2_000_000 + b'"}',
             b'{"code_b64": "", "arguments": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
             b'{"code_b64": 1' + b"0" * 5000 + b"}", b"\xff\xfe{}", b'{"code_b64": "\\ud800"}']
    for raw in cases:
        parsed = _parse(raw)
        if isinstance(parsed, BadRequestError):
            _check_refusal(parsed)


# -- the static check ------------------------------------------------------------------------------

def _verdict(source: str) -> None:
    for checker, scanner in (("python", "python"), ("nodejs", "nodejs")):
        issues, imported = analyze(checker, source, scanner, source)
        assert isinstance(issues, list) and all(isinstance(issue, str) and issue.startswith("Line ") for issue in issues)
        assert imported is None or isinstance(imported, frozenset)


@PROPERTY
@given(st.text())
def test_any_text_gets_a_verdict(source):
    _verdict(source)


python_fragments = st.sampled_from(["import os", "from os import path", "def main():", "    return 1", "eval(x)",
                                    "(", ")", "[", "lambda: open('f')", "x = [open(f) for f in y]", "class A:",
                                    "async def f(): yield exec(1)", "\t", "\\", '"""', "'", "#", "\x00", "@d"])


@PROPERTY
@given(st.lists(python_fragments, max_size=30).map("\n".join))
def test_any_arrangement_of_python_fragments_gets_a_verdict(source):
    _verdict(source)


def test_pathological_sources_get_a_verdict():
    """Each is a worst case for a recursive parser or a backtracking pattern: they finish."""
    cases = ["(" * 100_000, "[" * 10_000 + "]" * 10_000, "x = " + "-" * 100_000 + "1", "a." * 50_000 + "b",
             "if x:\n" + "".join(" " * i + "if x:\n" for i in range(1, 200)), "f(" * 3000 + ")" * 3000,
             "x" * 1_000_000, "\x00" * 1000, "require (" + " " * 100_000, "eval" + " " * 100_000 + "x",
             "import " + ", ".join(f"m{i}" for i in range(20_000)), "\ud800 surrogate"]
    for source in cases:
        _verdict(source)


# -- settings --------------------------------------------------------------------------------------

VARIABLES = ["SANDBOX_EXECUTOR_MANAGER_PORT", "SANDBOX_EXECUTOR_MANAGER_HOST", "SANDBOX_EXECUTOR_MANAGER_POOL_SIZE",
             "SANDBOX_POOL_SIZE_PYTHON", "SANDBOX_POOL_BOOT_PARALLELISM", "SANDBOX_START_PARALLELISM",
             "SANDBOX_SNAPSHOTS", "SANDBOX_POOL_MAX_AGE", "SANDBOX_TIMEOUT", "SANDBOX_MAX_MEMORY", "SANDBOX_MAX_CPUS",
             "SANDBOX_MAX_PIDS", "SANDBOX_MAX_OUTPUT", "SANDBOX_TMP_SIZE", "SANDBOX_WORKSPACE_SIZE",
             "SANDBOX_TOTAL_MEMORY", "SANDBOX_TOTAL_CPUS", "SANDBOX_MAX_CONCURRENCY", "SANDBOX_QUEUE_TIMEOUT",
             "SANDBOX_BOOT_TIMEOUT", "SANDBOX_MAX_REQUEST_SIZE", "SANDBOX_SHUTDOWN_GRACE",
             "SANDBOX_ENABLE_AST_ANALYSIS", "SANDBOX_ENABLE_SECCOMP", "SANDBOX_SECCOMP_PROFILE",
             "SANDBOX_CONTAINER_NETWORK", "SANDBOX_EGRESS_ALLOW", "SANDBOX_EGRESS_SUBNET",
             "SANDBOX_EGRESS_ALLOW_PRIVATE", "SANDBOX_RUNSC", "SANDBOX_RUNSC_PLATFORM", "SANDBOX_RUNSC_DEBUG_LOG_DIR",
             "SANDBOX_STATE_DIR", "SANDBOX_SNAPSHOT_DIR", "SANDBOX_SEALED", "SANDBOX_SEALED_DIR", "SANDBOX_ROOTFS_DIR", "SANDBOX_LANGUAGES_DIR",
             "SANDBOX_CGROUP_PARENT", "SANDBOX_UID", "SANDBOX_GID", "SANDBOX_LOG_LEVEL", "SANDBOX_LOG_FORMAT",
             "SANDBOX_RUN_RATE_LIMIT"]
CAPACITY = HostCapacity(cpus=2, memory_bytes=8 * 1024**3)
setting_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["0", "-1", "1", "65536", "1e9", "nan", "inf", "10s", "1m30s", "0s", "256m", "0m", "1g", "99999g",
                     "true", "maybe", "off", "/tmp/x", "relative/path", "a//b", "../up", "10.0.0.0/8", "1.2.3.4:1-2",
                     "300.1.1.1/8", "120/minute", "0/minute", "5/fortnight", " 7 ", "\x00", "١٢٣"]))


@PROPERTY
@given(st.sampled_from(VARIABLES), setting_values)
def test_any_value_of_any_variable_gives_settings_or_an_error_naming_it(variable, value):
    try:
        Settings.from_env({variable: value}, capacity=CAPACITY)
    except ConfigError as exc:
        assert variable in str(exc) or (variable == "SANDBOX_MAX_MEMORY" and "SANDBOX_TOTAL_MEMORY" in str(exc)), exc


# -- outcome classification ------------------------------------------------------------------------

rarely = st.sampled_from([False, False, False, True])  # most runs are not stopped: reach the later branches
run_records = st.builds(
    outcome.RunRecord,
    exit_code=st.just(0) | st.none() | st.integers(min_value=-2**31, max_value=2**31) | st.sampled_from([1, 137, 139]),
    returned=st.booleans(),
    result_json=st.none() | st.text(max_size=50) | st.just('{"present": true, "value": NaN, "type": "json"}') | json_values.map(
        lambda value: json.dumps({"present": True, "value": value, "type": "json"})),
    has_result_channel=st.booleans(),
    reported=st.booleans(),
    stdout=st.binary(max_size=200) | st.sampled_from([b"__RAGFLOW_RESULT__:eyJ2YWx1ZSI6IDF9\nok\n", b"\xff\xfe"]),
    stderr=st.binary(max_size=200) | st.sampled_from([b"", b"   ", b"Permission denied", b"MemoryError\n",
                                                       b"Operation not permitted"]),
    timed_out=rarely,
    output_exceeded=st.none() | st.none() | st.sampled_from(["stdout", "stderr", "result"]),
    oom_killed=rarely,
    pids_limited=rarely,
    wall_ms=st.floats(min_value=0, max_value=1e9),
    sandbox_ms=st.none() | st.floats(min_value=0, max_value=1e9),
    cpu_ms=st.none() | st.floats(min_value=0, max_value=1e9),
    memory_peak_bytes=st.none() | st.integers(min_value=0, max_value=2**40),
    artifacts=st.lists(st.fixed_dictionaries({"name": st.text(max_size=8), "mime_type": st.just("image/png"),
                                              "size": st.integers(1, 100), "content_b64": st.just("AA==")}),
                       max_size=2))


@settings(PROPERTY, max_examples=2000)
@given(run_records)
def test_classification_is_total_and_keeps_the_contract(record):
    body = outcome.classify(record, memory_limit_bytes=256 * 1024**2, output_limit_bytes=1024**2)
    assert set(body) == RESULT_KEYS
    assert body["status"] in STATUSES and isinstance(body["exit_code"], int)
    json.dumps(body, allow_nan=False)
    assert outcome.RESULT_MARKER_PREFIX not in body["stdout"]
    if body["status"] == "success":
        assert body["exit_code"] == 0
        assert body["result"] is None or set(body["result"]) == {"present", "value", "type"}
    else:
        assert body["stdout"] == "" and body["stderr"] != ""
        assert body["result"] is None and body["artifacts"] == []
