"""A client that goes away mid-run: the run is cancelled, its sandbox destroyed and its slot
freed long before the time limit would have ended it (FakeRuntime: no root, no runsc).

The app is served as ``python -m orchestrator`` serves it (``web.AppRunner`` with aiohttp's
defaults), not through aiohttp's TestServer, which cancels handlers on a lost connection by
itself and would hide a missing cancellation."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import aiohttp
import pytest
from aiohttp import web

from orchestrator.executor import Executor
from orchestrator.http.app import create_app
from orchestrator.language import load_languages
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.sandbox import SandboxHost
from orchestrator.settings import Limits, Settings
from tests.unit.conftest import REPO

SLEEPER = base64.b64encode(b"import time\ndef main():\n    time.sleep(120)\n").decode()
HELLO = base64.b64encode(b"def main():\n    return 1\n").decode()


async def until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def served(tmp_path):
    """(url, executor, runtime): one slot, a 120 s time limit, served like production."""
    settings = Settings(state_dir=tmp_path / "state", limits=Limits(timeout_s=120), max_concurrency=1)
    runtime = FakeRuntime()
    host = SandboxHost(runtime=runtime, cgroups=None, state_dir=settings.state_dir, uid=os.getuid() or 10001,
                       gid=os.getgid() or 10001, limits=settings.limits, bounded_workspace=False)
    languages = load_languages([REPO / "languages"])
    executor = Executor(settings, languages, {name: tmp_path for name in languages}, host)
    runner = web.AppRunner(create_app(executor, max_request_bytes=settings.max_request_bytes), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", executor, runtime
    await runner.cleanup()
    await executor.close()


async def test_a_client_gone_mid_run_frees_the_sandbox_and_the_slot(served, tmp_path):
    url, executor, runtime = served
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(f"{url}/run", json={"code_b64": SLEEPER}, timeout=aiohttp.ClientTimeout(total=1.5))
        # Within seconds, not the 120 s the program would run: cancelled and torn down.
        await until(lambda: executor.running == 0 and not executor._teardowns)
        assert len(runtime.killed) == 1
        assert list((tmp_path / "state" / "sandboxes").iterdir()) == []
        # The one slot is free again: the next run is served, not refused as busy.
        async with session.post(f"{url}/run", json={"code_b64": HELLO}) as response:
            assert (await response.json())["result"]["value"] == 1


async def test_a_run_that_is_answered_is_untouched(served):
    url, executor, runtime = served
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/run", json={"code_b64": HELLO}) as response:
            assert response.status == 200 and (await response.json())["result"]["value"] == 1
    assert runtime.killed == []
