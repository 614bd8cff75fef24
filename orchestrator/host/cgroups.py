"""The only writer under the cgroup filesystem (but for the pid that a sandbox's start wrapper
writes into the ``cgroup.procs`` files of ``procs_files``, see ``runtime.argv``): a parent
cgroup of ours holding one child per sandbox.

The parent carries the service's total budget (memory, CPU) for all sandboxes together.  Each
sandbox's child is created before runsc starts and passed as ``linux.cgroupsPath``; runsc
joins it (or, with ``--ignore-cgroups``, the start wrapper puts runsc in it before it runs)
but leaves a cgroup it did not create untouched, so the limits are written here
(memory without swap on top, pids, CPU quota and weight), and the counters (peak memory, OOM
kills, CPU time) can still be read after the sandbox exited; we remove the child ourselves.
Both hierarchies are supported:

v1 (hybrid hosts)  <root>/<controller>/<parent>/<id> for memory, pids, cpu, cpuacct
v2 (unified)       <root>/<parent>/<id>, with memory, pids, cpu enabled in the parents

Inside a unit systemd delegated to us (``host.placement``), ``delegated`` is the unit's cgroup:
nothing above it is written, the service process moves to a leaf of its own first
(``enter_leaf``), and v2 controllers are enabled from the unit down.

The cgroup root is injected, so the logic runs against a temp dir in unit tests.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import signal
import time
from dataclasses import dataclass

from orchestrator.errors import HostError

log = logging.getLogger(__name__)

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
DEFAULT_CPU_WEIGHT = 100  # cgroup v2 units (1..10000); v1 shares are weight * 1024 / 100
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int | None = None
    pids: int | None = None
    cpus: float | None = None  # CPU quota in cores; None = no quota
    cpu_weight: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a sandbox's cgroup counted; None where the kernel does not say."""

    memory_peak_bytes: int | None
    oom_kills: int | None
    cpu_ns: int | None
    pids_limit_hits: int | None = None  # forks refused at pids.max (pids.events "max")


