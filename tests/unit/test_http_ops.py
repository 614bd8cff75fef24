"""Operations features of the HTTP layer, with FakeRuntime: auth, rate limit, metrics,
OpenAPI (validated against real responses), draining, and the guard's pure logic."""

from __future__ import annotations

import base64

import jsonschema
import pytest
from referencing import Registry, Resource

from orchestrator.http.app import STATE
from orchestrator.http.guard import RateLimiter, token_matches

HELLO = {"code_b64": base64.b64encode(b"def main():\n    return 'hi'\n").decode()}


async def test_token_required_on_run_and_status_only(make_client):
    client = await make_client(app_options={"api_token": "s3cret"})
    assert (await client.post("/run", json=HELLO)).status == 401
    assert (await client.get("/status")).status == 401
    assert (await client.post("/run", json=HELLO, headers={"Authorization": "Bearer wrong"})).status == 401
    for path in ("/", "/healthz", "/metrics", "/openapi.json"):
        assert (await client.get(path)).status == 200, path
    ok = await client.post("/run", json=HELLO, headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200 and (await ok.json())["result"]["value"] == "hi"
    ok = await client.post("/run", json=HELLO, headers={"X-Sandbox-Token": "s3cret"})
    assert ok.status == 200
    body = await (await client.post("/run", json=HELLO)).json()
    assert "token" in body["detail"]


async def test_rate_limit_answers_429_with_the_contract_body(make_client):
    client = await make_client(app_options={"rate_limit": (2, 60.0)})
    assert (await client.post("/run", json=HELLO)).status == 200
    assert (await client.post("/run", json=HELLO)).status == 200
    limited = await client.post("/run", json=HELLO)
    assert limited.status == 429
    body = await limited.json()
    assert body["exit_code"] == -429 and body["status"] == "program_runner_error"
    assert body["stderr"] == body["detail"] == "Too many requests, please try again later"
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await client.get("/healthz")).status == 200  # health is never limited


async def test_metrics_count_runs_limits_and_rejections(make_client):
    client = await make_client()
    await client.post("/run", json=HELLO)
    unsafe = {"code_b64": base64.b64encode(b"import os\ndef main(): pass\n").decode()}
    await client.post("/run", json=unsafe)
    text = await (await client.get("/metrics")).text()
    assert 'sandbox_run_requests_total{language="python",status="success"} 1.0' in text
    assert 'sandbox_run_requests_total{language="python",status="program_runner_error"} 1.0' in text
    assert 'sandbox_static_check_rejections_total{language="python"} 1.0' in text
    assert "sandbox_run_duration_seconds_bucket" in text
    assert 'sandbox_boot_duration_seconds_count{kind="cold",profile="python"}' not in text  # no metrics injected
    assert "sandbox_runs_in_progress 0.0" in text


def _validator(document: dict, name: str) -> jsonschema.protocols.Validator:
    registry = Registry().with_resource("urn:api", Resource.from_contents(
        {"$schema": "https://json-schema.org/draft/2020-12/schema", **document}))
    schema = {"$ref": f"urn:api#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


async def test_openapi_describes_real_responses(make_client):
    client = await make_client()
    document = await (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) >= {"/", "/healthz", "/run", "/status", "/metrics"}
    result_schema = _validator(document, "CodeExecutionResult")
    for payload in (HELLO,
                    {"code_b64": base64.b64encode(b"def main():\n    raise ValueError('x')\n").decode()},
                    {"code_b64": base64.b64encode(b"import os\n").decode()}):
        body = await (await client.post("/run", json=payload)).json()
        result_schema.validate(body)
    bad = await client.post("/run", json={"code_b64": "!!"})
    assert bad.status == 422
    _validator(document, "ValidationError").validate(await bad.json())
    _validator(document, "Health").validate(await (await client.get("/healthz")).json())
    _validator(document, "RunRequest").validate(HELLO)


async def test_draining_service_refuses_new_runs(make_client):
    client = await make_client()
    client.server.app[STATE].draining = True
    body = await (await client.post("/run", json=HELLO)).json()
    assert body["exit_code"] == -10
    status = await (await client.get("/status")).json()
    assert status["status"] == "draining"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Authorization": "Bearer tok"}, True),
        ({"Authorization": "bearer tok"}, True),
        ({"X-Sandbox-Token": "tok"}, True),
        ({"Authorization": "Basic tok"}, False),
        ({"Authorization": "Bearer tok2"}, False),
        ({"X-Sandbox-Token": ""}, False),
        ({}, False),
    ],
)
def test_token_matches(headers, expected):
    assert token_matches(headers, "tok") is expected


def test_rate_limiter_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(limit=3, period_s=60.0, clock=lambda: now[0])
    assert [limiter.allow("a")[0] for _ in range(4)] == [True, True, True, False]
    allowed, retry = limiter.allow("a")
    assert not allowed and 19.0 < retry <= 20.0
    assert limiter.allow("b")[0]  # per client
    now[0] = 20.0
    assert limiter.allow("a")[0] and not limiter.allow("a")[0]
