"""Shared fixtures.  Real-runsc tests skip with a reason when runsc is unusable here, and fail
instead when REQUIRE_RUNSC=1 (CI sets it)."""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import subprocess
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
ROOTFS_DIR = pathlib.Path(os.environ.get("SANDBOX_ROOTFS_DIR", "/var/lib/gvisor-sandbox/rootfs"))


@functools.cache
def runsc_unusable_reason() -> str | None:
    """Why real-runsc tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root"
    runsc = shutil.which("runsc")
    if runsc is None:
        return "runsc is not installed (apt-get install runsc)"
    for language in ("python", "nodejs"):
        if not (ROOTFS_DIR / language / "current" / "rootfs").is_dir():
            return f"no {language} rootfs under {ROOTFS_DIR} (run `make build`)"
    try:
        done = subprocess.run([runsc, "--network=none", "do", "/bin/true"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "runsc do /bin/true hung"
    if done.returncode != 0:
        return f"runsc do /bin/true failed: {done.stderr.decode(errors='replace')[-300:]}"
    return None


def require_runsc() -> None:
    reason = runsc_unusable_reason()
    if reason is None:
        return
    if os.environ.get("REQUIRE_RUNSC") == "1":
        pytest.fail(f"REQUIRE_RUNSC=1 but runsc is unusable: {reason}")
    pytest.skip(f"runsc unusable: {reason}")


@pytest.fixture
def runsc_ready() -> None:
    require_runsc()


@pytest.fixture
def test_env(tmp_path) -> dict[str, str]:
    """Environment for a service under test: its own state dir and cgroup parent, short limits."""
    return {
        "SANDBOX_STATE_DIR": str(tmp_path / "state"),
        "SANDBOX_ROOTFS_DIR": str(ROOTFS_DIR),
        "SANDBOX_CGROUP_PARENT": f"gvisor-sandbox-test-{uuid.uuid4().hex[:8]}",
        "SANDBOX_TIMEOUT": "3s",
        "SANDBOX_QUEUE_TIMEOUT": "60s",
        "SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "0",
    }
