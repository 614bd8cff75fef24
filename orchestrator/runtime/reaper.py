"""Orphaned runsc helper processes: the service adopts them as their subreaper and reaps them.

Why: an attached ``runsc restore`` exits when the restored process does, without destroying
its container, so the gofer and sandbox processes it started are orphaned.  An orphan goes
to the nearest ancestor that is a child subreaper, else to PID 1.  ``runsc delete`` then
polls (every 100 ms, for up to 5 s) until the gofer is gone, and a zombie still counts as
there.  Under a PID 1 that reaps lazily (this VM's init takes ~1.5 s) every delete of a
restored sandbox took 1.5-1.8 s; with this process as subreaper, reaping at once, ~25 ms.

What is reaped: zombies among this process's direct children whose command name is
``exe``.  runsc's helpers (gofer, sandbox, the sandbox's stub processes) re-execute
``/proc/self/exe``, so that is their name; the processes the service starts itself are named
after their binaries (``runsc``, ``unshare``, ``python``), and asyncio waits for those.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pathlib

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
HELPER_COMM = "exe"


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants; False where the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_CHILD_SUBREAPER): %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def _children(proc: pathlib.Path) -> set[int]:
    pids: set[int] = set()
    try:
        tasks = list((proc / "self" / "task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        try:
            pids.update(int(pid) for pid in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return pids


def _zombie_helper(proc: pathlib.Path, pid: int) -> bool:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    comm = stat[stat.find("(") + 1:stat.rfind(")")]
    state = stat[stat.rfind(")") + 2:stat.rfind(")") + 3]
    return state == "Z" and comm == HELPER_COMM


def reap_orphans(proc: pathlib.Path = pathlib.Path("/proc")) -> int:
    """Reap every zombie runsc helper among our children; return how many were reaped."""
    reaped = 0
    for pid in sorted(_children(proc)):
        if not _zombie_helper(proc, pid):
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
            reaped += 1
        except ChildProcessError:
            continue
    return reaped
