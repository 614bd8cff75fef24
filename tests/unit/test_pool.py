"""Pool logic against FakeRuntime (real runners on the host, no isolation): refill, single
use, replacement of dead and stale members, bounded boots, failing boots, cancellation."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal

import pytest

from orchestrator.errors import SandboxError
from orchestrator.executor import Executor, RunRequest
from orchestrator.language import load_languages
from orchestrator.pool import Profile, SandboxPool
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.sandbox import Job, Sandbox, SandboxHost
from orchestrator.settings import Settings

REPO = pathlib.Path(__file__).resolve().parents[2]
LANGUAGES = load_languages([REPO / "languages"])


@pytest.fixture
def host(tmp_path):
    return SandboxHost(runtime=FakeRuntime(), cgroups=None, state_dir=tmp_path / "state", bounded_workspace=False,
                       uid=os.getuid() or 10001, gid=os.getgid() or 10001, limits=Settings().limits)


def make_pool(host, tmp_path, *, size=2, slots=None, max_age_s=1800.0, preload=False):
    language = LANGUAGES["python"]
    return SandboxPool(Profile("python", preload, size),
                       lambda: Sandbox(language, tmp_path, host, preload=preload, warm=True),
                       boot_slots=slots or asyncio.Semaphore(2), max_age_s=max_age_s)


def sandbox_dirs(host) -> list[str]:
    base = host.state_dir / "sandboxes"
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


async def eventually(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_refills_after_each_take_and_each_member_is_used_once(host, tmp_path):
    pool = make_pool(host, tmp_path, size=2)
    pool.start()
    try:
        await pool.wait_ready(timeout=20)
        first = pool.take()
        assert first is not None and first.is_alive
        record = await first.run(Job(source=b"def main():\n    return 5\n", arguments={}, timeout_s=5))
        assert record.returned and record.result_json is not None
        with pytest.raises(SandboxError, match="already served"):
            await first.run(Job(source=b"def main():\n    return 5\n", arguments={}, timeout_s=5))
        await first.destroy()
        await pool.wait_ready(timeout=20)
        ids = {s.id for s in pool._ready}
        assert first.id not in ids and len(ids) == 2
        assert pool.status()["taken"] == 1 and pool.status()["boots"] == 3
    finally:
        await pool.close()
    assert await host.runtime.list_ids() == []
    assert sandbox_dirs(host) == []


async def test_empty_pool_returns_none(host, tmp_path):
    pool = make_pool(host, tmp_path, size=0)
    pool.start()
    assert pool.take() is None
    await pool.close()


async def test_member_that_dies_while_idle_is_replaced(host, tmp_path):
    pool = make_pool(host, tmp_path, size=1)
    pool.start()
    try:
        await pool.wait_ready(timeout=20)
        victim = pool._ready[0]
        os.killpg(victim._process.pid, signal.SIGKILL)
        await eventually(lambda: pool.status()["replaced"] == 1)
        await pool.wait_ready(timeout=20)
        assert pool._ready[0].id != victim.id
        fresh = pool.take()
        assert fresh is not None and fresh.is_alive
        await fresh.destroy()
    finally:
        await pool.close()
    assert sandbox_dirs(host) == []


async def test_stale_members_are_recycled(host, tmp_path):
    pool = make_pool(host, tmp_path, size=1, max_age_s=0.5)
    pool.start()
    try:
        await pool.wait_ready(timeout=20)
        first_id = pool._ready[0].id
        await eventually(lambda: pool.status()["replaced"] >= 1, timeout=15)
        await pool.wait_ready(timeout=20)
        assert pool._ready[0].id != first_id
    finally:
        await pool.close()


async def test_boots_are_bounded_by_the_shared_slots(host, tmp_path):
    slots = asyncio.Semaphore(1)
    pools = [make_pool(host, tmp_path, size=3, slots=slots) for _ in range(2)]
    peak = 0
    for pool in pools:
        pool.start()
    try:
        for _ in range(400):
            booting_now = sum(1 for p in host.runtime._processes.values() if p.returncode is None) - sum(
                p.ready_count for p in pools)
            peak = max(peak, booting_now)
            if all(p.ready_count == 3 for p in pools):
                break
            await asyncio.sleep(0.01)
        assert all(p.ready_count == 3 for p in pools)
        assert peak <= 1
    finally:
        for pool in pools:
            await pool.close()


async def test_failing_boots_back_off_and_recover(host, tmp_path):
    host.runtime.fail_start = True
    pool = make_pool(host, tmp_path, size=1)
    pool.start()
    try:
        await eventually(lambda: pool.status()["boot_failures"] >= 2, timeout=10)
        assert "fake failure" in pool.status()["last_error"]
        assert pool.take() is None
        host.runtime.fail_start = False
        await pool.wait_ready(timeout=40)
        assert pool.status()["last_error"] is None
    finally:
        await pool.close()
    assert sandbox_dirs(host) == []


async def test_close_during_boot_leaves_nothing(host, tmp_path):
    pool = make_pool(host, tmp_path, size=2)
    pool.start()
    await eventually(lambda: host.runtime.started != [], timeout=10)
    await pool.close()
    await eventually(lambda: all(p.returncode is not None for p in host.runtime._processes.values()), timeout=10)
    assert sandbox_dirs(host) == []


def test_route_by_imports(tmp_path):
    executor = Executor(Settings(), LANGUAGES, {}, host=None)
    python, node = LANGUAGES["python"], LANGUAGES["nodejs"]
    assert executor.route(python, "def main():\n    return 1\n") == "python"
    assert executor.route(python, "import pandas as pd\ndef main(): pass\n") == "python_preload"
    assert executor.route(python, "from matplotlib import pyplot\n") == "python_preload"
    assert executor.route(python, "import numpy.linalg\n") == "python_preload"
    assert executor.route(python, "import requests\n") == "python"
    assert executor.route(python, "def main(:\n") == "python_preload"  # unknown imports: the richer pool
    assert executor.route(node, "const axios = require('axios');\n") == "nodejs_preload"
    assert executor.route(node, "function main() { return 1 }\n") == "nodejs"


async def test_executor_serves_warm_then_cold_when_pool_is_empty(host, tmp_path):
    settings = Settings(state_dir=host.state_dir, pool_size=1, pool_sizes={"python_preload": 0, "nodejs": 0,
                                                                           "nodejs_preload": 0})
    executor = Executor(settings, LANGUAGES, {name: tmp_path for name in LANGUAGES}, host)
    executor.start_pools()
    try:
        await executor.pools["python"].wait_ready(timeout=20)
        request = RunRequest("python", "def main():\n    return 1\n", {})
        first, second = await asyncio.gather(executor.execute(request), executor.execute(request))
        assert sorted([first.warm, second.warm]) == [False, True]
        assert first.sandbox_id != second.sandbox_id
        assert first.result["result"]["value"] == second.result["result"]["value"] == 1
        assert executor.status()["warm_starts"] == 1 and executor.status()["cold_starts"] == 1
    finally:
        await executor.close()
    assert sandbox_dirs(host) == []


async def test_members_booted_on_a_rebuilt_rootfs_are_not_handed_out(host, tmp_path):
    """After a rebuild switches `current`, members booted on the old tree are replaced."""
    (tmp_path / "tree-a").mkdir()
    (tmp_path / "tree-b").mkdir()
    current = tmp_path / "current"
    current.symlink_to("tree-a")
    language = LANGUAGES["python"]
    pool = SandboxPool(Profile("python", False, 1), lambda: Sandbox(language, current, host, warm=True),
                       boot_slots=asyncio.Semaphore(1))
    pool.start()
    try:
        await pool.wait_ready(timeout=20)
        assert pool._ready[0].rootfs_tree == tmp_path / "tree-a"
        current.unlink()
        current.symlink_to("tree-b")
        assert pool.take() is None
        assert pool.status()["replaced"] == 1
        await pool.wait_ready(timeout=20)
        fresh = pool.take()
        assert fresh is not None and fresh.rootfs_tree == tmp_path / "tree-b"
        await fresh.destroy()
    finally:
        await pool.close()
