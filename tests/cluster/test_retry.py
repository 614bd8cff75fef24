"""HAProxy's retries against our HTTP layer (the rendered configuration, two nodes on loopback
addresses, FakeRuntime: no root, no runsc): a run a node refuses before any sandbox saw it
(HTTP 503) is run once, elsewhere; a run that executed, whatever its outcome, is answered as it
is and never sent anywhere else."""

from __future__ import annotations

import asyncio
import base64
import os
import pathlib

import aiohttp
import pytest
from aiohttp import web

from deploy.haproxy.render import Node
from orchestrator.executor import Executor
from orchestrator.http.app import STATE, create_app
from orchestrator.language import load_languages
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.sandbox import SandboxHost
from orchestrator.settings import Limits, Settings
from tests.cluster.cluster import BACKEND, HAProxy, free_port
from tests.conftest import REPO, require_haproxy

ADDRESSES = ("127.0.0.2", "127.0.0.3")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class AppNode:
    """Our HTTP app over FakeRuntime, listening on ``address:port``."""

    def __init__(self, name: str, address: str, port: int, work: pathlib.Path):
        self.name, self.address, self.port = name, address, port
        self.runtime = FakeRuntime()
        settings = Settings(state_dir=work / name, limits=Limits(timeout_s=1.0))
        host = SandboxHost(runtime=self.runtime, cgroups=None, state_dir=settings.state_dir,
                           uid=os.getuid() or 10001, gid=os.getgid() or 10001, limits=settings.limits,
                           bounded_workspace=False)
        languages = load_languages([REPO / "languages"])
        self.executor = Executor(settings, languages, {language: work for language in languages}, host)
        self.app = create_app(self.executor, max_request_bytes=settings.max_request_bytes)
        self.runner = web.AppRunner(self.app)

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, self.address, self.port).start()

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.executor.close()


@pytest.fixture
async def two_nodes(tmp_path):
    binary = require_haproxy()
    port = free_port()
    nodes = [AppNode(f"node{i + 1}", address, port, tmp_path) for i, address in enumerate(ADDRESSES)]
    for node in nodes:
        await node.start()
    # No agent listens on its port: HAProxy ignores an agent it cannot reach.
    proxy = HAProxy(binary, [Node(node.name, f"{node.address}:{node.port}") for node in nodes], tmp_path,
                    maxconn=4, run_timeout_s=1.0, queue_timeout_s=2.0, agent_port=free_port())
    try:
        await asyncio.to_thread(proxy.start)
        for node in nodes:
            await asyncio.to_thread(proxy.wait_status, node.name, "UP", 10)
        yield proxy, nodes
    finally:
        proxy.stop()
        for node in nodes:
            await node.close()


async def post(url: str, code: str, request_id: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/run", json={"code_b64": b64(code)}, headers={"X-Request-Id": request_id},
                                timeout=aiohttp.ClientTimeout(total=30)) as response:
            return response.status, await response.json(content_type=None)


async def test_a_refused_run_is_retried_elsewhere_and_an_executed_one_never(two_nodes):
    proxy, (refusing, serving) = two_nodes
    # The balancer must not know node1 drains (its agent and health check are off), and must
    # prefer it: then every run goes there first and comes back with a 503.
    for command in (f"disable health {BACKEND}/node1", f"set weight {BACKEND}/node1 256",
                    f"set weight {BACKEND}/node2 1"):
        assert proxy.command(command).strip() == "", command
    await asyncio.sleep(1.5)  # a health check already under way still counts: let it end
    assert proxy.servers()["node1"]["status"] == "no check"  # unchecked: taken as up
    refusing.app[STATE].drain.begin()
    refusing.app[STATE].drain.close()
    for index in range(5):
        status, body = await post(proxy.url, f"def main():\n    return {index}\n", f"refused-{index}")
        assert status == 200 and body["result"]["value"] == index
    assert refusing.runtime.started == []  # no sandbox there saw any of them
    assert len(serving.runtime.started) == 5  # each ran exactly once
    routed = proxy.requests()
    assert {routed[f"refused-{index}"]["retries"] for index in range(5)} == {"+1"}
    assert {routed[f"refused-{index}"]["server"] for index in range(5)} == {"node2"}

    # A run that executed is answered as it is, whatever its outcome: never retried.
    refusing.app[STATE].drain.phase = "serving"

    def sandboxes() -> int:
        return len(refusing.runtime.started) + len(serving.runtime.started)

    before = sandboxes()
    status, body = await post(proxy.url, "def main():\n    raise ValueError('boom')\n", "executed-failure")
    assert status == 200 and body["status"] == "program_error" and "boom" in body["stderr"]
    status, body = await post(proxy.url, "import time\ndef main():\n    time.sleep(10)\n", "executed-timeout")
    assert status == 200 and body["exit_code"] == -124
    assert sandboxes() == before + 2  # one sandbox each
    routed = proxy.requests()
    assert routed["executed-failure"]["retries"] == routed["executed-timeout"]["retries"] == "0"