def _v1_shares(weight: int) -> int:
    return max(2, weight * 1024 // DEFAULT_CPU_WEIGHT)


def detect_version(root: pathlib.Path) -> int:
    """2 when ``root`` is a unified (v2) hierarchy, 1 when it holds v1 controller mounts."""
    if (root / "cgroup.controllers").exists():
        return 2
    if (root / "memory").is_dir():
        return 1
    raise HostError(f"detect cgroups: {root} is neither a cgroup v2 mount nor a v1 hierarchy with a memory controller")


def _read_int(path: pathlib.Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_key(path: pathlib.Path, key: str) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _remove_dirs(directories: list[pathlib.Path], wait_s: float, sleep=time.sleep) -> None:
    """rmdir each cgroup directory, retrying while something is still in it (runsc tasks
    still exiting, a child cgroup being removed) up to ``wait_s`` in all; one already gone is
    fine.  Past the wait the error says what is left in it."""
    deadline = time.monotonic() + wait_s
    for directory in directories:
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # The kernel says EBUSY for a cgroup with tasks or children (ENOTEMPTY: a plain
                # directory standing in for one, in tests).
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise HostError(f"remove cgroup {directory}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise HostError(f"remove cgroup {directory}: {exc}; still in it after {wait_s:g} s: "
                                    f"{describe_contents(directory)}") from exc
                sleep(0.02)


def _task_pids(directory: pathlib.Path) -> list[int]:
    try:
        return sorted({int(line) for line in (directory / "cgroup.procs").read_text().split() if line.isdigit()})
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def describe_contents(directory: pathlib.Path, most: int = 8) -> str:
    """What keeps a cgroup directory busy: its child cgroups and its tasks (pid and name)."""
    try:
        children = sorted(entry.name for entry in directory.iterdir() if entry.is_dir())
    except OSError:
        children = []
    tasks = _task_pids(directory)
    parts = []
    if children:
        parts.append(f"child cgroups {', '.join(children[:most])}" + (f" (+{len(children) - most})" if len(children) > most else ""))
    if tasks:
        parts.append("tasks " + ", ".join(f"{pid} ({_comm(pid)})" for pid in tasks[:most])
                     + (f" (+{len(tasks) - most})" if len(tasks) > most else ""))
    return "; ".join(parts) or "no tasks or child cgroups (still exiting?)"


class Cgroups:
    def __init__(self, root: pathlib.Path, parent: str, *, delegated: str | None = None):
        self.root = root
        self.parent = parent.strip("/")
        self.delegated = delegated.strip("/") if delegated is not None else None
        if self.delegated is not None and not self.parent.startswith(self.delegated + "/"):
            raise HostError(f"place cgroups: parent /{self.parent} is not inside the delegated /{self.delegated}")
        self.version = detect_version(root)
        self._totals: CgroupLimits | None = None  # what prepare() wrote, to recreate the parent

    def cgroups_path(self, sandbox_id: str) -> str:
        """The value for the spec's ``linux.cgroupsPath``."""
        return f"/{self.parent}/{sandbox_id}"

    # -- paths ------------------------------------------------------------------------------

    def _node(self, controller: str, sandbox_id: str | None = None) -> pathlib.Path:
        """Directory of our parent (``sandbox_id`` None) or of a sandbox, for ``controller``."""
        relative = pathlib.PurePosixPath(self.parent)
        if sandbox_id is not None:
            relative /= sandbox_id
        return self.root / relative if self.version == 2 else self.root / controller / relative

    def _dirs(self, sandbox_id: str | None) -> list[pathlib.Path]:
        """Our directories: the v1 controllers we set limits in (or the one v2 node)."""
        controllers = ("memory",) if self.version == 2 else V1_CONTROLLERS
        return [self._node(controller, sandbox_id) for controller in controllers]

    def _all_dirs(self, sandbox_id: str | None) -> list[pathlib.Path]:
        """Ours plus those runsc adds on v1 in every other hierarchy (blkio, cpuset, devices,
        freezer, ...): it removes a sandbox's on exit, but not the parent it created there,
        nor anything after a crash."""
        if self.version == 2:
            return self._dirs(sandbox_id)
        extra = sorted(entry.name for entry in self.root.iterdir()
                       if entry.is_dir() and entry.name not in V1_CONTROLLERS and (entry / "cgroup.procs").exists())
        return self._dirs(sandbox_id) + [self._node(name, sandbox_id) for name in extra]

    def _limit_files(self, sandbox_id: str | None, limits: CgroupLimits) -> list[tuple[pathlib.Path, str]]:
        memory, pids, cpu = (self._node(c, sandbox_id) for c in ("memory", "pids", "cpu"))
        files: list[tuple[pathlib.Path, str]] = []
        if self.version == 2:
            if limits.memory_bytes is not None:
                files.append((memory / "memory.max", str(limits.memory_bytes)))
                if (memory / "memory.swap.max").exists():
                    files.append((memory / "memory.swap.max", "0"))
            if limits.pids is not None:
                files.append((pids / "pids.max", str(limits.pids)))
            if limits.cpus is not None:
                files.append((cpu / "cpu.max", f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}"))
            if limits.cpu_weight is not None:
                files.append((cpu / "cpu.weight", str(limits.cpu_weight)))
            return files
        if limits.memory_bytes is not None:
            files.append((memory / "memory.limit_in_bytes", str(limits.memory_bytes)))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                # memory+swap equal to memory: no swap on top of the limit.
                files.append((memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
        if limits.pids is not None:
            files.append((pids / "pids.max", str(limits.pids)))
        if limits.cpus is not None:
            # v1 refuses a quota above an ancestor's (EINVAL; v2 just applies the smaller one):
            # a unit's CPUQuota= or SANDBOX_TOTAL_CPUS below SANDBOX_MAX_CPUS would fail every sandbox.
            cores = min(limits.cpus, self._v1_cpu_ceiling(cpu))
            files += [(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US)),
                      (cpu / "cpu.cfs_quota_us", str(int(cores * CPU_PERIOD_US)))]
        if limits.cpu_weight is not None:
            files.append((cpu / "cpu.shares", str(_v1_shares(limits.cpu_weight))))
        return files

    def _v1_cpu_ceiling(self, node: pathlib.Path) -> float:
        """The smallest CPU quota (in cores) of ``node``'s ancestors in the v1 cpu hierarchy."""
        ceiling = float("inf")
        top = self.root / "cpu"
        ancestor = node.parent
        while ancestor != top and top in ancestor.parents:
            quota, period = _read_int(ancestor / "cpu.cfs_quota_us"), _read_int(ancestor / "cpu.cfs_period_us")
            if quota is not None and quota > 0 and period:
                ceiling = min(ceiling, quota / period)
            ancestor = ancestor.parent
        return ceiling

    # -- parent -----------------------------------------------------------------------------

    def prepare(self, totals: CgroupLimits = CgroupLimits()) -> None:
        """Create the parent (idempotent) with the service's total budget; on v2 enable our
        controllers down to it (from the delegated unit down, when there is one)."""
        self._totals = totals
        try:
            if self.version == 2:
                node = self.root
                below = pathlib.PurePosixPath(self.parent)
                if self.delegated is not None:
                    node = self.root / self.delegated
                    below = below.relative_to(self.delegated)
                for part in below.parts:
                    self._enable_controllers(node)
                    node = node / part
                    node.mkdir(exist_ok=True)
                self._enable_controllers(node)
            else:
                missing = [c for c in V1_CONTROLLERS if not (self.root / c).is_dir()]
                if missing:
                    raise HostError(f"prepare cgroups: v1 controllers {missing} are not mounted under {self.root}")
                for directory in self._dirs(None):
                    directory.mkdir(parents=True, exist_ok=True)
            for path, value in self._limit_files(None, totals):
                path.write_text(value)
        except OSError as exc:
            raise HostError(f"prepare cgroup parent {self.parent}: {exc}") from exc

    def _enable_controllers(self, node: pathlib.Path) -> None:
        self._check_controllers(node)
        (node / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in V2_CONTROLLERS))

    def _check_controllers(self, node: pathlib.Path) -> None:
        available = (node / "cgroup.controllers").read_text().split()
        missing = set(V2_CONTROLLERS) - set(available)
        if missing:
            raise HostError(f"prepare cgroups: v2 controllers {sorted(missing)} are not available in {node}")

    def verify(self) -> None:
        """What ``prepare`` needs, checked without writing anything: ``doctor`` runs inside the
        delegated unit before the service, and a v2 unit that hands controllers to children
        could no longer take the service's main process."""
        try:
            if self.version == 2:
                base = self.root / (self.delegated or "")
                self._check_controllers(base)
                writable = os.access(base, os.W_OK)
            else:
                missing = [c for c in V1_CONTROLLERS if not (self.root / c).is_dir()]
                if missing:
                    raise HostError(f"prepare cgroups: v1 controllers {missing} are not mounted under {self.root}")
                writable = all(os.access(self.root / c, os.W_OK) for c in V1_CONTROLLERS)
        except OSError as exc:
            raise HostError(f"check cgroup parent {self.parent}: {exc}") from exc
        if not writable:
            raise HostError(f"check cgroup parent {self.parent}: not writable (run as root)")

    # -- the service process ----------------------------------------------------------------

    def _hierarchy(self, key: str) -> pathlib.Path:
        """Directory of a hierarchy named as in /proc/<pid>/cgroup (``memory``, ``name=systemd``,
        ``""`` for the unified one: the root on v2, ``unified`` on hybrid hosts)."""
        if key == "":
            return self.root if self.version == 2 else self.root / "unified"
        return self.root / key.removeprefix("name=")

    def enter_leaf(self, leaf: str, pid: int, own: dict[str, str]) -> list[pathlib.Path]:
        """Move process ``pid`` from the delegated unit's cgroup into ``leaf`` below it, in every
        hierarchy where ``own`` (its /proc/<pid>/cgroup) places it in the unit.  Returns the
        leaves it now lives in."""
        if self.delegated is None or not leaf.strip("/").startswith(self.delegated + "/"):
            raise HostError(f"move the service into /{leaf}: not inside a delegated unit")
        moved = []
        for key, path in sorted(own.items()):
            if path.strip("/") != self.delegated:
                continue
            target = self._hierarchy(key) / leaf.strip("/")
            try:
                target.mkdir(exist_ok=True)
                (target / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                raise HostError(f"move the service into {target}: {exc}") from exc
            moved.append(target)
        if not moved:
            raise HostError(f"move the service into /{leaf}: it is in /{self.delegated} in no hierarchy")
        return moved

    def remove_parent(self, *, wait_s: float = 2.0) -> None:
        """Remove our (empty) parent cgroup(s): ``make clean`` and tests use it.  Waits briefly
        while a runsc process that is still exiting keeps one busy; past that, the error names
        what is still in it (child cgroups, tasks)."""
        _remove_dirs(self._all_dirs(None), wait_s)

    # -- sandboxes --------------------------------------------------------------------------

    def create(self, sandbox_id: str, limits: CgroupLimits) -> None:
        """Create the sandbox's cgroup and write its limits.  A parent removed from outside
        (an operator's cleanup, a unit restarted around us) is recreated as ``prepare`` made it."""
        try:
            self._create(sandbox_id, limits)
        except HostError as exc:
            if self._totals is None or all(directory.is_dir() for directory in self._dirs(None)):
                raise
            log.warning("sandbox=%s the parent cgroup /%s was removed from outside; recreating it (%s)",
                        sandbox_id, self.parent, exc)
            self.prepare(self._totals)
            self._create(sandbox_id, limits)

    def _create(self, sandbox_id: str, limits: CgroupLimits) -> None:
        created: list[pathlib.Path] = []
        try:
            for directory in self._dirs(sandbox_id):
                directory.mkdir()
                created.append(directory)
            for path, value in self._limit_files(sandbox_id, limits):
                path.write_text(value)
        except OSError as exc:
            # Undo only what this call made; a failing undo is logged, never hides the error.
            for directory in reversed(created):
                try:
                    os.rmdir(directory)
                except OSError as undo:
                    log.warning("sandbox=%s remove cgroup %s after a failed create: %s", sandbox_id, directory, undo)
            raise HostError(f"create cgroup for sandbox {sandbox_id}: {exc}") from exc

    def procs_files(self, sandbox_id: str) -> tuple[pathlib.Path, ...]:
        """The sandbox's ``cgroup.procs`` files (v1: memory, pids, cpu, cpuacct; v2: its node),
        for the start wrapper that puts runsc there before it runs (``runtime.argv``)."""
        return tuple(directory / "cgroup.procs" for directory in self._dirs(sandbox_id))

    def is_empty(self, sandbox_id: str) -> bool:
        """Whether no process is left in the sandbox's cgroup (or the cgroup is gone)."""
        return not _task_pids(self._node("memory", sandbox_id))

    def kill_tasks(self, sandbox_id: str, rounds: int = 3) -> int:
        """SIGKILL every process in the sandbox's cgroup (runsc's sandbox and gofer processes and
        their stubs, and ``runsc run`` itself where the start wrapper joined the cgroups) and
        return how many were signalled.  For
        a sandbox ``runsc kill`` cannot reach: a stopped (SIGSTOP) sandbox never answers it, and
        without the runsc binary there is no ``runsc kill`` at all.  A few rounds, for tasks
        forked while the first were killed."""
        node = self._node("memory", sandbox_id)
        signalled: set[int] = set()
        for _ in range(rounds):
            pids = [pid for pid in _task_pids(node) if pid not in signalled]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                signalled.add(pid)
        return len(signalled)

    def set_cpu_weight(self, sandbox_id: str, weight: int) -> None:
        """Change a live sandbox's CPU weight (booting pool members run low, requests normal)."""
        try:
            for path, value in self._limit_files(sandbox_id, CgroupLimits(cpu_weight=weight)):
                path.write_text(value)
        except OSError as exc:
            raise HostError(f"set cpu weight of sandbox {sandbox_id}: {exc}") from exc

    def usage(self, sandbox_id: str, *, oom: bool = True) -> Usage:
        """Peak memory, CPU time and (unless ``oom`` is False: the caller knows the program
        ended on its own) the OOM kill count and how often the pids limit refused a fork."""
        pids = _read_key(self._node("pids", sandbox_id) / "pids.events", "max") if oom else None
        if self.version == 2:
            base = self._node("memory", sandbox_id)
            return Usage(_read_int(base / "memory.peak"),
                         _read_key(base / "memory.events", "oom_kill") if oom else None, self.cpu_ns(sandbox_id), pids)
        memory = self._node("memory", sandbox_id)
        return Usage(_read_int(memory / "memory.max_usage_in_bytes"),
                     _read_key(memory / "memory.oom_control", "oom_kill") if oom else None, self.cpu_ns(sandbox_id),
                     pids)

    def cpu_ns(self, sandbox_id: str) -> int | None:
        """CPU time the sandbox's tasks used so far, in nanoseconds."""
        if self.version == 2:
            usec = _read_key(self._node("cpu", sandbox_id) / "cpu.stat", "usage_usec")
            return None if usec is None else usec * 1000
        return _read_int(self._node("cpuacct", sandbox_id) / "cpuacct.usage")

    def remove(self, sandbox_id: str, *, wait_s: float = 2.0) -> None:
        """Remove the sandbox's cgroup(s) in every hierarchy; waits briefly while the last
        tasks exit."""
        _remove_dirs(self._all_dirs(sandbox_id), wait_s)

    def list_sandboxes(self) -> list[str]:
        """Ids of the sandbox cgroups present under our parent (for reaping)."""
        return sorted({entry.name for base in self._all_dirs(None) if base.is_dir()
                       for entry in base.iterdir() if entry.is_dir()})
