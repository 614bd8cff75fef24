"""Shared fixtures.  Real-runsc tests skip with a reason when runsc is unusable here, and fail
instead when REQUIRE_RUNSC=1 (CI sets it)."""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import subprocess
import tempfile
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SESSION = uuid.uuid4().hex[:6]  # in the names of this session's cgroups, apart from other sessions' on a dev box
TEST_CGROUP_PREFIX = "gvisor-sandbox-test-"
ROOTFS_DIR = pathlib.Path(os.environ.get("SANDBOX_ROOTFS_DIR", "/var/lib/gvisor-sandbox/rootfs"))


@functools.cache
def runsc_unusable_reason() -> str | None:
    """Why real-runsc tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root"
    runsc = os.environ.get("SANDBOX_RUNSC") or shutil.which("runsc")
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


def require_haproxy() -> str:
    """The haproxy binary (``make setup`` installs Debian's); skip without it, fail under REQUIRE_RUNSC=1."""
    found = shutil.which("haproxy")
    if found is None:
        if os.environ.get("REQUIRE_RUNSC") == "1":
            pytest.fail("REQUIRE_RUNSC=1 but haproxy is not installed (make setup installs it)")
        pytest.skip("haproxy is not installed (make setup installs it)")
    return found


@pytest.fixture
def runsc_ready() -> None:
    require_runsc()


@pytest.fixture
def test_env(tmp_path) -> dict[str, str]:
    """Environment for a service under test: its own state dir and cgroup parent, short limits."""
    return {
        "SANDBOX_STATE_DIR": str(tmp_path / "state"),
        "SANDBOX_ROOTFS_DIR": str(ROOTFS_DIR),
        # One directory of sealed images for every test, even those with a rootfs store of
        # their own (the default is next to the store: each would build its ~0.5 GB image).
        "SANDBOX_SEALED_DIR": str(ROOTFS_DIR.parent / "sealed"),
        "SANDBOX_CGROUP_PARENT": f"{TEST_CGROUP_PREFIX}{SESSION}-{uuid.uuid4().hex[:8]}",
        "SANDBOX_TIMEOUT": "3s",
        "SANDBOX_QUEUE_TIMEOUT": "60s",
        "SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "0",
        # the compatibility run (`make test`) points the whole suite at another runsc build
        **({"SANDBOX_RUNSC": os.environ["SANDBOX_RUNSC"]} if os.environ.get("SANDBOX_RUNSC") else {}),
    }


def _is_other_session(text: str, basetemp: pathlib.Path) -> bool:
    """A test cgroup or a runsc root of another pytest session running on this host, or a
    benchmark's or a soak's cgroup (they check their own leftovers)."""
    if text.startswith(("gvisor-sandbox-bench-", "gvisor-sandbox-soak-")):
        return True
    if text.startswith(TEST_CGROUP_PREFIX):
        return not text.startswith(f"{TEST_CGROUP_PREFIX}{SESSION}-")
    temp_root = str(basetemp.parent)
    return text.startswith(temp_root + "/pytest-") and not text.startswith(str(basetemp) + "/")


def _host_footprint(basetemp: pathlib.Path) -> set[str]:
    """What sandboxes can leave on the host: runsc and dnsmasq processes, sandbox cgroups, our
    netns, links and nftables tables (only what looks like ours: ``gvs`` / ``gvisor``-prefixed; not
    what another pytest session on this host has running)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        roots = [arg[len(b"--root="):].decode(errors="replace") for arg in cmdline if arg.startswith(b"--root=")]
        # Tests keep their state under the session's temp dir (doctor's probe under its own temp
        # dir); a service or another session running on a dev box has other roots.
        ours = roots and (roots[0].startswith(str(basetemp) + "/")
                          or roots[0].startswith(tempfile.gettempdir() + "/gvisor-sandbox-doctor-"))
        if cmdline and cmdline[0].endswith(b"runsc") and ours:
            found.add(f"process {pid} {b' '.join(cmdline)[:100].decode(errors='replace')}")
        # the egress resolver of a test's service (its config lives in the test's state dir)
        if cmdline and cmdline[0].endswith(b"dnsmasq") and any(
                arg.startswith(f"--conf-file={basetemp}/".encode()) for arg in cmdline):
            found.add(f"process {pid} {b' '.join(cmdline)[:100].decode(errors='replace')}")
    cgroup_root = pathlib.Path("/sys/fs/cgroup")
    for hierarchy in cgroup_root.iterdir() if cgroup_root.is_dir() else []:
        for parent in hierarchy.glob("gvisor-sandbox*"):
            if parent.is_dir() and not _is_other_session(parent.name, basetemp):
                found.add(f"cgroup {parent}")
    netns_dir = pathlib.Path("/var/run/netns")
    found |= {f"netns {p.name}" for p in netns_dir.glob("gvs*")} if netns_dir.is_dir() else set()
    found |= {f"link {p.name}" for p in pathlib.Path("/sys/class/net").glob("gvs*")}
    if shutil.which("nft"):
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=30).stdout
        found |= {f"nft {line.strip()}" for line in tables.splitlines() if "gvisor_sandbox" in line}
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_after_the_suite(tmp_path_factory):
    """After the whole suite, nothing the tests created is left on the host (compared with
    what was there before it started, so a service running on a dev box does not count)."""
    if os.geteuid() != 0:
        yield
        return
    basetemp = tmp_path_factory.getbasetemp()
    before = _host_footprint(basetemp)
    yield
    left = sorted(_host_footprint(basetemp) - before)
    assert left == [], f"left on the host after the test suite: {left}"
