"""A real service (real runsc, real rootfs, real cgroups) per test, checked for leftovers."""

from __future__ import annotations

import base64
import os
import pathlib

import pytest

from orchestrator.executor import RunRequest
from orchestrator.service import start_service
from orchestrator.settings import Settings
from tests.conftest import require_runsc


def assert_nothing_left(service) -> None:
    """No runsc container, no sandbox cgroup, no sandbox directory, no runsc process of ours."""
    state = service.settings.state_dir
    runsc_root = state / "runsc"
    leftovers = sorted(p.name for p in runsc_root.iterdir()) if runsc_root.is_dir() else []
    assert leftovers == [], f"runsc state left: {leftovers}"
    assert service.cgroups.list_sandboxes() == [], "sandbox cgroups left"
    sandboxes = state / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == [], "sandbox directories left"
    ours = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"--root={runsc_root}" in cmdline:
            ours.append(cmdline.replace("\0", " ")[:120])
    assert ours == [], f"runsc processes left: {ours}"


MODES = ("cold", "warm", "restored")


@pytest.fixture(params=MODES)
def mode(request) -> str:
    """Every test of the contract runs three times: sandboxes booted on demand (snapshots
    off), taken from a pool (whose members are restored where the runsc can, else booted),
    and restored on demand from a snapshot image (runsc 20240729 and later)."""
    return request.param


@pytest.fixture(scope="session")
def snapshot_dir(tmp_path_factory) -> pathlib.Path:
    """One image directory for the whole session: services with the same settings reuse
    each other's images (a service making its own removes those that do not match)."""
    return tmp_path_factory.mktemp("snapshots")


@pytest.fixture
def strict_umask():
    """The service runs with the strictest umask a unit could give it (systemd's UMask=0077):
    every file and directory a sandbox reads or writes must get its mode explicitly."""
    old = os.umask(0o077)
    yield
    os.umask(old)


@pytest.fixture
async def make_service(test_env, mode, snapshot_dir, strict_umask):
    """Factory: ``await make_service(SANDBOX_X=...)`` starts a service with extra settings,
    under umask 0077.

    In warm mode each pool a test's code routes to has one member, and ``run`` waits for it
    and checks that the request was served warm; in restored mode ``run`` waits for the
    image of the profile the code routes to and checks that the sandbox was restored."""
    require_runsc()
    started = []

    async def make(**overrides):
        env = {**test_env, "SANDBOX_SNAPSHOT_DIR": str(snapshot_dir)}
        if mode == "cold":
            env["SANDBOX_SNAPSHOTS"] = "off"
        if mode == "warm":
            env.update(SANDBOX_EXECUTOR_MANAGER_POOL_SIZE="1", SANDBOX_POOL_SIZE_PYTHON_PRELOAD="0",
                       SANDBOX_POOL_SIZE_NODEJS_PRELOAD="0")
        env.update({k: str(v) for k, v in overrides.items()})
        service = await start_service(Settings.from_env(env))
        service.mode = mode
        service.used_sandbox_ids = set()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.close()
        assert_nothing_left(service)
        service.cgroups.remove_parent()


@pytest.fixture
async def service(make_service):
    return await make_service()


async def run(service, code: str, language: str = "python", **arguments):
    """Execute ``code`` through the service's executor (the path /run takes); in warm mode
    wait for the pool the code routes to and assert the request was served from it; in
    restored mode wait for the profile's image and assert the sandbox was restored."""
    executor = service.executor
    profile = executor.route(executor.languages[language], code)
    pool = executor.pools.get(profile)
    mode = getattr(service, "mode", "cold")
    warm = mode == "warm" and pool is not None
    restored = mode == "restored" and executor.languages[language].snapshot
    if warm:
        await pool.wait_ready(1)
    if restored:
        await executor.snapshots.wait_ready(profile)
    before = executor.warm_starts
    execution = await executor.execute(RunRequest(language=language, source=code, arguments=arguments))
    result = execution.result
    if result["exit_code"] != -999:
        expected = "warm" if warm else "restored" if restored else "booted"
        assert execution.start == expected, f"served {execution.start}, expected {expected}"
    if warm and result["exit_code"] != -999:
        assert executor.warm_starts == before + 1 and execution.warm, "the request was not served warm"
    if result["exit_code"] != -999:
        assert execution.sandbox_id not in service.used_sandbox_ids, "a sandbox served a second request"
        service.used_sandbox_ids.add(execution.sandbox_id)
    return result


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
