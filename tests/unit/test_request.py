"""parse_run_request: the POST /run body, and a FastAPI-shaped 422 for every bad input."""

from __future__ import annotations

import base64
import json

import pytest

from orchestrator.errors import BadRequestError
from orchestrator.executor import RunRequest
from orchestrator.http.request import MAX_ARGUMENT_DEPTH, parse_run_request

LANGUAGES = ["python", "nodejs"]
CODE = "def main():\n    return 'héllo'\n"
CODE_B64 = base64.b64encode(CODE.encode()).decode()


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def parse(raw: bytes) -> RunRequest:
    return parse_run_request(raw, LANGUAGES, request_id="req-1")


def test_valid_body():
    request = parse(body(code_b64=CODE_B64, language="nodejs", arguments={"x": 1, "y": [1, {"z": None}]}))
    assert request == RunRequest(language="nodejs", source=CODE, arguments={"x": 1, "y": [1, {"z": None}]},
                                 request_id="req-1")


@pytest.mark.parametrize("fields", [{}, {"language": None}], ids=["absent", "null"])
def test_language_defaults_to_python(fields):
    assert parse(body(code_b64=CODE_B64, **fields)).language == "python"


@pytest.mark.parametrize("fields", [{}, {"arguments": None}], ids=["absent", "null"])
def test_arguments_default_to_empty(fields):
    assert parse(body(code_b64=CODE_B64, **fields)).arguments == {}


def test_unknown_fields_are_ignored():
    request = parse(body(code_b64=CODE_B64, base_image="python:3.11", timeout=5, extra={"a": 1}))
    assert request.source == CODE and request.language == "python" and request.arguments == {}


def test_empty_code_is_accepted():
    assert parse(body(code_b64="")).source == ""


def test_arguments_at_the_depth_limit_are_accepted():
    nested: dict = {}
    for _ in range(MAX_ARGUMENT_DEPTH - 1):
        nested = {"a": nested}
    assert parse(body(code_b64=CODE_B64, arguments=nested)).arguments == nested


def _deep_arguments(levels: int) -> dict:
    """A dict nested ``levels`` deep: {"a": {"a": ... {}}}."""
    nested: dict = {}
    for _ in range(levels - 1):
        nested = {"a": nested}
    return nested


def _deep_list(levels: int) -> list:
    """A list nested ``levels`` deep: [[...[]]]."""
    nested: list = []
    for _ in range(levels - 1):
        nested = [nested]
    return nested


BAD = [
    ("invalid_base64", body(code_b64="!!!not base64"), "value_error", ["body", "code_b64"],
     "Value error, Invalid base64 encoding", "!!!not base64"),
    ("bad_padding", body(code_b64="YWJ"), "value_error", ["body", "code_b64"],
     "Value error, Invalid base64 encoding", "YWJ"),
    ("missing_code", body(language="python"), "missing", ["body", "code_b64"], "Field required",
     {"language": "python"}),
    ("code_not_a_string", body(code_b64=123), "string_type", ["body", "code_b64"],
     "Input should be a valid string", 123),
    ("code_null", body(code_b64=None), "string_type", ["body", "code_b64"], "Input should be a valid string", None),
    ("not_utf8", body(code_b64=base64.b64encode(b"\xff\xfe").decode()), "value_error", ["body", "code_b64"],
     "Value error, code_b64 does not decode to UTF-8 text", "//4="),
    ("unknown_language", body(code_b64=CODE_B64, language="ruby"), "enum", ["body", "language"],
     "Input should be 'nodejs' or 'python'", "ruby"),
    ("language_not_a_string", body(code_b64=CODE_B64, language=["python"]), "enum", ["body", "language"],
     "Input should be 'nodejs' or 'python'", ["python"]),
    ("arguments_list", body(code_b64=CODE_B64, arguments=[1, 2]), "dict_type", ["body", "arguments"],
     "Input should be a valid dictionary", [1, 2]),
    ("arguments_string", body(code_b64=CODE_B64, arguments="x=1"), "dict_type", ["body", "arguments"],
     "Input should be a valid dictionary", "x=1"),
    ("arguments_number", body(code_b64=CODE_B64, arguments=3), "dict_type", ["body", "arguments"],
     "Input should be a valid dictionary", 3),
    ("malformed_json", b'{"code_b64": ', "json_invalid", ["body", 13], "JSON decode error", {}),
    ("not_utf8_json", b'{"code_b64": "\xff"}', "json_invalid", ["body", 0], "JSON decode error", {}),
    ("empty_body", b"", "json_invalid", ["body", 0], "JSON decode error", {}),
    ("array_body", b"[1, 2]", "model_attributes_type", ["body"],
     "Input should be a valid dictionary or object to extract fields from", [1, 2]),
    ("string_body", b'"code"', "model_attributes_type", ["body"],
     "Input should be a valid dictionary or object to extract fields from", "code"),
    ("deeply_nested_body", b"[" * 100000, "json_invalid", ["body"], "JSON decode error", None),
    ("deeply_nested_object", b'{"a":' * 100000, "json_invalid", ["body"], "JSON decode error", None),
    ("arguments_too_deep", body(code_b64=CODE_B64, arguments=_deep_arguments(MAX_ARGUMENT_DEPTH + 1)),
     "value_error", ["body", "arguments"], "Value error, arguments are nested deeper than 64 levels", None),
    ("arguments_too_deep_in_lists", body(code_b64=CODE_B64, arguments={"a": _deep_list(MAX_ARGUMENT_DEPTH)}),
     "value_error", ["body", "arguments"], "Value error, arguments are nested deeper than 64 levels", None),
]


@pytest.mark.parametrize(("raw", "kind", "loc", "msg", "value"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_input_is_a_422_with_fastapi_details(raw, kind, loc, msg, value):
    with pytest.raises(BadRequestError) as caught:
        parse(raw)
    error = caught.value
    assert error.status == 422
    assert isinstance(error.details, list) and len(error.details) == 1
    detail = error.details[0]
    assert {"type", "loc", "msg", "input"} <= set(detail)
    assert detail["type"] == kind
    assert detail["loc"] == loc
    assert detail["msg"].startswith(msg)
    assert detail["input"] == value
    assert str(error) == detail["msg"]
    json.dumps(error.details)  # the body must be serialisable


def test_long_invalid_base64_input_is_truncated_in_the_detail():
    with pytest.raises(BadRequestError) as caught:
        parse(body(code_b64="!" * 5000))
    assert caught.value.details[0]["input"] == "!" * 200
