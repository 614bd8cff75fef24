"""The host changes under a running server (``python -m orchestrator``): its state dir's
filesystem fills up, the rootfs tree goes away, the runsc binary goes missing, its cgroup
parent is removed.  Each: a clear error body while it lasts, ``/healthz`` answering, and
runs served again once the host is back, with nothing left after the server stops (the
``start_server`` fixture checks runsc state, sandbox directories and cgroups)."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from orchestrator.bench.client import is_settled
from orchestrator.host.cgroups import Cgroups
from orchestrator.service import CGROUP_ROOT
from tests.chaos.conftest import assert_clear_failure, get_json, mounts_under, post_run, until
from tests.conftest import REPO, ROOTFS_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

HELLO = "def main():\n    return 'served'\n"


async def settled(url: str) -> bool:
    return is_settled((await get_json(url, "/status"))[1])


async def healthy(url: str) -> None:
    assert await get_json(url, "/healthz") == (200, {"status": "ok"})


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 32 MiB tmpfs of our own (the state dir's filesystem, made small enough to fill)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0711", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def fill_up(directory: pathlib.Path) -> list[pathlib.Path]:
    """Fill the filesystem of ``directory`` to the last page; the files that did it."""
    fillers = []
    for name, block in (("filler", 1 << 20), ("filler-pages", 4096)):
        path = directory / name
        fillers.append(path)
        with open(path, "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return fillers


async def test_a_full_state_dir_gives_clear_errors_and_recovers(start_server, small_tmpfs):
    """The images (under the state dir by default) fill part of it: the plain Python image
    fits, the preload one (~85 MB) does not and says why; then a file fills the rest."""
    server = start_server(SANDBOX_STATE_DIR=str(small_tmpfs / "state"))
    await until(lambda: settled(server.url), timeout=120, what="snapshot images made or failed")
    status, body = await post_run(server.url, HELLO)
    assert body["result"]["value"] == "served", body
    profiles = (await get_json(server.url, "/status"))[1]["snapshots"]["profiles"]
    if profiles["python_preload"]["state"] != "off":  # runsc with snapshots
        assert profiles["python_preload"]["state"] == "failed"
        assert "no space left on device" in profiles["python_preload"]["reason"].lower(), profiles
    sandboxes = small_tmpfs / "state" / "sandboxes"
    await until(lambda: not any(sandboxes.iterdir()), what="the last sandbox torn down")  # frees nothing later
    fillers = fill_up(small_tmpfs)
    assert shutil.disk_usage(small_tmpfs).free == 0
    for _ in range(3):
        status, body = await post_run(server.url, HELLO)
        assert status == 200
        assert_clear_failure(body)
        assert body["exit_code"] == -3 and "no space left on device" in body["stderr"].lower(), body
        await healthy(server.url)
    for filler in fillers:
        filler.unlink()
    status, body = await post_run(server.url, HELLO)
    assert body["result"]["value"] == "served", body
    await until(lambda: not mounts_under(small_tmpfs / "state" / "sandboxes"), what="workspaces unmounted")


def private_rootfs_store(root: pathlib.Path) -> pathlib.Path:
    """A rootfs store of our own whose trees are links to the real ones: removing or renaming
    a language in it is cheap, and the real store (shared with everyone) is never touched."""
    for language in ("python", "nodejs"):
        real = ROOTFS_DIR / language
        current = os.readlink(real / "current")
        (root / language / current).mkdir(parents=True)
        shutil.copy(real / current / "manifest.json", root / language / current / "manifest.json")
        (root / language / current / "rootfs").symlink_to(real / current / "rootfs")
        (root / language / "current").symlink_to(current)
    return root


def run_doctor(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "orchestrator", "doctor"], cwd=REPO, capture_output=True, text=True,
                          env={**env, "PATH": os.environ["PATH"], "SANDBOX_SNAPSHOTS": "off"}, timeout=120)
    return done.stdout


@pytest.mark.parametrize("how", ["renamed", "removed"])
async def test_a_rootfs_gone_under_the_service_is_named_and_doctor_says_why(start_server, tmp_path, how):
    store = private_rootfs_store(tmp_path / "rootfs")
    server = start_server(SANDBOX_ROOTFS_DIR=str(store), SANDBOX_SNAPSHOTS="off")
    status, body = await post_run(server.url, HELLO)
    assert body["result"]["value"] == "served", body
    python = store / "python"
    if how == "renamed":
        python.rename(store / "python.moved")
    else:
        shutil.rmtree(python)
    status, body = await post_run(server.url, HELLO)
    assert_clear_failure(body)
    assert body["exit_code"] == -3 and "the python rootfs" in body["stderr"] and "is missing" in body["stderr"], body
    assert "make build" in body["stderr"]
    await healthy(server.url)
    report = run_doctor({**server.env, "SANDBOX_EXECUTOR_MANAGER_PORT": "1"})
    assert f"FAIL  rootfs     resolve rootfs: python: find rootfs python: no {python}/current" in report, report
    assert "fix: make build" in report
    # Back as it was (a rebuild would make a new tree; the service takes either).
    if how == "renamed":
        (store / "python.moved").rename(python)
    else:
        private_rootfs_store(tmp_path / "again")
        shutil.move(tmp_path / "again" / "python", python)
    status, body = await post_run(server.url, HELLO)
    assert body["result"]["value"] == "served", body
    status, body = await post_run(server.url, "function main() { return 'node too'; }", language="nodejs")
    assert body["result"]["value"] == "node too", body


async def test_a_missing_runsc_binary_is_named_and_nothing_is_left(start_server, tmp_path, chaos_snapshot_dir):
    """Restored sandboxes too: the delete that follows a restore cannot run without runsc,
    and its runsc state must still go (it outlived the request before)."""
    binary = tmp_path / "bin" / "runsc"
    binary.parent.mkdir()
    binary.symlink_to(os.environ.get("SANDBOX_RUNSC") or shutil.which("runsc"))
    server = start_server(SANDBOX_RUNSC=str(binary), SANDBOX_SNAPSHOT_DIR=str(chaos_snapshot_dir))
    await until(lambda: settled(server.url), timeout=180, what="snapshot images made")
    status, body = await post_run(server.url, HELLO)
    assert body["result"]["value"] == "served", body
    binary.unlink()
    for _ in range(2):
        status, body = await post_run(server.url, HELLO)
        assert_clear_failure(body)
        assert body["exit_code"] == -3 and f"the runsc binary {binary} is missing" in body["stderr"], body
    await healthy(server.url)
    binary.symlink_to(os.environ.get("SANDBOX_RUNSC") or shutil.which("runsc"))
    status, body = await post_run(server.url, HELLO)
    assert body["result"]["value"] == "served", body
    state = pathlib.Path(server.env["SANDBOX_STATE_DIR"])
    await until(lambda: not list((state / "runsc").iterdir()), what="no runsc state left")
    profiles = (await get_json(server.url, "/status"))[1]["snapshots"]["profiles"]
    if profiles["python"]["state"] != "off":
        assert profiles["python"]["state"] == "ready", profiles["python"]  # serves its image again


async def test_a_cgroup_parent_removed_from_outside_is_recreated(start_server):
    server = start_server(SANDBOX_SNAPSHOTS="off")
    status, body = await post_run(server.url, HELLO)
    assert body["result"]["value"] == "served", body
    cgroups = Cgroups(CGROUP_ROOT, server.env["SANDBOX_CGROUP_PARENT"])
    await until(lambda: cgroups.list_sandboxes() == [], what="the last sandbox's cgroup removed")
    cgroups.remove_parent()  # what an operator's cleanup does to an idle service
    assert not any(directory.exists() for directory in cgroups._all_dirs(None))
    status, body = await post_run(server.url, HELLO)
    assert body["result"]["value"] == "served", body
    assert body["memory_used_kb"] is not None  # accounted in the recreated parent
    assert "was removed from outside; recreating it" in server.log_path.read_text()
