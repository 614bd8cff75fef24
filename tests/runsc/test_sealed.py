"""Sealed Python sandboxes on the real runsc: no gofer, no host workspace, and a runner that
lies about its artifacts is caught (the rest of the contract runs sealed in every other test
of this directory, since Python is sealed by default)."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from orchestrator.errors import ProtocolError
from orchestrator.executor import RunRequest
from orchestrator.sandbox import Job, Sandbox
from tests.runsc.conftest import run


def runsc_processes_of(sandbox_id: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if sandbox_id in cmdline:
            found.append(cmdline.split("\0")[0])
    return found


@pytest.mark.parametrize("mode", ["cold"], indirect=True)
async def test_a_sealed_sandbox_has_no_gofer_no_host_workspace_and_runs(service):
    """Its processes are runsc's sandbox and stubs only; its host directory holds the bundle
    and runsc's log, no workspace; its spec names the EROFS image; and it runs a request,
    its source written inside, its artifact sent back."""
    executor = service.executor
    images = service.executor.host.sealed
    assert images is not None and images.status()["off"] == {}, images.status() if images else None
    language = executor.languages["python"]
    sandbox = Sandbox(language, executor.rootfs["python"], executor.host)
    try:
        await sandbox.boot()
        assert sandbox.sealed and sandbox.workspace_dir is None
        root = service.settings.state_dir / "sandboxes" / sandbox.id
        assert sorted(p.name for p in root.iterdir()) == ["bundle", "runsc.log"]
        spec = json.loads((root / "bundle" / "config.json").read_text())
        assert spec["annotations"]["dev.gvisor.spec.rootfs.type"] == "erofs"
        assert pathlib.Path(spec["annotations"]["dev.gvisor.spec.rootfs.source"]).is_file()
        assert [m for m in spec["mounts"] if m["type"] == "bind"] == []
        commands = runsc_processes_of(sandbox.id)
        assert "runsc-sandbox" in commands and "runsc-gofer" not in commands, commands
        code = ("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                "def main():\n    plt.plot([1, 2])\n    plt.savefig('artifacts/p.png')\n"
                "    return open(__file__).read().count('savefig')\n")
        record = await sandbox.run(Job(source=code.encode(), arguments={}, timeout_s=20))
        assert record.exit_code == 0 and json.loads(record.result_json)["value"] == 2, record.stderr
        assert [name for name, _ in sandbox.artifacts] == ["p.png"]
        assert sandbox.artifacts[0][1].startswith(b"\x89PNG")
    finally:
        await sandbox.destroy()


@pytest.mark.parametrize("mode", ["cold"], indirect=True)
async def test_forged_artifact_frames_are_refused_and_the_service_goes_on(make_service):
    """The user's code shares the runner's process: it can write to the control socket. A
    frame that names a path outside the workspace, or promises more bytes than the cap, is
    a protocol error for that request; nothing of it is kept, and the next request runs."""
    forge = ("import os, socket, stat\n"
             "def main(name, size):\n"
             "    for fd in range(3, 64):\n"
             "        try:\n"
             "            if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
             "                header = '{\"type\": \"artifact\", \"name\": %s, \"size\": %d}\\n' % (name, size)\n"
             "                os.write(fd, header.encode() + b'x' * 3)\n"
             "        except OSError:\n"
             "            pass\n"
             "    return 1\n")
    service = await make_service(SANDBOX_ENABLE_AST_ANALYSIS="false")  # the forger imports os and socket
    executor = service.executor
    for name, size in (('"../evil.png"', 3), ('"big.png"', 64 * 1024 * 1024)):
        with pytest.raises(ProtocolError, match="artifact"):
            await executor.execute(RunRequest(language="python", source=forge,
                                              arguments={"name": name, "size": size}))
    result = await run(service, "def main():\n    return 'still here'\n")
    assert result["status"] == "success" and result["result"]["value"] == "still here"
