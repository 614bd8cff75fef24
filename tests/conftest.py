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


def _host_footprint() -> set[str]:
    """What sandboxes can leave on the host: runsc processes, sandbox cgroups, our netns,
    veths and nftables tables (only what looks like ours: ``gvs`` / ``gvisor``-prefixed)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"runsc") and any(arg.startswith(b"--root=") for arg in cmdline):
            found.add(f"process {pid} {b' '.join(cmdline)[:100].decode(errors='replace')}")
    cgroup_root = pathlib.Path("/sys/fs/cgroup")
    for hierarchy in cgroup_root.iterdir() if cgroup_root.is_dir() else []:
        for parent in hierarchy.glob("gvisor-sandbox*"):
            if parent.is_dir():
                found.add(f"cgroup {parent}")
    netns_dir = pathlib.Path("/var/run/netns")
    found |= {f"netns {p.name}" for p in netns_dir.glob("gvs*")} if netns_dir.is_dir() else set()
    found |= {f"link {p.name}" for p in pathlib.Path("/sys/class/net").glob("gvs*")}
    if shutil.which("nft"):
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=30).stdout
        found |= {f"nft {line.strip()}" for line in tables.splitlines() if "gvisor_sandbox" in line}
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_after_the_suite():
    """After the whole suite, nothing the tests created is left on the host (compared with
    what was there before it started, so a service running on a dev box does not count)."""
    if os.geteuid() != 0:
        yield
        return
    before = _host_footprint()
    yield
    left = sorted(_host_footprint() - before)
    assert left == [], f"left on the host after the test suite: {left}"
