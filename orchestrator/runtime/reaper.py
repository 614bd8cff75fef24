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

Strays (``find_strays``, ``kill_strays``): after the service itself was killed (``kill -9``),
the runsc processes it started run on, orphaned, under its ``--root``.  The next start kills
them before it deletes their containers.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pathlib
import signal
import time

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
    """Our main thread's children.  Orphans are adopted by the subreaper's first live thread
    (the kernel's ``find_alive_thread`` walks the thread group from its leader), so the main
    thread's list holds every one of them, whichever thread started their parent; scanning
    every task's list (one per asyncio child-watcher thread) cost ~15% of the service's
    CPU under load, called every 10 ms during each delete."""
    try:
        return {int(pid) for pid in (proc / "self" / "task" / str(os.getpid()) / "children").read_text().split()}
    except (OSError, ValueError):
        return set()


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


def find_strays(root_flag: str, proc: pathlib.Path = pathlib.Path("/proc")) -> list[int]:
    """Processes other than this one with ``root_flag`` (``--root=<dir>``) as one of their
    arguments: runsc run/restore, gofers and sandboxes under that root.  Zombies have no
    arguments left and are not listed."""
    wanted = root_flag.encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in arguments:
            found.append(int(entry.name))
    return sorted(found)


def kill_strays(root_flag: str, wait_s: float = 5.0, proc: pathlib.Path = pathlib.Path("/proc")) -> list[int]:
    """SIGKILL every process ``find_strays`` lists and wait, up to ``wait_s``, until they are
    gone (reaped by whoever adopted them: ``runsc delete`` waits on a zombie gofer); the pids
    signalled.  Blocking: for start-up and ``make clean``, in a thread."""
    pids = find_strays(root_flag, proc)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + wait_s
    while any((proc / str(pid)).exists() for pid in pids) and time.monotonic() < deadline:
        reap_orphans(proc)
        time.sleep(0.05)
    return pids
