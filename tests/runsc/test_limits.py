"""Limits we own, attacked from inside a real sandbox: pids, CPU, output, disk, leftovers."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time

import psutil
import pytest

from bundles.spec import OOM_SCORE_ADJ
from orchestrator.executor import RunRequest
from tests.runsc.conftest import run

pytestmark = pytest.mark.runsc


async def test_fork_bomb_is_contained_and_reported_in_time(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false", SANDBOX_MAX_PIDS="64", SANDBOX_TIMEOUT="4s")
    code = (
        "import os, time\n"
        "def main():\n"
        "    children, failures = 0, 0\n"
        "    for _ in range(200):\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(30)\n"
        "                os._exit(0)\n"
        "            children += 1\n"
        "        except OSError:\n"
        "            failures += 1\n"
        "    return {'children': children, 'failures': failures}\n"
    )
    started = time.monotonic()
    result = await run(service, code)
    assert time.monotonic() - started < 8
    if result["status"] == "success":
        value = result["result"]["value"]
        assert value["children"] < 64 and value["failures"] > 0, value
    else:  # the pids limit may also surface as a failed run; it must not hang or crash the service
        assert result["status"] in ("program_error", "resource_limit_exceeded", "runtime_error"), result
    healthy = await run(service, "def main():\n    return 'still here'\n")
    assert healthy["result"]["value"] == "still here"


async def test_cpu_quota_limits_a_busy_loop(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false", SANDBOX_MAX_CPUS="0.25", SANDBOX_TIMEOUT="10s")
    code = (
        "import threading, time\n"
        "def spin(until):\n"
        "    while time.monotonic() < until:\n"
        "        pass\n"
        "def main():\n"
        "    until = time.monotonic() + 2.0\n"
        "    threads = [threading.Thread(target=spin, args=(until,)) for _ in range(2)]\n"
        "    [t.start() for t in threads]\n"
        "    [t.join() for t in threads]\n"
        "    return 'spun'\n"
    )
    executor = service.executor
    execution = await executor.execute(RunRequest("python", code, {}))
    assert execution.result["status"] == "success", execution.result
    assert execution.cpu_ms is not None
    wall = execution.result["time_used_ms"]
    # Two spinning threads would use ~2x the wall time unthrottled; the quota allows 0.25x.
    assert execution.cpu_ms < 0.45 * wall, (execution.cpu_ms, wall)


async def test_output_flood_is_stopped_promptly(make_service):
    service = await make_service(SANDBOX_MAX_OUTPUT="256k", SANDBOX_TIMEOUT="10s")
    started = time.monotonic()
    result = await run(service, "def main():\n    while True:\n        print('flood' * 100)\n")
    assert time.monotonic() - started < 5
    assert result["status"] == "resource_limit_exceeded"
    assert result["resource_limit_type"] == "output"
    assert result["stdout"] == "" and "stdout" in result["stderr"]


async def test_disk_fill_gets_enospc(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false", SANDBOX_TMP_SIZE="8m",
                                 SANDBOX_WORKSPACE_SIZE="8m")
    code = (
        "import errno\n"
        "def fill(path):\n"
        "    chunk = b'x' * (1 << 20)\n"
        "    written = 0\n"
        "    try:\n"
        "        with open(path, 'wb') as f:\n"
        "            for _ in range(64):\n"
        "                f.write(chunk)\n"
        "                f.flush()\n"
        "                written += 1\n"
        "    except OSError as exc:\n"
        "        return [written, errno.errorcode[exc.errno]]\n"
        "    return [written, None]\n"
        "def main():\n"
        "    return {'tmp': fill('/tmp/fill'), 'workspace': fill('/workspace/fill')}\n"
    )
    result = await run(service, code)
    assert result["status"] == "success", result
    value = result["result"]["value"]
    for where in ("tmp", "workspace"):
        written, error = value[where]
        assert error == "ENOSPC" and written <= 8, value


async def test_background_process_does_not_survive_into_the_next_run(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false")
    plant = (
        "import subprocess\n"
        "def main():\n"
        "    subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "    return 'planted'\n"
    )
    look = (
        "import os\n"
        "def main():\n"
        "    names = []\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        "            names.append(open(f'/proc/{pid}/comm').read().strip())\n"
        "        except OSError:\n"
        "            pass\n"
        "    return sorted(names)\n"
    )
    assert (await run(service, plant))["result"]["value"] == "planted"
    names = (await run(service, look))["result"]["value"]
    assert "sleep" not in names, names


async def test_client_disconnect_mid_run_leaves_nothing(make_service):
    service = await make_service(SANDBOX_TIMEOUT="30s")
    task = asyncio.create_task(service.executor.execute(RunRequest("python", "import time\ndef main():\n    time.sleep(20)\n", {})))
    for _ in range(200):
        if service.executor.running:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the fixture's teardown asserts no runsc state, cgroup, directory or process is left


async def test_oversized_result_is_an_output_limit_not_an_internal_error(service):
    result = await run(service, "def main():\n    return 'x' * (20 * 1024 * 1024)\n")
    assert result["status"] == "resource_limit_exceeded", result["stderr"]
    assert result["resource_limit_type"] == "output"
    assert result["detail"] == "result_limit_exceeded"
    assert "result passed" in result["stderr"] and result["result"] is None


def with_descendants(process: psutil.Process) -> list[psutil.Process]:
    """The process and all its descendants, or only itself when one of them exited while
    psutil walked the tree (a pool member restored or discarded meanwhile)."""
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return [process]


async def test_the_oom_killer_prefers_the_sandbox_over_the_service(make_service):
    """A limit above the sandbox's own (a systemd unit's MemoryMax=, the host) makes the kernel
    choose a victim among all tasks: it must be untrusted code, never the service."""
    service = await make_service(SANDBOX_TIMEOUT="30s")
    runsc_root = service.settings.state_dir / "runsc"

    def scores() -> dict:
        seen = {}
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            # the sandbox and the gofer (with their children); not the `runsc run`/`wait` CLI,
            # which is the service's own helper
            if f"--root={runsc_root}" in cmdline and cmdline[0] in ("runsc-sandbox", "runsc-gofer"):
                for each in with_descendants(process):
                    try:
                        seen[(each.pid, cmdline[0])] = int(pathlib.Path(f"/proc/{each.pid}/oom_score_adj").read_text())
                    except (OSError, psutil.Error):
                        pass  # exited meanwhile
        return seen

    task = asyncio.create_task(run(service, "import time\ndef main():\n    time.sleep(3)\n    return 'slept'\n"))
    try:
        deadline = time.monotonic() + 10
        while not ((seen := scores()) and service.executor.running and set(seen.values()) == {OOM_SCORE_ADJ}):
            if time.monotonic() > deadline or task.done():
                break
            await asyncio.sleep(0.1)
        # runsc sets it on the sandbox and the gofer once the container started; what they
        # start later inherits it.  A sealed sandbox has no gofer (pool members of other
        # languages may).
        names = {name for _, name in seen}
        python_sealed = service.executor.host.sealed_image(
            service.executor.languages["python"], pathlib.Path(os.path.realpath(service.executor.rootfs["python"])))
        assert "runsc-sandbox" in names and names <= {"runsc-sandbox", "runsc-gofer"}, seen
        if python_sealed is None:
            assert "runsc-gofer" in names, seen
        assert set(seen.values()) == {OOM_SCORE_ADJ}, seen
        assert int(pathlib.Path("/proc/self/oom_score_adj").read_text()) < OOM_SCORE_ADJ
    finally:
        assert (await task)["result"]["value"] == "slept"


PF_EXITING = 0x4  # include/linux/sched.h: the task is exiting


def cgroups_by_controller(pid: int) -> dict[str, str] | None:
    """/proc/<pid>/cgroup as controller -> path (v1 lines name their controllers; the v2 line
    has none and is keyed ""); None when the task was exiting: the kernel then reports "/" in
    every v1 hierarchy, whatever cgroup it was in (``proc_cgroup_show``).  Its flags are read
    after its cgroups, and PF_EXITING is never cleared, so an exit cannot slip in between."""
    placed = {}
    for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            placed[controller] = path
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    state, *fields = stat[stat.rfind(")") + 2:].split()
    if state in ("Z", "X") or int(fields[5]) & PF_EXITING:  # fields[5]: stat's 9th field, flags
        return None
    return placed


async def test_every_host_process_of_a_sandbox_lives_in_its_cgroup_from_birth(make_service):
    """runsc, its gofer and sandbox processes and (under ptrace) their stubs are all in the
    sandbox's cgroup in every hierarchy whose limits we set: the start wrapper put runsc there
    before it ran, and runsc (--ignore-cgroups) moved nothing (runtime.argv, joined cgroups)."""
    service = await make_service(SANDBOX_TIMEOUT="30s")
    cgroups = service.cgroups
    runsc_root = service.settings.state_dir / "runsc"
    controllers = ("memory", "pids", "cpu", "cpuacct") if cgroups.version == 1 else ("",)

    def placements() -> dict[int, dict[str, str]]:
        placed = {}
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            # `runsc run`/`restore` and what they start; not the service's `runsc delete`s
            if f"--root={runsc_root}" not in cmdline or not {"run", "restore", "boot", "gofer"} & set(cmdline):
                continue
            if cmdline[0] in ("sh", "unshare"):
                continue  # a start wrapper of the next sandbox, before it joined and became runsc
            for each in with_descendants(process):
                try:
                    placement = cgroups_by_controller(each.pid)
                except OSError:
                    continue  # exited meanwhile
                if placement is not None:  # None: exiting (a helper or stub that is done)
                    placed[each.pid] = placement
        return placed

    task = asyncio.create_task(run(service, "import time\ndef main():\n    time.sleep(3)\n    return 'slept'\n"))
    try:
        deadline = time.monotonic() + 10
        placed = {}
        # until the program runs: runsc itself, its gofer, its sandbox (and stubs)
        while not (service.executor.running and len(placed := placements()) >= 3):
            assert time.monotonic() < deadline and not task.done(), f"the run never got going: {placed}"
            await asyncio.sleep(0.05)
        sandboxes = set(cgroups.list_sandboxes())
        for pid, placement in placed.items():
            paths = {placement[c] for c in controllers}
            assert len(paths) == 1, (pid, placement)  # one sandbox's node in every hierarchy
            parent, _, sandbox_id = paths.pop().rpartition("/")
            assert parent.endswith(f"/{cgroups.parent}") and sandbox_id in sandboxes, (pid, placement)
    finally:
        assert (await task)["result"]["value"] == "slept"


async def test_a_sandbox_sees_its_memory_limit_as_its_memory(make_service):
    """MemTotal inside is the memory limit, not the host's RAM: runsc takes it from the
    cgroup, or, when the wrapper joined the cgroups, from the meminfo stand-in."""
    service = await make_service(SANDBOX_MAX_MEMORY="192m", SANDBOX_ENABLE_AST_ANALYSIS="false")
    code = ("def main():\n"
            "    with open('/proc/meminfo') as f:\n"
            "        return int(f.readline().split()[1])\n")
    result = await run(service, code)
    assert result["result"] is not None and result["result"]["value"] == 192 * 1024, result
