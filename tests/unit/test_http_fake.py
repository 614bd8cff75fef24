"""Handlers, executor and classification over the real runners, with FakeRuntime instead of
runsc (no isolation, no root): fast checks of the HTTP contract."""

from __future__ import annotations

import asyncio
import base64
import shutil

import pytest

from orchestrator.runtime.fake import FakeRuntime
from orchestrator.settings import Limits

CONTRACT_KEYS = {"status", "stdout", "stderr", "exit_code", "detail", "time_used_ms", "memory_used_kb",
                 "resource_limit_type", "unauthorized_access_type", "runtime_error_type", "artifacts", "result"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def post(client, payload):
    response = await client.post("/run", json=payload)
    return response.status, await response.json()


async def test_health(make_client):
    client = await make_client()
    for path in ("/", "/healthz"):
        response = await client.get(path)
        assert response.status == 200 and await response.json() == {"status": "ok"}


async def test_python_success_shape(make_client):
    client = await make_client()
    status, body = await post(client, {"code_b64": b64("def main(a):\n    print('x')\n    return [a]\n"),
                                       "arguments": {"a": 1}})
    assert status == 200
    assert set(body) == CONTRACT_KEYS
    assert body["status"] == "success" and body["result"]["value"] == [1] and body["stdout"] == "x\n"


async def test_headers_say_how_the_sandbox_started(make_client):
    client = await make_client()
    response = await client.post("/run", json={"code_b64": b64("def main():\n    return 1\n")})
    assert response.status == 200
    assert response.headers["X-Sandbox-Start"] == "booted" and response.headers["X-Sandbox-Warm"] == "0"
    assert response.headers["X-Sandbox-Id"].startswith("python-")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed on this host")
async def test_nodejs_undefined_result(make_client):
    client = await make_client()
    status, body = await post(client, {"code_b64": b64("function main() {}"), "language": "nodejs"})
    assert body["status"] == "program_error"
    assert "main() must return a value" in body["stderr"]


async def test_unsafe_code_is_minus_999_and_never_started(make_client):
    runtime = FakeRuntime()
    client = await make_client(runtime)
    status, body = await post(client, {"code_b64": b64("import subprocess\ndef main():\n    return 1\n")})
    assert status == 200
    assert body["exit_code"] == -999 and body["detail"] == "Code is unsafe"
    assert body["stderr"] == "Line 1: Import: subprocess"
    assert runtime.started == []


async def test_runtime_failure_is_minus_3_with_http_200(make_client):
    client = await make_client(FakeRuntime(fail_start=True))
    status, body = await post(client, {"code_b64": b64("def main():\n    return 1\n")})
    assert status == 200
    assert body["exit_code"] == -3 and body["detail"] == "internal_error"
    assert "fake failure" in body["stderr"] and body["stdout"] == ""


async def test_no_free_slot_is_minus_10_with_a_retryable_503(make_client):
    """Refused before any sandbox saw the code: HTTP 503 (a balancer may retry it elsewhere)."""
    runtime = FakeRuntime()
    client = await make_client(runtime, max_concurrency=1, queue_timeout_s=0.3, limits=Limits(timeout_s=3))
    slow = asyncio.create_task(post(client, {"code_b64": b64("import time\ndef main():\n    time.sleep(2)\n")}))
    await asyncio.sleep(0.5)
    started = len(runtime.started)
    status, body = await post(client, {"code_b64": b64("def main():\n    return 1\n")})
    assert status == 503
    assert len(runtime.started) == started  # no sandbox was started for it
    assert body["exit_code"] == -10 and body["stderr"] == "Container pool is busy"
    assert body["detail"] == "no_available_container"
    assert (await slow)[1]["status"] == "success"


async def test_timeout_kills_the_program(make_client):
    runtime = FakeRuntime()
    client = await make_client(runtime, limits=Limits(timeout_s=0.5))
    status, body = await post(client, {"code_b64": b64("def main():\n    while True:\n        pass\n")})
    assert body["exit_code"] == -124 and body["resource_limit_type"] == "time"
    assert len(runtime.killed) == 1


async def test_output_flood_is_capped(make_client):
    client = await make_client(limits=Limits(output_bytes=64 * 1024, timeout_s=10))
    status, body = await post(client, {"code_b64": b64("def main():\n    while True:\n        print('x' * 1000)\n")})
    assert body["status"] == "resource_limit_exceeded" and body["resource_limit_type"] == "output"
    assert body["stdout"] == "" and "stdout" in body["stderr"]


async def test_client_disconnect_leaves_no_sandbox(make_client, tmp_path):
    runtime = FakeRuntime()
    client = await make_client(runtime, limits=Limits(timeout_s=30))
    task = asyncio.create_task(post(client, {"code_b64": b64("import time\ndef main():\n    time.sleep(30)\n")}))
    for _ in range(100):
        if runtime.started:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.close()
    for _ in range(100):
        if not await runtime.list_ids():
            break
        await asyncio.sleep(0.05)
    assert await runtime.list_ids() == []


async def test_malformed_json_is_422_json(make_client):
    client = await make_client()
    response = await client.post("/run", data=b"{oops", headers={"Content-Type": "application/json"})
    assert response.status == 422
    body = await response.json()
    assert body["detail"][0]["type"] == "json_invalid"


async def test_a_huge_source_is_analysed_off_the_event_loop(make_client):
    """Parsing megabytes of code takes seconds; the event loop (which serves /healthz and every
    other request) must not stall meanwhile, and the verdict must be the same as for small code."""
    client = await make_client(max_request_bytes=8 * 1024 * 1024)
    huge = "values = [1, 2, 3]\n" * 60_000 + "import subprocess\n"
    loop = asyncio.get_running_loop()
    run = asyncio.create_task(post(client, {"code_b64": b64(huge)}))
    worst_lag, health_checks = 0.0, 0
    while not run.done():
        before = loop.time()
        await asyncio.sleep(0.05)
        worst_lag = max(worst_lag, loop.time() - before - 0.05)
        if not run.done():
            assert (await client.get("/healthz")).status == 200
            health_checks += 1
    status, body = await run
    assert status == 200 and body["exit_code"] == -999
    assert body["stderr"] == "Line 60001: Import: subprocess"
    assert health_checks >= 5 and worst_lag < 0.5, (health_checks, worst_lag)
