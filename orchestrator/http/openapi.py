"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

Its schemas are JSON Schema 2020-12; the tests validate real responses against them, so the
document cannot drift from what the service does.
"""

from __future__ import annotations

from orchestrator.http.request import MAX_ARGUMENT_DEPTH

STATUSES = ["success", "program_error", "resource_limit_exceeded", "unauthorized_access", "runtime_error",
            "program_runner_error"]

_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_NUMBER = {"type": ["number", "null"]}

def run_request_schema(languages: list[str]) -> dict:
    """``POST /run``'s body as ``request.parse_run_request`` accepts it: anything outside it
    is a 422 (the fuzzing tests hold both sides to that)."""
    return {
        "type": "object",
        "required": ["code_b64"],
        "properties": {
            "code_b64": {"type": "string", "format": "base64", "contentEncoding": "base64",
                         "contentMediaType": "text/plain; charset=utf-8",
                         "description": "Standard base64 (RFC 4648, padded) of the UTF-8 source; anything else, "
                                        "or bytes that are not UTF-8, is a 422"},
            "language": {"enum": [*languages, None], "default": "python",
                         "description": "null means python"},
            "arguments": {"type": ["object", "null"], "default": {},
                          "description": "Python: main(**arguments); Node.js: main(arguments); null means {}; "
                                         f"nested at most {MAX_ARGUMENT_DEPTH} levels deep"},
        },
        "additionalProperties": True,
    }


SCHEMAS = {
    "Artifact": {
        "type": "object",
        "required": ["name", "mime_type", "size", "content_b64"],
        "properties": {
            "name": {"type": "string"},
            "mime_type": {"enum": ["image/png", "image/jpeg", "image/svg+xml", "application/pdf", "text/csv",
                                   "application/json", "text/html"]},
            "size": {"type": "integer", "minimum": 1},
            "content_b64": {"type": "string"},
        },
    },
    "StructuredResult": {
        "type": "object",
        "required": ["present", "value", "type"],
        "properties": {"present": {"type": "boolean"}, "value": {}, "type": {"const": "json"}},
    },
    "CodeExecutionResult": {
        "type": "object",
        "required": ["status", "stdout", "stderr", "exit_code", "detail", "time_used_ms", "memory_used_kb",
                     "resource_limit_type", "unauthorized_access_type", "runtime_error_type", "artifacts", "result"],
        "properties": {
            "status": {"enum": STATUSES},
            "stdout": {"type": "string", "description": "\"\" on every non-success"},
            "stderr": {"type": "string", "description": "non-empty on every non-success"},
            "exit_code": {"type": "integer", "description": "-124 timeout, -137 OOM, -25 output cap, -999 unsafe "
                                                             "code, -10 busy, -3 internal error, -429 rate limited"},
            "detail": _NULLABLE_STRING,
            "time_used_ms": _NULLABLE_NUMBER,
            "memory_used_kb": _NULLABLE_NUMBER,
            "resource_limit_type": {"enum": ["time", "memory", "output", None]},
            "unauthorized_access_type": {"enum": ["disallowed_syscall", "file_access", "network_access", None]},
            "runtime_error_type": {"enum": ["signalled", "nonzero_exit", None]},
            "artifacts": {"type": "array", "items": {"$ref": "#/components/schemas/Artifact"}},
            "result": {"anyOf": [{"$ref": "#/components/schemas/StructuredResult"}, {"type": "null"}]},
        },
    },
    "ValidationError": {
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": {"type": "array", "items": {
            "type": "object", "required": ["type", "loc", "msg", "input"],
            "properties": {"type": {"type": "string"}, "loc": {"type": "array"}, "msg": {"type": "string"},
                           "input": {}}}}},
    },
    "Error": {"type": "object", "required": ["detail"], "properties": {"detail": {}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Readiness": {"type": "object", "required": ["status"], "properties": {
        "status": {"enum": ["ready", "draining", "unavailable"]}, "phase": {"enum": ["draining", "closing"]},
        "detail": {"type": "string"}, "weight": {"type": "integer", "minimum": 1, "maximum": 100},
        "free_slots": {"type": "integer", "minimum": 0}, "ready_sandboxes": {"type": "integer", "minimum": 0}}},
}


def _json_content(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def openapi_document(languages: list[str]) -> dict:
    health = {"200": {"description": "The service answers", "content": _json_content("Health")}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "gvisor-sandbox", "version": "0.1.0",
                 "description": "RAGFlow-compatible code execution on gVisor (runsc), no Docker daemon."},
        "paths": {
            "/": {"get": {"summary": "Liveness", "responses": health}},
            "/healthz": {"get": {"summary": "Liveness (RAGFlow calls it before every run)", "responses": health}},
            "/readyz": {"get": {"summary": "Readiness for a load balancer (HAProxy's httpchk)", "responses": {
                "200": {"description": "Taking runs", "content": _json_content("Readiness")},
                "503": {"description": "Draining, or no sandbox can start here",
                        "content": _json_content("Readiness")}}}},
            "/status": {"get": {"summary": "Pools, capacity and counters", "responses": {
                "200": {"description": "State", "content": {"application/json": {"schema": {"type": "object"}}}},
                "401": {"description": "Token required", "content": _json_content("Error")}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Text exposition format", "content": {"text/plain": {}}}}}},
            "/run": {"post": {
                "summary": "Run code in a fresh sandbox",
                "description": f"Languages here: {', '.join(languages)}. Every execution outcome, including "
                               "the service's own failures, is HTTP 200 with a result body. A run refused "
                               "before any sandbox saw its code (no free slot within the wait, or the node "
                               "drains) is HTTP 503 with the -10 body: safe to retry, elsewhere too.",
                "requestBody": {"required": True, "content": _json_content("RunRequest")},
                "responses": {
                    "200": {"description": "Execution result", "content": _json_content("CodeExecutionResult")},
                    "401": {"description": "Missing or wrong token", "content": _json_content("Error")},
                    "413": {"description": "Body over SANDBOX_MAX_REQUEST_SIZE",
                            "content": _json_content("ValidationError")},
                    "422": {"description": "Invalid request", "content": _json_content("ValidationError")},
                    "429": {"description": "Rate limited (body: exit_code -429)",
                            "content": _json_content("CodeExecutionResult")},
                    "503": {"description": "Refused before any sandbox saw the code (body: exit_code -10; "
                                           "Retry-After)", "content": _json_content("CodeExecutionResult")},
                },
            }},
        },
        "components": {
            "schemas": {"RunRequest": run_request_schema(languages), **SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "token": {"type": "apiKey", "in": "header", "name": "X-Sandbox-Token"}},
        },
    }
