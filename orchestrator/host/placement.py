"""Where sandbox cgroups go.  Reads only: the writes (moving the service, creating the parent)
are ``host.cgroups``'.

    SANDBOX_CGROUP_PARENT set        /<that path> in every hierarchy, as configured
    a systemd unit with Delegate=yes  <unit cgroup>/sandboxes/<id>; the service itself moves to
                                      <unit cgroup>/service (v2 allows no processes in a cgroup
                                      that hands controllers to children)
    otherwise                         /gvisor-sandbox/<id>

Inside the unit's subtree, systemd counts the sandboxes with the unit (``systemctl status``
lists them), the unit's ``MemoryMax=``/``CPUQuota=`` cap them all together, and stopping or
killing the unit reaches them.  Outside it, runsc's own cgroups take the sandboxes out of the
unit: systemd neither limits nor stops them.

Under systemd: ``INVOCATION_ID`` is set (systemd sets it for every process it starts) and this
process's cgroup in systemd's own hierarchy (v2: the unified one; hybrid: the cgroup2 mount at
``unified``; legacy: ``name=systemd``) belongs to a unit (``*.service``/``*.scope``).
Delegated: systemd (since v251) marks the cgroups it delegates with the ``trusted.delegate``
(and ``user.delegate``) extended attribute.  On cgroup v1 the same absolute path is used in
every hierarchy: systemd realises a delegated unit in the controllers it manages (memory, pids,
cpu, devices, ...); in the others (cpuset, freezer, ...) the path is replicated, as systemd's
delegation guide asks.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from orchestrator.host.cgroups import Cgroups

DEFAULT_PARENT = "gvisor-sandbox"
SANDBOXES = "sandboxes"  # our parent inside a delegated unit
SERVICE_LEAF = "service"  # where the service process moves inside a delegated unit
DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")
PROC_SELF_CGROUP = pathlib.Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Placement:
    """Our parent cgroup (relative to each hierarchy's root) and why it is there."""

    parent: str
    reason: str
    unit: str | None = None  # the delegated unit's cgroup: we write nothing above it
    service_leaf: str | None = None  # where this process moves (delegated only)
    own: Mapping[str, str] = field(default_factory=dict)  # this process's cgroups (parse_proc_cgroup)

    @property
    def is_delegated(self) -> bool:
        return self.unit is not None

    def describe(self) -> str:
        return f"sandboxes in /{self.parent} ({self.reason})"


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as {hierarchy: path}: a v1 hierarchy keyed by its controllers as
    listed (``memory``, ``cpu,cpuacct``, ``name=systemd``), the unified (v2) one by ``""``."""
    own = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[parts[1]] = parts[2]
    return own


def systemd_path(own: Mapping[str, str]) -> str | None:
    """This process's cgroup in the hierarchy systemd tracks processes in (unified if mounted)."""
    return own.get("", own.get("name=systemd"))


def find_unit(path: str) -> str | None:
    """The cgroup of the unit owning ``path`` (its deepest ``*.service``/``*.scope`` component),
    without the leading slash; None outside a unit."""
    parts = [part for part in path.split("/") if part]
    for depth in range(len(parts), 0, -1):
        if parts[depth - 1].endswith((".service", ".scope")):
            return "/".join(parts[:depth])
    return None


def is_delegated(root: pathlib.Path, unit: str, *, getxattr: Callable[[str, str], bytes] = os.getxattr) -> bool:
    """Did systemd mark ``unit``'s cgroup as delegated (v2 at the root, hybrid in ``unified``,
    legacy in ``systemd``)?"""
    for base in (root, root / "unified", root / "systemd"):
        for name in DELEGATE_XATTRS:
            try:
                if getxattr(str(base / unit), name).strip() == b"1":
                    return True
            except OSError:
                continue
    return False


def read_own_cgroups(path: pathlib.Path = PROC_SELF_CGROUP) -> dict[str, str]:
    try:
        return parse_proc_cgroup(path.read_text())
    except OSError:
        return {}


def plan_placement(configured: str | None, invocation_id: str | None, own: Mapping[str, str],
                   delegated: Callable[[str], bool]) -> Placement:
    """Decide where sandbox cgroups go.  ``configured`` is SANDBOX_CGROUP_PARENT, ``own`` this
    process's cgroups, ``delegated(unit)`` whether systemd delegated that unit's cgroup."""
    if configured:
        return Placement(parent=configured.strip("/"), reason="SANDBOX_CGROUP_PARENT", own=own)
    path = systemd_path(own)
    unit = find_unit(path) if invocation_id and path else None
    if unit is None:
        return Placement(parent=DEFAULT_PARENT, reason="not a systemd service", own=own)
    name = unit.rsplit("/", 1)[-1]
    if not delegated(unit):
        return Placement(parent=DEFAULT_PARENT, own=own,
                         reason=f"outside systemd unit {name}, which has no Delegate=yes (or systemd is older than "
                                "251): systemd neither limits nor stops the sandboxes with the unit")
    return Placement(parent=f"{unit}/{SANDBOXES}", unit=unit, service_leaf=f"{unit}/{SERVICE_LEAF}", own=own,
                     reason=f"delegated by systemd unit {name}; the service runs in /{unit}/{SERVICE_LEAF}")


def place(configured: str | None, invocation_id: str | None, root: pathlib.Path, *,
          proc_cgroup: pathlib.Path = PROC_SELF_CGROUP) -> Placement:
    """``plan_placement`` for this process."""
    return plan_placement(configured, invocation_id, read_own_cgroups(proc_cgroup),
                          lambda unit: is_delegated(root, unit))


def open_cgroups(placement: Placement, root: pathlib.Path, *, move_pid: int | None = None) -> Cgroups:
    """The cgroup writer for ``placement``; in a delegated unit, ``move_pid`` (the service) is
    first moved into the service leaf, so that the unit's cgroup can hand controllers down."""
    cgroups = Cgroups(root, placement.parent, delegated=placement.unit)
    if move_pid is not None and placement.service_leaf is not None:
        cgroups.enter_leaf(placement.service_leaf, move_pid, dict(placement.own))
    return cgroups
