"""Our own service, started by the benchmark: ``python -m orchestrator`` on a free 127.0.0.1
port with its own state dir and cgroup parent, no rate limit (it measures sandboxes, not the
limiter) and no token; stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import aiohttp

from orchestrator.bench.client import BenchError

log = logging.getLogger(__name__)

REPO = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
SERVICE_ENV = {"SANDBOX_EXECUTOR_MANAGER_HOST": "127.0.0.1", "SANDBOX_RUN_RATE_LIMIT": "off"}
# Pool sizes are the benchmark's to set (the service's defaults unless a phase or --service-env
# says otherwise), and its services need no token.
DROPPED_ENV = ("SANDBOX_POOL_SIZE_", "SANDBOX_EXECUTOR_MANAGER_POOL_SIZE", "SANDBOX_EXECUTOR_MANAGER_API_TOKEN")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalService:
    """``python -m orchestrator`` on a free 127.0.0.1 port, own state dir and cgroup parent."""

    def __init__(self, name: str, work: pathlib.Path, log_path: pathlib.Path, cgroup_parent: str,
                 overrides: dict[str, str], extra_env: dict[str, str] | None = None):
        """``overrides``: this phase's settings; ``extra_env`` (``--service-env``) comes under
        them, over the inherited environment."""
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = work / f"state-{name}"
        self.log_path = log_path
        self.overrides = {**(extra_env or {}), **SERVICE_ENV, "SANDBOX_EXECUTOR_MANAGER_PORT": str(self.port),
                          "SANDBOX_STATE_DIR": str(self.state_dir), "SANDBOX_CGROUP_PARENT": cgroup_parent, **overrides}
        inherited = {key: value for key, value in os.environ.items() if not key.startswith(DROPPED_ENV)}
        self.env = {**inherited, **self.overrides}
        self.process: subprocess.Popen | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen([sys.executable, "-m", "orchestrator"], cwd=REPO, env=self.env,
                                            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"start service {self.name}: it exited {self.process.returncode}; see {self.log_path}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise BenchError(f"start service {self.name}: no answer on /healthz within {START_TIMEOUT_S:.0f} s")

    async def stop(self) -> dict:
        """SIGTERM, wait for the exit (SIGKILL past the deadline); what happened, for the JSON."""
        facts = {"env": self.overrides, "log": str(self.log_path), "state_dir": str(self.state_dir),
                 "exit_code": None, "killed": False}
        if self.process is None:
            return facts
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
                facts["killed"] = True
                log.warning("service %s did not exit within %.0f s of SIGTERM: killed", self.name, STOP_TIMEOUT_S)
        facts["exit_code"] = self.process.returncode
        return facts


@contextlib.asynccontextmanager
async def own_service(name: str, session: aiohttp.ClientSession, work: pathlib.Path, log_dir: pathlib.Path,
                      cgroup_parent: str, overrides: dict[str, str], services: dict[str, dict],
                      extra_env: dict[str, str] | None = None):
    """A started ``LocalService``; on exit it is stopped and what happened goes into
    ``services[name]``."""
    service = LocalService(name, work, log_dir / f"service-{name}.log", cgroup_parent, overrides, extra_env)
    log.info("starting service '%s' on %s (%s)", name, service.url, ", ".join(f"{k}={v}" for k, v in overrides.items()))
    try:
        await service.start(session)
        yield service
    finally:
        services[name] = await service.stop()
        log.info("service '%s' stopped, exit code %s", name, services[name]["exit_code"])
