"""Chaos on real runsc: what a sandbox's processes, the host and the client can do to a
running service, and what the service must still do (answer, recover, leave nothing).

Services here run in-process (``start_service``, for the executor's view of one run) or as
the real server (``tests.e2e.conftest.start_server``); both are checked for leftovers at the
end by their fixtures.  Images are shared by the whole session (``chaos_snapshot_dir``), so
only the first service that wants one pays for making it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import time

import aiohttp
import pytest

from orchestrator.service import start_service
from orchestrator.settings import Settings
from tests.conftest import require_runsc
from tests.e2e.conftest import start_server  # noqa: F401 - the real server, per test
from tests.runsc.conftest import assert_nothing_left


@pytest.fixture(scope="session")
def chaos_snapshot_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("chaos-snapshots")


@pytest.fixture
async def make_service(test_env, chaos_snapshot_dir):
    """``await make_service(SANDBOX_X=...)``: an in-process service; on teardown it is closed
    and nothing of it may be left (runsc state, cgroups, directories, processes)."""
    require_runsc()
    started = []

    async def make(**overrides):
        env = {**test_env, "SANDBOX_SNAPSHOT_DIR": str(chaos_snapshot_dir),
               **{key: str(value) for key, value in overrides.items()}}
        service = await start_service(Settings.from_env(env))
        started.append(service)
        return service

    yield make
    for service in started:
        await service.close()
        assert_nothing_left(service)
        service.cgroups.remove_parent()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def until(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll ``predicate`` (sync or async) until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        await asyncio.sleep(0.05)


def running_sandbox(executor) -> str | None:
    """The id of the one sandbox the executor is serving a request with (handed its request
    already), sealed or not."""
    active = [sandbox for sandbox in executor._active if sandbox.is_alive and sandbox.has_run]
    return active[0].id if len(active) == 1 and executor.running == 1 else None


def helpers_up(state_dir: pathlib.Path, sandbox_id: str, sealed: bool) -> dict[str, list[int]] | None:
    """``runsc_helpers`` once the sandbox's processes are all there (a sealed one has no gofer)."""
    found = runsc_helpers(state_dir, sandbox_id)
    if found["runsc-sandbox"] and (sealed or found["runsc-gofer"]):
        return found
    return None


def runsc_helpers(state_dir: pathlib.Path, sandbox_id: str) -> dict[str, list[int]]:
    """The sandbox's runsc-sandbox and runsc-gofer processes: found by the log file in their
    arguments (each sandbox has its own under its directory)."""
    log_flag = f"--log={state_dir / 'sandboxes' / sandbox_id / 'runsc.log'}".encode()
    found: dict[str, list[int]] = {"runsc-sandbox": [], "runsc-gofer": []}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            arguments = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = arguments[0].decode(errors="replace")
        if name in found and log_flag in arguments:
            found[name].append(int(pid))
    return found


def runsc_processes(state_dir: pathlib.Path) -> list[int]:
    flag = f"--root={state_dir / 'runsc'}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if flag in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def mounts_under(path: pathlib.Path) -> list[str]:
    """Mount points at or below ``path`` (the workspaces' tmpfs)."""
    prefix = str(path)
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [point for point in points if point == prefix or point.startswith(prefix + "/")]


async def post_run(url: str, code: str, *, language: str = "python", timeout: float = 120, **arguments):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/run", json={"code_b64": b64(code), "language": language,
                                                    "arguments": arguments},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status, json.loads(await response.read())


async def get_json(url: str, path: str):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}{path}", timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status, json.loads(await response.read())


def assert_clear_failure(body: dict) -> None:
    """A failure RAGFlow can see as one: not success, empty stdout, a non-empty reason, no
    result or artifacts."""
    assert body["status"] != "success", body
    assert body["stdout"] == "" and body["stderr"].strip(), body
    assert body["result"] is None and body["artifacts"] == [], body
