"""The real server (``python -m orchestrator``) on 127.0.0.1, started per test, checked for
leftovers (runsc state, sandbox directories, cgroups) after it stopped."""

from __future__ import annotations

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

from orchestrator.host.cgroups import Cgroups
from orchestrator.service import CGROUP_ROOT
from tests.conftest import REPO, require_runsc


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
        cgroups = Cgroups(CGROUP_ROOT, server.env["SANDBOX_CGROUP_PARENT"])
        assert cgroups.list_sandboxes() == []
        cgroups.remove_parent()


@pytest.fixture
def server(start_server):
    return start_server()


async def post_run(url: str, payload, *, raw: bytes | None = None, timeout: float = 60):
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else json.dumps(payload).encode()
        async with session.post(f"{url}/run", data=data, headers={"Content-Type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status, await response.json(content_type=None)
