"""Lifecycle with the real server and real runsc: crash recovery after kill -9, graceful
shutdown, doctor, and the systemd unit."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from orchestrator.host.cgroups import Cgroups
from orchestrator.service import CGROUP_ROOT
from tests.conftest import REPO, require_runsc
from tests.e2e.conftest import b64, free_port, post_run

pytestmark = pytest.mark.e2e


def runsc_processes(state_dir: pathlib.Path) -> list[int]:
    marker = f"--root={state_dir / 'runsc'}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_restart_after_kill_9_reaps_everything_left(start_server):
    server = start_server(SANDBOX_EXECUTOR_MANAGER_POOL_SIZE="1", SANDBOX_POOL_SIZE_PYTHON_PRELOAD="0",
                          SANDBOX_POOL_SIZE_NODEJS_PRELOAD="0", SANDBOX_TIMEOUT="30s")
    state = pathlib.Path(server.env["SANDBOX_STATE_DIR"])
    cgroups = Cgroups(CGROUP_ROOT, server.env["SANDBOX_CGROUP_PARENT"])
    running = asyncio.create_task(post_run(server.url, {"code_b64": b64("import time\ndef main():\n    time.sleep(25)\n")}))
    await wait_for(lambda: len(cgroups.list_sandboxes()) >= 3)  # two warm members and the running one
    before = set(cgroups.list_sandboxes())
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    with pytest.raises(Exception):
        await running
    # What a crash leaves behind: sandboxes still running, their cgroups and directories.
    assert runsc_processes(state), "expected orphaned runsc processes after kill -9"
    assert before <= set(cgroups.list_sandboxes())
    server.start()  # same port, state dir and cgroup parent
    await wait_for(lambda: not (before & set(cgroups.list_sandboxes())))
    old_dirs = {p.name for p in (state / "sandboxes").iterdir()} & before
    assert old_dirs == set()
    old_runsc = {p.name for p in (state / "runsc").iterdir()} if (state / "runsc").exists() else set()
    assert not any(name.startswith(tuple(before)) for name in old_runsc), old_runsc
    status, body = await post_run(server.url, {"code_b64": b64("def main():\n    return 'alive'\n")})
    assert body["result"]["value"] == "alive"
    # the fixture stops the server (SIGTERM) and asserts nothing at all is left


async def test_sigterm_lets_a_running_request_finish(start_server):
    server = start_server(SANDBOX_TIMEOUT="20s", SANDBOX_SHUTDOWN_GRACE="15s")
    running = asyncio.create_task(post_run(server.url, {"code_b64": b64("import time\ndef main():\n    time.sleep(2)\n    return 'finished'\n")}))
    await asyncio.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    status, body = await running
    assert status == 200 and body["result"]["value"] == "finished"
    assert server.process.wait(timeout=30) == 0
    state = pathlib.Path(server.env["SANDBOX_STATE_DIR"])
    assert runsc_processes(state) == []


async def test_sigterm_past_the_grace_period_kills_the_run(start_server):
    server = start_server(SANDBOX_TIMEOUT="30s", SANDBOX_SHUTDOWN_GRACE="1s")
    running = asyncio.create_task(post_run(server.url, {"code_b64": b64("import time\ndef main():\n    time.sleep(25)\n")}))
    await asyncio.sleep(1.5)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert time.monotonic() - started < 10
    try:
        status, body = await running
        assert body["status"] != "success"
    except Exception:
        pass  # the connection may close before an answer
    assert runsc_processes(pathlib.Path(server.env["SANDBOX_STATE_DIR"])) == []


async def agent_line(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await asyncio.wait_for(reader.read(), 5)).decode()
    finally:
        writer.close()


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return response.status, await response.json(content_type=None)


async def test_sigterm_tells_the_balancer_first_serves_the_delay_then_refuses_with_503(start_server):
    agent_port = free_port()
    server = start_server(SANDBOX_LB_AGENT_PORT=str(agent_port), SANDBOX_DRAIN_DELAY="4s", SANDBOX_TIMEOUT="20s",
                          SANDBOX_MAX_CONCURRENCY="4", SANDBOX_SHUTDOWN_GRACE="20s")
    assert re.fullmatch(r"\d{1,3}% maxconn:4 up\n", await agent_line(agent_port))  # a balancer checks us
    assert (await get(server.url + "/readyz"))[0] == 200
    server.process.send_signal(signal.SIGTERM)
    drained_at = time.monotonic()
    await wait_for_async(lambda: agent_line(agent_port), lambda line: line == "0% maxconn:4 up\n")
    assert await get(server.url + "/readyz") == (503, {"status": "draining", "phase": "draining"})
    assert await get(server.url + "/healthz") == (200, {"status": "ok"})  # upstream's answer, whatever happens
    # Within the delay a run that still arrives is served; one of them outlasts the delay.
    status, body = await post_run(server.url, {"code_b64": b64("def main():\n    return 'late'\n")})
    assert status == 200 and body["result"]["value"] == "late"
    long_run = asyncio.create_task(post_run(server.url, {"code_b64": b64(
        "import time\ndef main():\n    time.sleep(6)\n    return 'finished'\n")}))
    await asyncio.sleep(max(0.0, drained_at + 4.5 - time.monotonic()))
    status, body = await post_run(server.url, {"code_b64": b64("def main():\n    return 'too late'\n")})
    assert status == 503 and body["exit_code"] == -10 and body["stdout"] == ""  # refused, safe to retry elsewhere
    assert (await long_run)[1]["result"]["value"] == "finished"
    assert server.process.wait(timeout=30) == 0


async def test_sigterm_without_a_balancer_does_not_wait_the_drain_delay(start_server):
    server = start_server(SANDBOX_LB_AGENT_PORT=str(free_port()), SANDBOX_DRAIN_DELAY="60s")
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert time.monotonic() - started < 15  # nobody checked this node: nobody to tell


async def wait_for_async(read, accept, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await read()
        if accept(value):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not reached in time (last: {value!r})")


def run_doctor(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", "doctor"], cwd=REPO, capture_output=True, text=True,
                          env={**env, "PATH": os.environ["PATH"]}, timeout=120)


def test_doctor_on_a_healthy_host(test_env):
    require_runsc()
    done = run_doctor({**test_env, "SANDBOX_EXECUTOR_MANAGER_PORT": str(free_port())})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    for name in ("runsc", "smoke", "cgroups", "netns", "network", "rootfs", "state dir", "port", "snapshots",
                 "capacity"):
        assert f"ok    {name}" in done.stdout
    if "checkpoints without compression" in done.stdout:  # runsc 20240729 and later
        assert "restore under a new id with new stdio work" in done.stdout
    Cgroups(CGROUP_ROOT, test_env["SANDBOX_CGROUP_PARENT"]).remove_parent()


def test_doctor_reports_a_broken_setting_with_its_fix(test_env, tmp_path):
    require_runsc()
    done = run_doctor({**test_env, "SANDBOX_RUNSC": str(tmp_path / "no-runsc"),
                       "SANDBOX_ROOTFS_DIR": str(tmp_path / "no-rootfs"), "SANDBOX_EXECUTOR_MANAGER_PORT": str(free_port())})
    assert done.returncode == 1
    assert "FAIL  runsc" in done.stdout and "fix: apt-get install runsc" in done.stdout
    assert "FAIL  rootfs" in done.stdout and "make build" in done.stdout
    Cgroups(CGROUP_ROOT, test_env["SANDBOX_CGROUP_PARENT"]).remove_parent()


def test_service_refuses_to_start_on_a_broken_host(test_env, tmp_path):
    require_runsc()
    done = subprocess.run([sys.executable, "-m", "orchestrator"], cwd=REPO, capture_output=True, text=True,
                          env={**test_env, "PATH": os.environ["PATH"], "SANDBOX_ROOTFS_DIR": str(tmp_path / "none")},
                          timeout=60)
    assert done.returncode == 1
    assert "cannot start" in done.stderr and "make build" in done.stderr


def test_invalid_setting_is_a_clear_startup_error(test_env):
    done = subprocess.run([sys.executable, "-m", "orchestrator"], cwd=REPO, capture_output=True, text=True,
                          env={**test_env, "PATH": os.environ["PATH"], "SANDBOX_TIMEOUT": "ten seconds"}, timeout=60)
    assert done.returncode == 2
    assert "SANDBOX_TIMEOUT" in done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = tmp_path / "gvisor-sandbox.service"
    unit.write_text((REPO / "systemd" / "gvisor-sandbox.service.in").read_text().replace("@INSTALL_DIR@", str(REPO)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if "gvisor-sandbox.service" in line and "Cannot add dependency job" not in line]
    assert done.returncode == 0 and problems == [], done.stdout + done.stderr
