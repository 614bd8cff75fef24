"""The snapshot store and restored sandboxes against FakeRuntime (real runners on the host, a
stand-in image): making, proving, leasing, replacing, failing, reusing; the executor serving
restored sandboxes; the python runner's resume handshake and reseeding."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib

import pytest

from orchestrator.errors import RunscError
from orchestrator.executor import Executor, RunRequest
from orchestrator.language import load_languages
from orchestrator.runtime.fake import FakeRuntime
from orchestrator.sandbox import Job, Sandbox, SandboxHost
from orchestrator.settings import Settings
from orchestrator.snapshot import META, KeyInputs, ProfileSpec, SnapshotStore, image_key
from orchestrator.start import Restore

REPO = pathlib.Path(__file__).resolve().parents[2]
LANGUAGES = load_languages([REPO / "languages"])
PYTHON = ProfileSpec("python", "python", False)


class FailingCheckpoint(FakeRuntime):
    async def checkpoint(self, sandbox_id, image_dir, *, uncompressed=True):
        raise RunscError("checkpoint sandbox: refused", sandbox_id=sandbox_id)


@pytest.fixture
def host(tmp_path):
    return SandboxHost(runtime=FakeRuntime(), cgroups=None, state_dir=tmp_path / "state", bounded_workspace=False,
                       uid=os.getuid() or 10001, gid=os.getgid() or 10001, limits=Settings().limits)


class Inputs(KeyInputs):
    """Key inputs a test can move (stands in for a rebuilt rootfs or a new runsc) or make
    unreadable (a rootfs or runsc binary that is gone for a while)."""

    def __init__(self):
        self.generation = 0
        self.missing: str | None = None

    def key(self, profile, *, rehash=True):
        if self.missing is not None:
            raise FileNotFoundError(2, "No such file or directory", self.missing)
        return image_key({"profile": profile.key, "generation": self.generation})


def make_store(host, tmp_path, *, profiles=(PYTHON,), off=None, inputs=None, slower_factor=float("inf")):
    """A store over FakeRuntime, whose "restore" is a boot plus a relay: slower than a boot, so
    the comparison is off unless a test sets ``slower_factor``."""
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)

    def make_sandbox(profile, lease):
        return Sandbox(LANGUAGES[profile.language], tree, host, preload=profile.preload,
                       start=Restore(lease) if lease is not None else None)

    return SnapshotStore(tmp_path / "images", list(profiles), inputs or Inputs(), make_sandbox,
                         lambda profile: tree, off=off, slower_factor=slower_factor)


async def run_hello(sandbox: Sandbox) -> dict:
    record = await sandbox.run(Job(source=b"def main():\n    return 41 + 1\n", arguments={}, timeout_s=5))
    assert record.returned, record.stderr
    return json.loads(record.result_json)


async def test_an_image_is_made_proven_and_leased(host, tmp_path):
    store = make_store(host, tmp_path)
    store.start()
    try:
        image = await store.wait_ready("python", timeout=30)
        assert image.path.name.startswith("python-") and (image.path / META).is_file()
        assert (image.path / "fake-image.json").is_file()
        assert image.boot_ms is not None and image.restore_ms is not None
        assert store.restore_proven is True
        assert len(host.runtime.checkpointed) == 1 and len(host.runtime.restored) == 2  # two proofs
        lease = store.lease("python")
        sandbox = Sandbox(LANGUAGES["python"], tmp_path / "tree", host, start=Restore(lease))
        assert image.leases == 1
        await sandbox.boot()
        assert image.leases == 0, "the lease is given back once the restore is over"
        assert sandbox.start_kind == "restored" and sandbox.reseeded is not None
        assert (await run_hello(sandbox))["value"] == 42
        await sandbox.destroy()
    finally:
        await store.close()
    assert not list((tmp_path / "images").glob(".making-*"))


async def test_moved_inputs_retire_the_image_after_its_last_lease(host, tmp_path):
    inputs = Inputs()
    store = make_store(host, tmp_path, inputs=inputs)
    store.start()
    try:
        old = await store.wait_ready("python", timeout=30)
        held = store.lease("python")
        inputs.generation = 1  # e.g. `make build` switched the rootfs
        assert store.lease("python") is None, "a stale image must not be leased"
        new = await store.wait_ready("python", timeout=30)
        assert new.key != old.key and new.path != old.path
        assert old.path.exists(), "a leased image was removed"
        held.release()
        held.release()  # idempotent
        assert not old.path.exists(), "the replaced image outlived its last lease"
        assert store.status()["retired_images"] == 0
    finally:
        await store.close()


async def test_an_image_whose_inputs_were_gone_for_a_while_serves_again(host, tmp_path):
    """The rootfs (or the runsc binary) is removed under the running service, then restored
    unchanged: no lease while it is gone, the same image again once it is back."""
    inputs = Inputs()
    store = make_store(host, tmp_path, inputs=inputs)
    store.start()
    try:
        image = await store.wait_ready("python", timeout=30)
        inputs.missing = "/var/lib/gvisor-sandbox/rootfs/python/current/rootfs"
        assert store.lease("python") is None
        entry = store.status()["profiles"]["python"]
        assert entry["state"] == "failed" and "No such file or directory" in entry["reason"]
        inputs.missing = None
        lease = store.lease("python")
        assert lease is not None and lease.image is image
        assert store.status()["profiles"]["python"]["state"] == "ready"
        lease.release()
        assert image.path.exists()
    finally:
        await store.close()


async def test_a_failing_checkpoint_is_reported_and_not_retried_at_once(tmp_path):
    runtime = FailingCheckpoint()
    host = SandboxHost(runtime=runtime, cgroups=None, state_dir=tmp_path / "state", bounded_workspace=False,
                       uid=os.getuid() or 10001, gid=os.getgid() or 10001, limits=Settings().limits)
    store = make_store(host, tmp_path)
    store.start()
    try:
        with pytest.raises(TimeoutError, match="failed"):
            await store.wait_ready("python", timeout=30)
        status = store.status()["profiles"]["python"]
        assert status["state"] == "failed" and "refused" in status["reason"] and status["makes"] == 1
        assert store.lease("python") is None
        await asyncio.sleep(0.3)
        assert store.status()["profiles"]["python"]["makes"] == 1, "retried at once"
    finally:
        await store.close()
    assert not list((tmp_path / "images").iterdir())


async def test_a_profile_whose_restore_is_clearly_slower_keeps_booting(host, tmp_path):
    store = make_store(host, tmp_path, slower_factor=0.0)
    store.start()
    try:
        with pytest.raises(TimeoutError, match="slower"):
            await store.wait_ready("python", timeout=30)
        assert "a restore took" in store.status()["profiles"]["python"]["reason"]
        assert store.lease("python") is None
    finally:
        await store.close()
    assert not list((tmp_path / "images").iterdir()), "the slower image was kept"


async def test_profiles_that_are_off_say_why_and_make_nothing(host, tmp_path):
    store = make_store(host, tmp_path, off={"python": "SANDBOX_SNAPSHOTS=off"})
    store.start()
    assert store.status()["profiles"]["python"] == {"state": "off", "reason": "SANDBOX_SNAPSHOTS=off",
                                                     "makes": 0, "make_ms": None}
    assert store.lease("python") is None
    await store.close()
    assert host.runtime.started == []


async def test_images_of_an_earlier_run_are_reused_when_they_match(host, tmp_path):
    first = make_store(host, tmp_path)
    first.start()
    image = await first.wait_ready("python", timeout=30)
    await first.close()
    stray = tmp_path / "images" / "python-0000000000000000"
    stray.mkdir()
    second = make_store(host, tmp_path)
    second.start()
    try:
        again = await second.wait_ready("python", timeout=30)
        assert again.path == image.path and second.status()["profiles"]["python"]["makes"] == 0
        assert not stray.exists(), "an image that matches nothing was kept"
    finally:
        await second.close()


async def test_executor_restores_on_demand_and_says_so(host, tmp_path):
    settings = Settings(state_dir=host.state_dir, pool_size=0)
    executor = Executor(settings, LANGUAGES, {name: tmp_path / "tree" for name in LANGUAGES}, host)
    store = make_store(host, tmp_path)
    executor.snapshots = store
    store.start()
    try:
        await store.wait_ready("python", timeout=30)
        execution = await executor.execute(RunRequest("python", "def main():\n    return 7\n", {}))
        assert execution.result["result"]["value"] == 7 and execution.start == "restored"
        execution = await executor.execute(RunRequest("nodejs", "function main() { return 8; }\n", {}))
        assert execution.start == "booted"
        status = executor.status()
        assert status["restored_starts"] == 1 and status["cold_starts"] == 1
        assert status["snapshots"]["profiles"]["python"]["state"] == "ready"
    finally:
        await executor.close()


def test_key_inputs_follow_the_runsc_binary_without_hashing_it_on_a_request(tmp_path):
    binary = tmp_path / "runsc"
    binary.write_bytes(b"build one")
    inputs = KeyInputs(binary, "0.0~20240729.0", ["--platform=ptrace"], lambda profile: {"spec": {"x": 1}})
    first = inputs.key(PYTHON)
    assert inputs.key(PYTHON, rehash=False) == first  # unchanged: no hashing needed
    os.utime(binary, ns=(1, 1))
    binary.write_bytes(b"build two")
    assert inputs.key(PYTHON, rehash=False) is None, "a changed binary must read as stale, unhashed"
    second = inputs.key(PYTHON)
    assert second != first and inputs.key(PYTHON, rehash=False) == second
    assert KeyInputs(binary, "0.0~20240729.0", ["--platform=systrap"], lambda p: {"spec": {"x": 1}}).key(PYTHON) != second


def test_key_inputs_compute_a_key_again_only_when_its_parts_change(tmp_path, monkeypatch):
    binary = tmp_path / "runsc"
    binary.write_bytes(b"build one")
    parts = {"python": {"rootfs": ["tree-1"]}, "python_preload": {"rootfs": ["tree-1"]}}
    inputs = KeyInputs(binary, "0.0~20240729.0", ["--platform=ptrace"], lambda profile: parts[profile.key])
    preload = ProfileSpec("python_preload", "python", True)
    first, first_preload = inputs.key(PYTHON), inputs.key(preload)
    assert first != first_preload  # the profile itself is part of the key
    computed = []
    monkeypatch.setattr("orchestrator.snapshot.image_key", lambda value: computed.append(value) or image_key(value))
    assert [inputs.key(PYTHON) for _ in range(3)] == [first] * 3 and computed == []  # the same parts: no digest
    parts["python"] = {"rootfs": ["tree-2"]}  # a rebuilt rootfs: profile_parts gives another object
    second = inputs.key(PYTHON)
    assert second != first and len(computed) == 1 and inputs.key(PYTHON) == second and len(computed) == 1
    assert inputs.key(preload) == first_preload and len(computed) == 1  # another profile's parts stood
    parts["python"] = {"rootfs": ["tree-1"]}  # equal to the first parts again: the first key again
    assert inputs.key(PYTHON) == first and len(computed) == 2
    os.utime(binary, ns=(1, 1))
    binary.write_bytes(b"build two")
    assert inputs.key(PYTHON) not in (first, second) and len(computed) == 3  # a new binary: a new key


async def test_a_pool_waits_for_its_image_instead_of_booting_the_slow_way(host, tmp_path):
    settings = Settings(state_dir=host.state_dir, pool_size=1, pool_sizes={"python_preload": 0, "nodejs": 0,
                                                                           "nodejs_preload": 0})
    executor = Executor(settings, LANGUAGES, {name: tmp_path / "tree" for name in LANGUAGES}, host)
    store = make_store(host, tmp_path)
    executor.snapshots = store
    store.start()
    executor.start_pools()
    try:
        await executor.pools["python"].wait_ready(timeout=30)
        status = executor.pools["python"].status()
        assert status["restores"] == 1 and status["boots"] == 0, status
        execution = await executor.execute(RunRequest("python", "def main():\n    return 3\n", {}))
        assert execution.start == "warm" and execution.result["result"]["value"] == 3
    finally:
        await executor.close()
