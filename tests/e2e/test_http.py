"""The real server (``python -m orchestrator``) on 127.0.0.1, driven over HTTP, real runsc."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import pytest

from tests.conftest import REPO
from tests.e2e.conftest import b64, post_run

pytestmark = pytest.mark.e2e


async def test_health_endpoints(server):
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/healthz"):
            async with session.get(server.url + path) as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}


async def test_healthz_answers_while_snapshot_images_are_still_made(start_server, tmp_path):
    server = start_server(SANDBOX_SNAPSHOT_DIR=str(tmp_path / "fresh-images"))
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/healthz") as response:
            assert response.status == 200 and await response.json() == {"status": "ok"}
        async with session.get(server.url + "/status") as response:
            status = await response.json()
    snapshots = status["snapshots"]["profiles"]
    if status["runsc"]["checkpoint_uncompressed"]:
        assert snapshots["python_preload"]["state"] in ("pending", "making"), snapshots
    status_code, body = await post_run(server.url, {"code_b64": b64("def main():\n    return 1\n")})
    assert status_code == 200 and body["result"]["value"] == 1


async def test_hello_python_over_http(server):
    status, body = await post_run(server.url, {"code_b64": b64("def main(name):\n    print('hi')\n    return {'hello': name}\n"),
                                               "language": "python", "arguments": {"name": "world"}})
    assert status == 200
    assert body["status"] == "success"
    assert body["stdout"] == "hi\n"
    assert body["result"] == {"present": True, "value": {"hello": "world"}, "type": "json"}
    assert set(body) == {"status", "stdout", "stderr", "exit_code", "detail", "time_used_ms", "memory_used_kb",
                         "resource_limit_type", "unauthorized_access_type", "runtime_error_type", "artifacts",
                         "result"}


async def test_hello_nodejs_over_http_with_unknown_fields(server):
    status, body = await post_run(server.url, {"code_b64": b64("function main(a) { return a.x + 1; }"),
                                               "language": "nodejs", "arguments": {"x": 1},
                                               "base_image": "whatever", "extra": [1, 2]})
    assert status == 200
    assert body["status"] == "success", body
    assert body["result"]["value"] == 2


async def test_null_arguments_and_default_language(server):
    status, body = await post_run(server.url, {"code_b64": b64("def main():\n    return 'py'\n"), "arguments": None})
    assert status == 200 and body["result"]["value"] == "py"


@pytest.mark.parametrize(
    ("payload", "raw", "loc"),
    [
        ({"code_b64": "not base64!!"}, None, ["body", "code_b64"]),
        ({"language": "python"}, None, ["body", "code_b64"]),
        ({"code_b64": base64.b64encode(b"\xff\xfe\xfd").decode()}, None, ["body", "code_b64"]),
        ({"code_b64": b64("def main(): return 1"), "language": "ruby"}, None, ["body", "language"]),
        ({"code_b64": b64("def main(): return 1"), "language": "../python"}, None, ["body", "language"]),
        ({"code_b64": b64("def main(): return 1"), "arguments": [1, 2]}, None, ["body", "arguments"]),
        ({"code_b64": b64("def main(): return 1"), "arguments": "x"}, None, ["body", "arguments"]),
        (None, b"{not json", None),
        (None, b"[" * 100000, None),
        (None, b"\xff\xfe garbage", None),
        (None, b"[1, 2]", ["body"]),
    ],
)
async def test_bad_requests_get_422_with_detail(server, payload, raw, loc):
    status, body = await post_run(server.url, payload, raw=raw)
    assert status == 422, body
    assert isinstance(body["detail"], list) and body["detail"]
    detail = body["detail"][0]
    assert {"type", "loc", "msg", "input"} <= set(detail)
    if loc is not None:
        assert detail["loc"] == loc


async def test_body_over_cap_is_413_json(start_server):
    server = start_server(SANDBOX_MAX_REQUEST_SIZE="64k")
    big = {"code_b64": b64("def main(): return 1"), "arguments": {"blob": "x" * 100_000}}
    status, body = await post_run(server.url, big)
    assert status == 413
    assert body["detail"][0]["type"] == "too_large"
    # and the server still works afterwards
    status, body = await post_run(server.url, {"code_b64": b64("def main():\n    return 7\n")})
    assert body["result"]["value"] == 7


async def test_unknown_route_and_method_are_json(server):
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/nope") as response:
            assert response.status == 404
            assert "detail" in await response.json()
        async with session.get(server.url + "/run") as response:
            assert response.status == 405
            assert "detail" in await response.json()


async def test_healthz_fast_and_short_run_not_stuck_while_sandboxes_are_busy(start_server):
    server = start_server(SANDBOX_TIMEOUT="6s", SANDBOX_ENABLE_AST_ANALYSIS="false")
    spin = {"code_b64": b64("def main():\n    while True:\n        pass\n")}
    loops = [asyncio.create_task(post_run(server.url, spin)) for _ in range(4)]
    await asyncio.sleep(1.5)  # let the loops start spinning
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.get(server.url + "/healthz") as response:
            assert response.status == 200
        assert time.monotonic() - started < 1.0
    started = time.monotonic()
    status, body = await post_run(server.url, {"code_b64": b64("def main():\n    return 'quick'\n")})
    quick = time.monotonic() - started
    assert body["result"]["value"] == "quick"
    assert not all(task.done() for task in loops), "the short run waited for the loops to finish"
    results = await asyncio.gather(*loops)
    assert [body["exit_code"] for _, body in results] == [-124] * 4
    assert quick < 5.0


async def test_third_language_from_a_definition_directory(start_server, tmp_path):
    definitions = tmp_path / "languages" / "bash"
    definitions.mkdir(parents=True)
    (definitions / "language.toml").write_text(
        'name = "bash"\n'
        'rootfs = "python"\n'
        'protocol = "script"\n'
        'argv = ["/bin/bash", "{source}"]\n'
        'source_file = "main.sh"\n'
        'static_check = "none"\n'
    )
    server = start_server(SANDBOX_LANGUAGES_DIR=f"{REPO / 'languages'}:{tmp_path / 'languages'}")
    code = 'echo "hello from $0 as $(id -u)"\ncat arguments.json\necho\necho "$SANDBOX_ARGUMENTS" > artifacts/args.json\n'
    status, body = await post_run(server.url, {"code_b64": b64(code), "language": "bash", "arguments": {"k": "v"}})
    assert status == 200
    assert body["status"] == "success", body
    assert body["stdout"] == 'hello from /workspace/main.sh as 10001\n{"k": "v"}\n'
    assert body["result"] is None
    assert [a["name"] for a in body["artifacts"]] == ["args.json"]
    status, body = await post_run(server.url, {"code_b64": b64("exit 3"), "language": "bash"})
    assert body["status"] == "program_error" and body["exit_code"] == 3
    # the built-in languages still work next to it
    status, body = await post_run(server.url, {"code_b64": b64("def main():\n    return 1\n")})
    assert body["result"]["value"] == 1
