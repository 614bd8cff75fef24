"""Per-sandbox host directories under the service's state dir, and nothing else.

    <state>/sandboxes/<id>/            root-only
        bundle/config.json             the OCI bundle (bundles.writer writes it)
        runsc.log                      runsc's own messages (never mixed into user output)
        workspace/                     bind-mounted read-write at /workspace, owned by the
            artifacts/                 sandbox uid; files the program leaves here are
                                       collected as artifacts

With a size, the workspace is a tmpfs of its own mounted on the host (``size=``, owned by the
sandbox uid), so a program filling its disk gets ENOSPC and the host's disks are untouched;
unmounting it and removing the directory is the whole undo.  ``list_sandbox_dirs`` lets
start-up reap leftovers.

Every mode is set explicitly (``chmod``/``fchmod`` after creating), never left to the umask:
a unit's ``UMask=0027`` once turned main.js's 0444 into a root-only 0440 that the sandbox uid
could not read.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import shutil
from dataclasses import dataclass

from orchestrator.errors import HostError


@dataclass(frozen=True)
class SandboxDirs:
    root: pathlib.Path

    @property
    def bundle(self) -> pathlib.Path:
        return self.root / "bundle"

    @property
    def workspace(self) -> pathlib.Path:
        return self.root / "workspace"

    @property
    def log_file(self) -> pathlib.Path:
        return self.root / "runsc.log"


def sandboxes_dir(state_dir: pathlib.Path) -> pathlib.Path:
    return state_dir / "sandboxes"


_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library this process already has loaded.  Not ``ctypes.util.find_library``:
    that forks ``ldconfig`` (twice) on every call, which was ~11% of the service's own CPU
    under a hello load, two mounts per run."""
    return ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(target: pathlib.Path, size_bytes: int, uid: int, gid: int) -> None:
    options = f"size={size_bytes},mode=0755,uid={uid},gid={gid}".encode()
    if _libc().mount(b"tmpfs", str(target).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount tmpfs on {target}: {os.strerror(error)}")


def _unmount(target: pathlib.Path) -> None:
    if _libc().umount2(str(target).encode(), _MNT_DETACH) != 0:
        error = ctypes.get_errno()
        if error not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise OSError(error, f"unmount {target}: {os.strerror(error)}")


def create_sandbox_dirs(state_dir: pathlib.Path, sandbox_id: str, uid: int, gid: int,
                        size_bytes: int | None = None, *, workspace: bool = True) -> SandboxDirs:
    """The sandbox's directories; with ``size_bytes`` the workspace is a tmpfs of that size.
    ``workspace`` False: none at all (a sealed sandbox has its own inside gVisor)."""
    dirs = SandboxDirs(sandboxes_dir(state_dir) / sandbox_id)
    try:
        sandboxes_dir(state_dir).mkdir(parents=True, exist_ok=True)
        os.chmod(sandboxes_dir(state_dir), 0o711)
        _make_dir(dirs.root, 0o711)
        _make_dir(dirs.bundle, 0o700)
        if not workspace:
            return dirs
        _make_dir(dirs.workspace, 0o755)
        if size_bytes is not None:
            _mount_tmpfs(dirs.workspace, size_bytes, uid, gid)
        os.chown(dirs.workspace, uid, gid)
        os.chmod(dirs.workspace, 0o755)
        _make_dir(dirs.workspace / "artifacts", 0o755)
        os.chown(dirs.workspace / "artifacts", uid, gid)
    except OSError as exc:
        remove_sandbox_dirs(dirs)
        raise HostError(f"create workspace for sandbox {sandbox_id}: {exc}") from exc
    return dirs


def _make_dir(path: pathlib.Path, mode: int) -> None:
    """mkdir, then the exact mode whatever the umask took away."""
    path.mkdir(mode=mode)
    os.chmod(path, mode)


def write_workspace_file(dirs: SandboxDirs, name: str, data: bytes) -> None:
    """Put a file the program reads (its source, its arguments) into the workspace: owned by
    root, 0444 whatever the umask (the sandbox uid reads it as "other")."""
    path = dirs.workspace / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o444)
            handle.write(data)
    except OSError as exc:
        raise HostError(f"write {path}: {exc}") from exc


def remove_sandbox_dirs(dirs: SandboxDirs) -> None:
    try:
        if os.path.ismount(dirs.workspace):
            _unmount(dirs.workspace)
    except OSError as exc:
        raise HostError(f"remove sandbox directory {dirs.root}: {exc}") from exc
    shutil.rmtree(dirs.root, ignore_errors=True)
    if dirs.root.exists():
        raise HostError(f"remove sandbox directory {dirs.root}: still present")


def list_sandbox_dirs(state_dir: pathlib.Path) -> list[str]:
    base = sandboxes_dir(state_dir)
    return sorted(entry.name for entry in base.iterdir()) if base.is_dir() else []
