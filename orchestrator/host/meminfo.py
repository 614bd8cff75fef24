"""The stand-in for ``/proc/meminfo`` that runsc reads when it does not manage the sandbox's
cgroups (``runtime.argv``, joined cgroups): runsc sizes a sandbox's memory (``MemTotal``
inside it) from its cgroup's limit, and without one from the host's ``/proc/meminfo``.  The
start wrapper bind-mounts this file over ``/proc/meminfo`` in its private mount namespace, so
a sandbox still sees its memory limit, not the host's RAM.

One file per service, ``<state>/meminfo``, written at start-up (atomically: a sandbox
starting meanwhile reads the old one or the new one).
"""

from __future__ import annotations

import os
import pathlib

from orchestrator.errors import HostError

NAME = "meminfo"


def render(memory_bytes: int, host_bytes: int) -> str:
    """``/proc/meminfo`` as runsc parses it (only ``MemTotal``): the smaller of the sandbox's
    limit and the host's RAM, as runsc takes it from a cgroup."""
    if memory_bytes <= 0 or host_bytes <= 0:
        raise ValueError(f"meminfo: memory sizes must be positive, not {memory_bytes} and {host_bytes}")
    return f"MemTotal:       {min(memory_bytes, host_bytes) // 1024} kB\n"


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def write(state_dir: pathlib.Path, memory_bytes: int, host_bytes: int | None = None) -> pathlib.Path:
    """Write ``<state_dir>/meminfo`` for sandboxes limited to ``memory_bytes``; its path."""
    path = state_dir / NAME
    temporary = path.with_name(f".{NAME}.{os.getpid()}")
    try:
        temporary.write_text(render(memory_bytes, host_bytes or host_memory_bytes()))
        temporary.chmod(0o444)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise HostError(f"write {path}: {exc}") from exc
    return path
