"""The HTTP app over the real runners and FakeRuntime (no root, no runsc), shared by the
HTTP contract and operations tests."""

from __future__ import annotations

import os
import pathlib

import pytest
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.executor import Executor
from orchestrator.http.app import create_app
from orchestrator.language import load_languages
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.sandbox import SandboxHost
from orchestrator.settings import Settings

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
async def make_client(tmp_path):
    """``await make_client(runtime=None, app_options={}, **settings_changes)`` -> a started
    aiohttp TestClient; on teardown: closed, executor closed, no sandbox directory left."""
    made = []

    async def make(runtime=None, app_options=None, **settings_changes):
        settings = Settings(state_dir=tmp_path / "state", **settings_changes)
        # The fake runs programs as us; as root the spec still needs an unprivileged uid.
        host = SandboxHost(runtime=runtime or FakeRuntime(), cgroups=None, state_dir=settings.state_dir,
                           uid=os.getuid() or 10001, gid=os.getgid() or 10001, limits=settings.limits,
                           bounded_workspace=False)
        languages = load_languages([REPO / "languages"])
        executor = Executor(settings, languages, {name: tmp_path for name in languages}, host)
        app = create_app(executor, max_request_bytes=settings.max_request_bytes, **(app_options or {}))
        client = TestClient(TestServer(app))
        await client.start_server()
        made.append((client, executor))
        return client

    yield make
    for client, executor in made:
        await client.close()
        await executor.close()
    assert list((tmp_path / "state" / "sandboxes").glob("*")) == []
