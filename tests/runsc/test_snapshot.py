"""Snapshot images on the real runsc: what a restored sandbox sees, how images are made,
reported, replaced and reused, and what happens when checkpoints fail or cannot be made."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import time

import pytest

from orchestrator.executor import RunRequest
from tests.conftest import REPO, ROOTFS_DIR
from tests.runsc.conftest import run

pytestmark = pytest.mark.runsc

RANDOMNESS = """
import random, ssl, time, uuid
import numpy


def main():
    return {"random": random.random(), "numpy": float(numpy.random.rand()), "uuid": str(uuid.uuid4()),
            "ssl": ssl.RAND_bytes(16).hex(), "time": time.time()}
"""
HELLO = "def main():\n    return 'hi'\n"


@pytest.fixture
def mode() -> str:
    """These tests choose their own settings; sandboxes are restored where an image exists."""
    return "restored"


async def test_restored_sandboxes_do_not_share_randomness_and_see_the_host_clock(make_service):
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false", SANDBOX_TIMEOUT="10s")
    values = []
    for _ in range(2):
        result = await run(service, RANDOMNESS)  # imports numpy: restored from the preload image
        assert result["status"] == "success", result
        values.append(result["result"]["value"])
        assert abs(values[-1]["time"] - time.time()) < 5, "the restored clock is not the host's"
    first, second = values
    for name in ("random", "numpy", "uuid", "ssl"):
        assert first[name] != second[name], f"two restored sandboxes drew the same {name}"


async def test_status_reports_images_and_what_runsc_can_do(make_service):
    service = await make_service()
    executor = service.executor
    await executor.snapshots.wait_ready("python")
    status = executor.status()
    assert status["runsc"]["checkpoint_uncompressed"] is True
    assert status["runsc"]["restore_new_id_new_stdio"] is True
    assert status["runsc"]["cgroups_joined_by"] == "wrapper"  # both supported runsc builds know --ignore-cgroups
    python = status["snapshots"]["profiles"]["python"]
    assert python["state"] == "ready"
    assert python["image"]["size_bytes"] > 1_000_000
    assert python["image"]["age_s"] >= 0
    assert python["image"]["restore_ms"] > 0 and python["image"]["boot_ms"] > 0
    image_dir = pathlib.Path(python["image"]["path"])
    assert (image_dir / "image.json").is_file() and image_dir.parent == executor.snapshots.root
    # (python_preload's may be under way: only this profile's image is complete by now)
    assert not list(image_dir.parent.glob(".making-python-*")), "an image is only visible once complete"
    for profile in ("nodejs", "nodejs_preload"):
        entry = status["snapshots"]["profiles"][profile]
        assert entry["state"] == "off" and "Math.random" in entry["reason"]
    result = await run(service, "function main() { return 1; }", language="nodejs")
    assert result["status"] == "success"


async def test_a_restarted_service_reuses_a_matching_image(make_service, test_env, tmp_path):
    first = await make_service()
    image = await first.executor.snapshots.wait_ready("python")
    await first.close()
    # another state dir and cgroup parent: the fixture checks each service's own for leftovers
    second = await make_service(SANDBOX_STATE_DIR=str(tmp_path / "second"),
                                SANDBOX_CGROUP_PARENT=test_env["SANDBOX_CGROUP_PARENT"] + "-second")
    status = second.executor.snapshots.status()["profiles"]["python"]
    await second.executor.snapshots.wait_ready("python")
    status = second.executor.snapshots.status()["profiles"]["python"]
    assert status["state"] == "ready" and status["makes"] == 0 and "earlier run" in status["reason"], status
    assert status["image"]["path"] == str(image.path)
    assert (await run(second, HELLO))["result"]["value"] == "hi"


async def test_closing_while_an_image_is_made_leaves_no_partial_image(make_service, tmp_path):
    service = await make_service(SANDBOX_SNAPSHOT_DIR=str(tmp_path / "images"))
    root = service.executor.snapshots.root
    deadline = time.monotonic() + 30
    while service.executor.snapshots.status()["profiles"]["python"]["state"] != "making":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # in the middle of the boot or the checkpoint
    await service.close()
    assert not list(root.glob(".making-*"))
    assert all((entry / "image.json").is_file() for entry in root.iterdir())


@pytest.fixture
def rebuilt_rootfs(tmp_path):
    """A rootfs store of the test's own whose python tree can be "rebuilt": two bind mounts of
    the real tree, and a `current` link the test switches from one to the other."""
    real = pathlib.Path(os.path.realpath(ROOTFS_DIR / "python" / "current" / "rootfs"))
    store = tmp_path / "rootfs"
    trees = []
    for name in ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"):
        tree = store / "python" / name / "rootfs"
        tree.mkdir(parents=True)
        manifest = json.loads((real.parent / "manifest.json").read_text())
        (tree.parent / "manifest.json").write_text(json.dumps({**manifest, "inputs_hash": name * 4}))
        subprocess.run(["mount", "--bind", "-o", "ro", str(real), str(tree)], check=True)
        trees.append(tree)
    (store / "python" / "current").symlink_to("aaaaaaaaaaaaaaaa")

    def switch() -> None:
        link = store / "python" / "current.new"
        link.symlink_to("bbbbbbbbbbbbbbbb")
        os.replace(link, store / "python" / "current")

    yield store, trees, switch
    for tree in trees:
        subprocess.run(["umount", "-l", str(tree)], check=False)


async def test_a_rebuilt_rootfs_gets_a_new_image_and_the_old_one_goes(make_service, rebuilt_rootfs, tmp_path):
    store, (old_tree, new_tree), switch = rebuilt_rootfs
    nodejs = os.path.realpath(ROOTFS_DIR / "nodejs" / "current" / "rootfs")
    service = await make_service(SANDBOX_ROOTFS_DIR=str(store), SANDBOX_BASE_NODEJS_IMAGE=nodejs,
                                 SANDBOX_SNAPSHOT_DIR=str(tmp_path / "images"))
    snapshots = service.executor.snapshots
    old = await snapshots.wait_ready("python")
    assert old.rootfs_tree == old_tree
    assert (await run(service, HELLO))["result"]["value"] == "hi"
    switch()
    # The first request after the switch does not get the stale image: it boots on the new tree.
    execution = await service.executor.execute(RunRequest(language="python", source=HELLO, arguments={}))
    assert execution.result["status"] == "success" and execution.start == "booted"
    new = await snapshots.wait_ready("python")
    assert new.rootfs_tree == new_tree and new.key != old.key and new.path != old.path
    assert not old.path.exists(), "the replaced image was not removed"
    assert (await run(service, HELLO))["result"]["value"] == "hi"


async def test_a_failing_checkpoint_falls_back_to_booting_with_the_reason(make_service, tmp_path):
    wrapper = tmp_path / "runsc"
    real = os.environ.get("SANDBOX_RUNSC") or shutil.which("runsc")
    wrapper.write_text(f"""#!/bin/sh
