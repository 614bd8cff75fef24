"""Sandbox directories and workspace files get their exact modes whatever the umask (no root:
the sandbox uid is our own here and the workspace is a plain directory, no tmpfs)."""

from __future__ import annotations

import os
import stat

import pytest

from orchestrator.host import workspace


@pytest.fixture
def strict_umask():
    """The strictest umask a unit could set (systemd's UMask=0077)."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("umask", [0o077, 0o027, 0o022, 0o000], ids=oct)
def test_modes_do_not_depend_on_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        dirs = workspace.create_sandbox_dirs(tmp_path / "state", "sb-1", os.getuid(), os.getgid())
        workspace.write_workspace_file(dirs, "main.js", b"console.log(1)\n")
    finally:
        os.umask(old)
    assert mode(tmp_path / "state" / "sandboxes") == 0o711
    assert mode(dirs.root) == 0o711
    assert mode(dirs.bundle) == 0o700
    assert mode(dirs.workspace) == 0o755
    assert mode(dirs.workspace / "artifacts") == 0o755
    assert mode(dirs.workspace / "main.js") == 0o444  # read by the sandbox uid as "other"
    assert (dirs.workspace / "main.js").read_bytes() == b"console.log(1)\n"


def test_an_existing_file_is_refused_not_overwritten(tmp_path, strict_umask):
    dirs = workspace.create_sandbox_dirs(tmp_path, "sb-1", os.getuid(), os.getgid())
    workspace.write_workspace_file(dirs, "main.py", b"first")
    with pytest.raises(workspace.HostError, match=r"write .*main.py: .*File exists"):
        workspace.write_workspace_file(dirs, "main.py", b"second")
    assert (dirs.workspace / "main.py").read_bytes() == b"first"
