"""Parsing a ``POST /run`` body into a ``RunRequest``, with FastAPI-shaped 422 details.

Pure: bytes in, ``RunRequest`` or ``BadRequestError`` out.  Unknown fields are ignored (the Go
client may send ``base_image``); ``arguments`` null means ``{}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable

from orchestrator.errors import BadRequestError
from orchestrator.executor import RunRequest

MAX_ARGUMENT_DEPTH = 64


def _error(kind: str, loc: list, msg: str, value, **extra) -> BadRequestError:
    detail = {"type": kind, "loc": loc, "msg": msg, "input": value, **extra}
    return BadRequestError(msg, details=[detail])


def _depth(value, limit: int) -> int:
    """Nesting depth of a JSON value, iteratively; stops counting past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_run_request(body: bytes, languages: Iterable[str], request_id: str = "-") -> RunRequest:
    known = sorted(languages)
    try:
        data = json.loads(body)
    except RecursionError:
        raise _error("json_invalid", ["body"], "JSON decode error", None,
                     ctx={"error": "nesting too deep"}) from None
    except (ValueError, UnicodeDecodeError) as exc:
        position = getattr(exc, "pos", 0)
        raise _error("json_invalid", ["body", position], "JSON decode error", {},
                     ctx={"error": getattr(exc, "msg", str(exc))}) from None
    if not isinstance(data, dict):
        raise _error("model_attributes_type", ["body"],
                     "Input should be a valid dictionary or object to extract fields from", data)

    if "code_b64" not in data:
        raise _error("missing", ["body", "code_b64"], "Field required", data)
    code_b64 = data["code_b64"]
    if not isinstance(code_b64, str):
        raise _error("string_type", ["body", "code_b64"], "Input should be a valid string", code_b64)
    try:
        raw = base64.b64decode(code_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _error("value_error", ["body", "code_b64"], f"Value error, Invalid base64 encoding: {exc}",
                     code_b64[:200], ctx={"error": {}}) from None
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error("value_error", ["body", "code_b64"],
                     f"Value error, code_b64 does not decode to UTF-8 text: {exc.reason} at byte {exc.start}",
                     code_b64[:200], ctx={"error": {}}) from None

    language = data.get("language", "python")
    if language is None:
        language = "python"
    if not isinstance(language, str) or language not in known:
        expected = " or ".join(f"'{name}'" for name in known)
        raise _error("enum", ["body", "language"], f"Input should be {expected}", language,
                     ctx={"expected": expected})

    arguments = data.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise _error("dict_type", ["body", "arguments"], "Input should be a valid dictionary", arguments)
    if _depth(arguments, MAX_ARGUMENT_DEPTH) > MAX_ARGUMENT_DEPTH:
        raise _error("value_error", ["body", "arguments"],
                     f"Value error, arguments are nested deeper than {MAX_ARGUMENT_DEPTH} levels", None,
                     ctx={"error": {}})
    return RunRequest(language=language, source=source, arguments=arguments, request_id=request_id)