# runsc, except that a checkpoint fails (`runsc help checkpoint` still answers).
previous=""
for arg in "$@"; do
  if [ "$arg" = checkpoint ] && [ "$previous" != help ]; then echo "checkpoint refused by the test" >&2; exit 1; fi
  previous=$arg
done
exec {real} "$@"
""")
    wrapper.chmod(0o755)
    service = await make_service(SANDBOX_RUNSC=str(wrapper), SANDBOX_SNAPSHOT_DIR=str(tmp_path / "images"))
    snapshots = service.executor.snapshots
    with pytest.raises(TimeoutError, match="failed"):
        await snapshots.wait_ready("python")
    status = snapshots.status()["profiles"]["python"]
    assert status["state"] == "failed" and "checkpoint refused by the test" in status["reason"]
    execution = await service.executor.execute(RunRequest(language="python", source=HELLO, arguments={}))
    assert execution.result["result"]["value"] == "hi" and execution.start == "booted"
    with pytest.raises(TimeoutError, match="failed"):
        await snapshots.wait_ready("python_preload")
    assert not list((tmp_path / "images").glob(".making-*")), "a failed image was not cleaned up"


def compat_runsc() -> pathlib.Path | None:
    path = pathlib.Path(os.environ.get("RUNSC_COMPAT", REPO / ".cache" / "runsc-compat" / "usr" / "bin" / "runsc"))
    return path if path.is_file() else None


async def test_the_2022_runsc_runs_everything_without_snapshots(make_service):
    binary = compat_runsc()
    if binary is None:
        message = "no 2022 runsc build (make setup extracts bookworm's into .cache/runsc-compat)"
        if os.environ.get("REQUIRE_RUNSC") == "1":
            pytest.fail(message)
        pytest.skip(message)
    service = await make_service(SANDBOX_RUNSC=str(binary), SANDBOX_EXECUTOR_MANAGER_POOL_SIZE="1", SANDBOX_TIMEOUT="30s",
                                 SANDBOX_POOL_SIZE_PYTHON_PRELOAD="0", SANDBOX_POOL_SIZE_NODEJS_PRELOAD="0")
    status = service.executor.status()
    assert "20221219" in status["runsc"]["version"] and status["runsc"]["checkpoint_uncompressed"] is False
    for entry in status["snapshots"]["profiles"].values():
        assert entry["state"] == "off", entry
    assert "without compression" in status["snapshots"]["profiles"]["python"]["reason"]
    await service.executor.pools["python"].wait_ready(1)
    execution = await service.executor.execute(RunRequest(language="python", source=HELLO, arguments={}))
    assert execution.result["result"]["value"] == "hi" and execution.start == "warm"
    execution = await service.executor.execute(
        RunRequest(language="python", source="import pandas\n\ndef main():\n    return int(pandas.Series([1, 2]).sum())\n",
                   arguments={}))
    assert execution.result["result"]["value"] == 3 and execution.start == "booted"
    assert json.dumps(status)  # the status is JSON-ready
