"""A real service (real runsc, real rootfs, real cgroups) per test, checked for leftovers."""

from __future__ import annotations

import base64
import os
import pathlib

import pytest

from orchestrator.executor import RunRequest
from orchestrator.host.cgroups import Cgroups
from orchestrator.service import CGROUP_ROOT, start_service
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


@pytest.fixture
async def make_service(test_env):
    """Factory: ``await make_service(SANDBOX_X=...)`` starts a service with extra settings."""
    require_runsc()
    started = []

    async def make(**overrides):
        env = {**test_env, **{k: str(v) for k, v in overrides.items()}}
        service = await start_service(Settings.from_env(env))
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


def run(service, code: str, language: str = "python", **arguments):
    """Execute ``code`` through the service's executor (the path /run takes)."""
    return service.executor.execute(RunRequest(language=language, source=code, arguments=arguments))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
