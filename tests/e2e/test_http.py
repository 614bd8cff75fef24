"""The real server (``python -m orchestrator``) on 127.0.0.1, driven over HTTP, real runsc."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.conftest import REPO, require_runsc

pytestmark = pytest.mark.e2e


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log_path: pathlib.Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "SANDBOX_EXECUTOR_MANAGER_PORT": str(self.port), "PATH": os.environ["PATH"]}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "orchestrator"], cwd=REPO, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not listen within 60 s")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.log.close()


@pytest.fixture
def start_server(test_env, tmp_path):
    require_runsc()
    servers = []

    def start(**overrides) -> Server:
        server = Server({**test_env, **{k: str(v) for k, v in overrides.items()}}, tmp_path / f"server{len(servers)}.log")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.stop() == 0, server.log_path.read_text()[-2000:]
        state = pathlib.Path(server.env["SANDBOX_STATE_DIR"])
        sandboxes = state / "sandboxes"
        assert not sandboxes.exists() or list(sandboxes.iterdir()) == []
        runsc_root = state / "runsc"
        assert not runsc_root.exists() or list(runsc_root.iterdir()) == []


@pytest.fixture
def server(start_server):
    return start_server()


async def post_run(url: str, payload, *, raw: bytes | None = None, timeout: float = 60):
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else json.dumps(payload).encode()
        async with session.post(f"{url}/run", data=data, headers={"Content-Type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status, await response.json(content_type=None)


async def test_health_endpoints(server):
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/healthz"):
            async with session.get(server.url + path) as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}


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
