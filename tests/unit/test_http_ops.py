"""Operations features of the HTTP layer, with FakeRuntime: auth, rate limit, metrics,
OpenAPI (validated against real responses), readiness and draining, and the guard's pure logic."""

from __future__ import annotations

import base64
import ipaddress
import json

import jsonschema
import pytest
from referencing import Registry, Resource

from orchestrator.http.app import STATE
from orchestrator.http.guard import RateLimiter, client_address, client_key, token_matches
from orchestrator.runtime.fake import FakeRuntime

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


async def test_rate_limit_is_per_forwarded_client_only_behind_a_trusted_proxy(make_client):
    trusted = (ipaddress.ip_network("127.0.0.0/8"),)  # the test client connects from 127.0.0.1
    client = await make_client(app_options={"rate_limit": (1, 60.0), "trusted_proxies": trusted})
    for address in ("192.0.2.1", "192.0.2.2"):  # one request each: two clients behind the proxy
        assert (await client.post("/run", json=HELLO, headers={"X-Forwarded-For": address})).status == 200
    again = await client.post("/run", json=HELLO, headers={"X-Forwarded-For": "198.51.100.9, 192.0.2.1"})
    assert again.status == 429  # 192.0.2.1 (the address the proxy saw) again; the left part is the client's word
    untrusted = await make_client(app_options={"rate_limit": (1, 60.0)})
    assert (await untrusted.post("/run", json=HELLO, headers={"X-Forwarded-For": "192.0.2.1"})).status == 200
    assert (await untrusted.post("/run", json=HELLO, headers={"X-Forwarded-For": "192.0.2.2"})).status == 429


async def test_rate_limit_is_per_token_when_a_token_is_set(make_client):
    trusted = (ipaddress.ip_network("127.0.0.0/8"),)
    client = await make_client(app_options={"rate_limit": (1, 60.0), "trusted_proxies": trusted,
                                            "api_token": "s3cret"})
    auth = {"Authorization": "Bearer s3cret"}
    assert (await client.post("/run", json=HELLO, headers={**auth, "X-Forwarded-For": "192.0.2.1"})).status == 200
    assert (await client.post("/run", json=HELLO, headers={**auth, "X-Forwarded-For": "192.0.2.2"})).status == 429


async def test_no_rate_limit_by_default(make_client):
    client = await make_client()
    statuses = [(await client.post("/run", json=HELLO)).status for _ in range(8)]
    assert statuses == [200] * 8


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(("peer", "headers", "expected"), [
    ("192.0.2.7", ["203.0.113.1"], "192.0.2.7"),  # an untrusted peer's header is ignored
    ("10.0.0.5", ["203.0.113.1"], "203.0.113.1"),
    ("10.0.0.5", ["198.51.100.1, 203.0.113.1, 10.0.0.9"], "203.0.113.1"),  # a chain of trusted proxies
    ("10.0.0.5", ["198.51.100.1", "203.0.113.1"], "203.0.113.1"),  # HAProxy adds a header line of its own
    ("10.0.0.5", [], "10.0.0.5"),
    ("10.0.0.5", ["10.0.0.8, 10.0.0.9"], "10.0.0.8"),  # all trusted: the leftmost
    ("10.0.0.5", ["junk, 203.0.113.1"], "203.0.113.1"),
    ("10.0.0.5", ["203.0.113.1, junk"], "10.0.0.5"),  # an unreadable hop ends the walk
    ("::ffff:10.0.0.5", ["203.0.113.1"], "203.0.113.1"),  # IPv4-mapped peer
    ("fd00::1", ["2001:db8::1"], "2001:db8::1"),
    (None, ["203.0.113.1"], "unknown"),
])
def test_client_address(peer, headers, expected):
    assert client_address(peer, headers, TRUSTED) == expected


def test_client_key_prefers_the_token():
    key = client_key(token="hunter2", peer="192.0.2.7", forwarded_for=[], trusted=())
    assert key.startswith("token:") and "hunter2" not in key  # the limiter's table never holds the secret
    assert client_key(token=None, peer="192.0.2.7", forwarded_for=[], trusted=()) == "addr:192.0.2.7"


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
    assert set(document["paths"]) >= {"/", "/healthz", "/readyz", "/run", "/status", "/metrics"}
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
    _validator(document, "Readiness").validate(await (await client.get("/readyz")).json())
    client.server.app[STATE].drain.begin()
    _validator(document, "Readiness").validate(await (await client.get("/readyz")).json())
    client.server.app[STATE].drain.close()
    refused = await client.post("/run", json=HELLO)
    assert refused.status == 503 and "503" in document["paths"]["/run"]["post"]["responses"]
    result_schema.validate(await refused.json())
    _validator(document, "RunRequest").validate(HELLO)


async def test_a_drain_tells_readyz_first_then_refuses_runs_with_a_retryable_503(make_client):
    runtime = FakeRuntime()
    client = await make_client(runtime)
    drain = client.server.app[STATE].drain
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"
    drain.begin()  # SIGTERM: the balancer is told, runs that still arrive are served
    assert (await client.get("/readyz")).status == 503
    assert (await (await client.get("/readyz")).json())["status"] == "draining"
    served = await client.post("/run", json=HELLO)
    assert served.status == 200 and (await served.json())["result"]["value"] == "hi"
    drain.close()  # the drain delay is over: new runs are refused before any sandbox sees them
    started = len(runtime.started)
    refused = await client.post("/run", json=HELLO)
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    body = await refused.json()
    assert body["exit_code"] == -10 and body["stderr"] == "Container pool is busy" and body["stdout"] == ""
    assert len(runtime.started) == started
    status = await (await client.get("/status")).json()
    assert status["status"] == "draining" and status["drain"] == "closing"
    text = await (await client.get("/metrics")).text()
    assert 'sandbox_refused_runs_total{reason="draining"} 1.0' in text


async def test_healthz_is_upstreams_exact_answer_even_while_draining(make_client):
    client = await make_client()
    for phase in ("serving", "draining", "closing"):
        if phase == "draining":
            client.server.app[STATE].drain.begin()
        elif phase == "closing":
            client.server.app[STATE].drain.close()
        for path in ("/healthz", "/"):
            response = await client.get(path)
            assert response.status == 200 and json.loads(await response.read()) == {"status": "ok"}, (phase, path)


async def test_readyz_is_503_while_no_sandbox_can_start(make_client):
    client = await make_client(FakeRuntime(fail_start=True))
    for _ in range(3):
        body = await (await client.post("/run", json=HELLO)).json()
        assert body["exit_code"] == -3
    ready = await client.get("/readyz")
    assert ready.status == 503
    body = await ready.json()
    assert body["status"] == "unavailable" and "3 starts failed" in body["detail"]


async def test_readyz_needs_no_token(make_client):
    client = await make_client(app_options={"api_token": "s3cret"})
    assert (await client.get("/readyz")).status == 200


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
