"""Artifacts: the files a run leaves in ``artifacts/`` (or, allow-listed, in the workspace root).

The workspace is written by untrusted code, so everything here is opened relative to a
directory fd with ``O_NOFOLLOW`` (a symlink is never followed: not the artifacts directory,
not a file), ``O_NONBLOCK`` (a FIFO cannot stall us) and checked to be a regular file with
``fstat`` on the opened descriptor (no check-then-open race).  Synchronous: call it in a
thread.
"""

from __future__ import annotations

import base64
import os
import pathlib
import stat

MIME_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".pdf": "application/pdf",
    ".csv": "text/csv",
    ".json": "application/json",
    ".html": "text/html",
}
MAX_COUNT = 10
MAX_SIZE = 10 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


def is_acceptable_name(name: str) -> bool:
    """A plain, visible file name with an allowed extension."""
    return (
        bool(name)
        and not name.startswith(".")
        and "/" not in name
        and "\\" not in name
        and ".." not in name
        and not any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
        and os.path.splitext(name)[1].lower() in MIME_TYPES
    )


def _read_regular(dir_fd: int, name: str) -> bytes | None:
    """Content of a non-empty regular file of at most MAX_SIZE bytes, else None."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError:  # ELOOP for a symlink, ENOENT, EACCES, ...
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0 or info.st_size > MAX_SIZE:
            return None
        data = b""
        while len(data) <= MAX_SIZE:
            chunk = os.read(fd, min(1 << 20, MAX_SIZE + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        return data if 0 < len(data) <= MAX_SIZE else None
    finally:
        os.close(fd)


def _collect_from(dir_fd: int, skip: set[str], limit: int) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for name in sorted(os.listdir(dir_fd)):
        if len(found) >= limit:
            break
        if name in skip or not is_acceptable_name(name):
            continue
        data = _read_regular(dir_fd, name)
        if data is not None:
            found.append((name, data))
    return found


def has_candidates(workspace: pathlib.Path, *, exclude: frozenset[str] = frozenset()) -> bool:
    """Whether ``collect_artifacts`` could find anything: a cheap listing, no file is opened
    (so the common run without artifacts needs no thread)."""
    try:
        names = os.listdir(workspace / "artifacts") if not os.path.islink(workspace / "artifacts") else []
    except OSError:
        names = []
    try:
        names += [name for name in os.listdir(workspace) if name not in exclude]
    except OSError:
        return False
    return any(is_acceptable_name(name) for name in names)


def runner_rules(*, exclude: tuple[str, ...] = ()) -> dict:
    """The rules above, for a sealed sandbox's runner to pick its artifacts by (it sends them
    over the control channel; ``Sandbox`` checks each one again)."""
    return {"max_count": MAX_COUNT, "max_bytes": MAX_SIZE, "suffixes": sorted(MIME_TYPES), "exclude": list(exclude)}


def as_contract(collected: list[tuple[str, bytes]]) -> list[dict]:
    """(name, content) pairs as the contract's artifact dicts."""
    return [
        {
            "name": name,
            "mime_type": MIME_TYPES[os.path.splitext(name)[1].lower()],
            "size": len(data),
            "content_b64": base64.b64encode(data).decode("ascii"),
        }
        for name, data in collected
    ]


def collect_artifacts(workspace: pathlib.Path, *, exclude: frozenset[str] = frozenset()) -> list[dict]:
    """Artifacts as the contract's dicts: ``artifacts/`` first, then allow-listed root files."""
    collected: list[tuple[str, bytes]] = []
    root_fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            artifacts_fd = os.open("artifacts", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                   dir_fd=root_fd)
        except OSError:
            artifacts_fd = None
        if artifacts_fd is not None:
            try:
                collected += _collect_from(artifacts_fd, set(), MAX_COUNT)
            finally:
                os.close(artifacts_fd)
        taken = {name for name, _ in collected} | set(exclude)
        collected += _collect_from(root_fd, taken, MAX_COUNT - len(collected))
    finally:
        os.close(root_fd)
    return as_contract(collected)
