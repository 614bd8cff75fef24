"""The client or the service itself goes away: a client disconnecting mid-run, and kill -9
of the server under load followed by a new start."""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import signal

import aiohttp
import pytest

from orchestrator.host.cgroups import Cgroups
from orchestrator.service import CGROUP_ROOT
from tests.chaos.conftest import b64, get_json, mounts_under, post_run, runsc_processes, until

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

SLEEPER = "import time\ndef main():\n    time.sleep(60)\n    return 'woke'\n"
HELLO = "def main():\n    return 'served'\n"


async def test_a_client_disconnecting_mid_run_frees_its_sandbox_and_slot(start_server):
    server = start_server(SANDBOX_TIMEOUT="90s", SANDBOX_MAX_CONCURRENCY="1", SANDBOX_QUEUE_TIMEOUT="2s",
                          SANDBOX_SNAPSHOTS="off")
    state = pathlib.Path(server.env["SANDBOX_STATE_DIR"])
    cgroups = Cgroups(CGROUP_ROOT, server.env["SANDBOX_CGROUP_PARENT"])
    with pytest.raises(asyncio.TimeoutError):
        await post_run(server.url, SLEEPER, timeout=2.5)
    # Long before its 60 s sleep or 90 s limit: no sandbox, no runsc process, no slot held.
    await until(lambda: not cgroups.list_sandboxes() and not runsc_processes(state), timeout=20,
                what="the abandoned run's sandbox destroyed")
    status = (await get_json(server.url, "/status"))[1]
    assert status["running"] == 0
    status_code, body = await post_run(server.url, HELLO)  # the one slot is free: not -10 busy
    assert body["result"]["value"] == "served", body
    assert "the client went away mid-run" in server.log_path.read_text()


LOAD = [("python", HELLO), ("python", "import pandas as pd\ndef main():\n    return int(pd.Series([1, 2]).sum())\n"),
        ("nodejs", "async function main() { await new Promise(r => setTimeout(r, 50)); return 'node'; }"),
        ("python", "import time\ndef main():\n    time.sleep(3)\n    return 'slow'\n")]


@pytest.mark.parametrize("sealed", ["off", "auto"])
async def test_kill_9_under_load_then_a_new_start_reaps_everything(start_server, chaos_snapshot_dir, sealed):
    """Unsealed, the sandboxes' host workspaces are mounts to reap too; sealed, there are none."""
    server = start_server(SANDBOX_EXECUTOR_MANAGER_POOL_SIZE="1", SANDBOX_RUN_RATE_LIMIT="off",
                          SANDBOX_SNAPSHOT_DIR=str(chaos_snapshot_dir), SANDBOX_TIMEOUT="20s", SANDBOX_SEALED=sealed)
    state = pathlib.Path(server.env["SANDBOX_STATE_DIR"])
    cgroups = Cgroups(CGROUP_ROOT, server.env["SANDBOX_CGROUP_PARENT"])
    work = itertools.cycle(LOAD)
    stop = asyncio.Event()
    answered = []

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                language, code = next(work)
                try:
                    async with session.post(f"{server.url}/run", json={"code_b64": b64(code), "language": language},
                                            timeout=aiohttp.ClientTimeout(total=60)) as response:
                        answered.append((await response.json())["status"])
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    await asyncio.sleep(0.1)

    clients = [asyncio.create_task(client()) for _ in range(4)]
    # Under load: runs answered, and sandboxes running, booting and restoring right now.
    await until(lambda: len(answered) >= 6 and len(cgroups.list_sandboxes()) >= 4, timeout=120,
                what="the service under load")
    in_flight = set(cgroups.list_sandboxes())
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    stop.set()
    await asyncio.gather(*clients)
    assert runsc_processes(state), "a kill -9 under load leaves runsc processes running"
    if sealed == "off":
        assert mounts_under(state / "sandboxes"), "and workspace mounts"
    else:
        assert not mounts_under(state / "sandboxes"), "a sealed sandbox has no host workspace to mount"
    server.start()  # same port, state dir and cgroup parent
    await until(lambda: not (in_flight & set(cgroups.list_sandboxes())), timeout=60, what="old cgroups reaped")
    assert not in_flight & {entry.name for entry in (state / "sandboxes").iterdir()}
    assert not [point for point in mounts_under(state / "sandboxes") if pathlib.Path(point).parent.name in in_flight]
    leftovers = {entry.name for entry in (state / "runsc").iterdir()} if (state / "runsc").exists() else set()
    assert not [name for name in leftovers if any(sandbox in name for sandbox in in_flight)], leftovers
    status_code, body = await post_run(server.url, HELLO)
    assert body["result"]["value"] == "served", body
    assert "reaped leftovers of an earlier run" in server.log_path.read_text()
    # The fixture stops the server: then nothing at all may be left.
