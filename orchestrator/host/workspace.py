"""Per-sandbox host directories under the service's state dir, and nothing else.

    <state>/sandboxes/<id>/            root-only
        bundle/config.json             the OCI bundle (bundles.writer writes it)
        runsc.log                      runsc's own messages (never mixed into user output)
        workspace/                     bind-mounted read-write at /workspace, owned by the
            artifacts/                 sandbox uid; files the program leaves here are
                                       collected as artifacts

Removing the directory is the whole undo; ``list_sandbox_dirs`` lets start-up reap leftovers.
"""

from __future__ import annotations

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


def create_sandbox_dirs(state_dir: pathlib.Path, sandbox_id: str, uid: int, gid: int) -> SandboxDirs:
    dirs = SandboxDirs(sandboxes_dir(state_dir) / sandbox_id)
    try:
        sandboxes_dir(state_dir).mkdir(mode=0o711, parents=True, exist_ok=True)
        dirs.root.mkdir(mode=0o711)
        dirs.bundle.mkdir(mode=0o700)
        for directory in (dirs.workspace, dirs.workspace / "artifacts"):
            directory.mkdir(mode=0o755)
            os.chown(directory, uid, gid)
    except OSError as exc:
        remove_sandbox_dirs(dirs)
        raise HostError(f"create workspace for sandbox {sandbox_id}: {exc}") from exc
    return dirs


def write_workspace_file(dirs: SandboxDirs, name: str, data: bytes) -> None:
    """Put a file the program reads (its source, its arguments) into the workspace, read-only."""
    path = dirs.workspace / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise HostError(f"write {path}: {exc}") from exc


def remove_sandbox_dirs(dirs: SandboxDirs) -> None:
    shutil.rmtree(dirs.root, ignore_errors=True)
    if dirs.root.exists():
        raise HostError(f"remove sandbox directory {dirs.root}: still present")


def list_sandbox_dirs(state_dir: pathlib.Path) -> list[str]:
    base = sandboxes_dir(state_dir)
    return sorted(entry.name for entry in base.iterdir()) if base.is_dir() else []
