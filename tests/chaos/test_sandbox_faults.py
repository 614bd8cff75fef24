"""A sandbox's own runsc processes die or freeze mid-run.

- SIGKILL of the runsc-sandbox process (booted or restored) or of the gofer (booted): that
  run gets a clear failure at once instead of waiting out its program, and a run beside it
  finishes normally.  A restored sandbox of runsc 20240729 opens its files itself (directfs)
  and may run on without its gofer: that run then ends on its own, correctly.
- SIGSTOP of the sandbox: ``runsc kill`` never gets an answer from a stopped sandbox, so the
  time limit ends it through its cgroup (before: the answer came ~20 s after the limit).

Each test ends with one more run served and, in ``make_service``'s teardown, nothing left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from orchestrator.executor import RunRequest
from tests.chaos.conftest import assert_clear_failure, helpers_up, running_sandbox, runsc_helpers, until

pytestmark = [pytest.mark.runsc, pytest.mark.chaos]

# Reads a new rootfs file every 50 ms for up to 15 s, so a sandbox that lost its gofer notices.
VICTIM = (
    "import pathlib, time\n"
    "def main():\n"
    "    marker = 'chaos-victim'\n"
    "    files = sorted(pathlib.Path('/usr/lib/python3.11').rglob('*.py'))\n"
    "    deadline = time.monotonic() + 15\n"
    "    read = 0\n"
    "    for path in files:\n"
    "        if time.monotonic() > deadline:\n"
    "            break\n"
    "        path.read_bytes()\n"
    "        read += 1\n"
    "        time.sleep(0.05)\n"
    "    return read\n"
)
BYSTANDER = "import time\ndef main():\n    marker = 'chaos-bystander'\n    time.sleep(4)\n    return 'unaffected'\n"
HELLO = "def main():\n    return 'still serving'\n"


async def start_pair(service, sealed: bool):
    """The victim and a bystander running side by side; (victim task, bystander task, victim id).
    The victim starts alone first, so the one running sandbox is its."""
    executor = service.executor
    victim = asyncio.create_task(executor.execute(RunRequest("python", VICTIM, {})))
    state = service.settings.state_dir
    victim_id = await until(lambda: running_sandbox(executor), what="the victim's sandbox")
    await until(lambda: helpers_up(state, victim_id, sealed), what="the victim's runsc processes")
    bystander = asyncio.create_task(executor.execute(RunRequest("python", BYSTANDER, {})))
    await until(lambda: executor.running == 2, what="both runs started")
    await asyncio.sleep(1.0)  # into the programs, past their imports
    return victim, bystander, victim_id


@pytest.mark.parametrize(("start", "target", "sealed"), [
    ("booted", "runsc-sandbox", False), ("booted", "runsc-gofer", False), ("restored", "runsc-sandbox", False),
    ("restored", "runsc-gofer", False), ("booted", "runsc-sandbox", True), ("restored", "runsc-sandbox", True),
])
async def test_sigkill_of_a_runsc_process_mid_run(make_service, start, target, sealed):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false", SANDBOX_TIMEOUT="30s",
                                 SANDBOX_SNAPSHOTS="auto" if start == "restored" else "off",
                                 SANDBOX_SEALED="auto" if sealed else "off")
    if start == "restored":
        await service.executor.snapshots.wait_ready("python")
    victim, bystander, victim_id = await start_pair(service, sealed)
    pids = runsc_helpers(service.settings.state_dir, victim_id)[target]
    assert pids, f"no {target} process for {victim_id}"
    killed_at = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    execution = await asyncio.wait_for(victim, 40)
    answered_after = time.monotonic() - killed_at
    assert execution.start == start
    if start == "restored" and target == "runsc-gofer" and execution.result["status"] == "success":
        assert execution.result["result"]["value"] > 0  # ran on without its gofer, and said so correctly
    else:
        assert_clear_failure(execution.result)
        assert answered_after < 5, f"the failure took {answered_after:.1f} s to come back"
    other = await asyncio.wait_for(bystander, 40)
    assert other.result["status"] == "success" and other.result["result"]["value"] == "unaffected", other.result
    after = await service.executor.execute(RunRequest("python", HELLO, {}))
    assert after.result["result"]["value"] == "still serving"


@pytest.mark.parametrize("sealed", [False, True])
async def test_sigstop_of_a_sandbox_is_ended_by_the_time_limit(make_service, sealed):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false", SANDBOX_TIMEOUT="3s", SANDBOX_SNAPSHOTS="off",
                                 SANDBOX_SEALED="auto" if sealed else "off")
    executor = service.executor
    task = asyncio.create_task(executor.execute(RunRequest("python", VICTIM, {})))
    state = service.settings.state_dir
    victim_id = await until(lambda: running_sandbox(executor), what="the victim's sandbox")
    helpers = await until(lambda: helpers_up(state, victim_id, sealed), what="the victim's runsc processes")
    started = time.monotonic()
    for pid in helpers["runsc-sandbox"] + helpers["runsc-gofer"]:
        os.kill(pid, signal.SIGSTOP)
    execution = await asyncio.wait_for(task, 60)
    # The 3 s limit, plus the bounded runsc kill (2 s) that a stopped sandbox never answers.
    assert time.monotonic() - started < 3 + 8, "the time limit did not end the stopped sandbox in time"
    assert execution.result["exit_code"] == -124 and execution.result["resource_limit_type"] == "time"
    assert_clear_failure(execution.result)
    await until(lambda: not executor._teardowns, what="the teardown")
    after = await executor.execute(RunRequest("python", HELLO, {}))
    assert after.result["result"]["value"] == "still serving"
