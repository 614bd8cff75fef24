"""The only writer under the cgroup filesystem: one cgroup per sandbox below a parent of ours.

We create each sandbox's cgroup before runsc starts and pass it as ``linux.cgroupsPath``;
runsc joins it and writes the spec's limits into it.  Because the cgroup is ours, runsc does
not remove it when the sandbox exits, so its counters (peak memory, OOM kills) can still be
read afterwards; we remove it ourselves.  Both hierarchies are supported:

v1 (hybrid hosts)  <root>/<controller>/<parent>/<id> for memory, pids, cpu, cpuacct
v2 (unified)       <root>/<parent>/<id>, with memory, pids, cpu enabled in the parents

The cgroup root is injected, so the logic runs against a temp dir in unit tests.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import time
from dataclasses import dataclass

from orchestrator.errors import HostError

log = logging.getLogger(__name__)

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")


DEFAULT_CPU_WEIGHT = 100  # cgroup v2 units (1..10000); v1 shares are weight * 1024 / 100


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    pids: int
    cpu_weight: int = DEFAULT_CPU_WEIGHT


@dataclass(frozen=True)
class Usage:
    """What a sandbox's cgroup counted; None where the kernel does not say."""

    memory_peak_bytes: int | None
    oom_kills: int | None


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
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
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


class Cgroups:
    def __init__(self, root: pathlib.Path, parent: str):
        self.root = root
        self.parent = parent.strip("/")
        self.version = detect_version(root)

    def cgroups_path(self, sandbox_id: str) -> str:
        """The value for the spec's ``linux.cgroupsPath``."""
        return f"/{self.parent}/{sandbox_id}"

    def _dirs(self, sandbox_id: str) -> list[pathlib.Path]:
        relative = pathlib.PurePosixPath(self.parent) / sandbox_id
        if self.version == 2:
            return [self.root / relative]
        return [self.root / controller / relative for controller in V1_CONTROLLERS]

    def prepare(self) -> None:
        """Create the parent (idempotent); on v2 enable our controllers down to it."""
        try:
            if self.version == 2:
                node = self.root
                for part in pathlib.PurePosixPath(self.parent).parts:
                    self._enable_controllers(node)
                    node = node / part
                    node.mkdir(exist_ok=True)
                self._enable_controllers(node)
            else:
                for controller in V1_CONTROLLERS:
                    (self.root / controller / self.parent).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostError(f"prepare cgroup parent {self.parent}: {exc}") from exc

    def _enable_controllers(self, node: pathlib.Path) -> None:
        available = (node / "cgroup.controllers").read_text().split()
        wanted = [c for c in V2_CONTROLLERS if c in available]
        missing = set(V2_CONTROLLERS) - set(available)
        if missing:
            raise HostError(f"prepare cgroups: controllers {sorted(missing)} are not available in {node}")
        (node / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))

    def create(self, sandbox_id: str, limits: CgroupLimits) -> None:
        """Create the sandbox's cgroup and write its limits (runsc leaves a cgroup it did
        not create untouched, so the limits are ours to set)."""
        try:
            for directory in self._dirs(sandbox_id):
                directory.mkdir(parents=self.version == 1)
            for path, value in self._limit_files(sandbox_id, limits):
                path.write_text(value)
        except OSError as exc:
            self.remove(sandbox_id)
            raise HostError(f"create cgroup for sandbox {sandbox_id}: {exc}") from exc

    def _limit_files(self, sandbox_id: str, limits: CgroupLimits) -> list[tuple[pathlib.Path, str]]:
        relative = pathlib.PurePosixPath(self.parent) / sandbox_id
        if self.version == 2:
            base = self.root / relative
            files = [(base / "memory.max", str(limits.memory_bytes))]
            if (base / "memory.swap.max").exists():
                files.append((base / "memory.swap.max", "0"))
            return files + [(base / "pids.max", str(limits.pids)), (base / "cpu.weight", str(limits.cpu_weight))]
        memory = self.root / "memory" / relative
        files = [(memory / "memory.limit_in_bytes", str(limits.memory_bytes))]
        if (memory / "memory.memsw.limit_in_bytes").exists():
            # memory+swap equal to memory: no swap on top of the limit.
            files.append((memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
        return files + [(self.root / "pids" / relative / "pids.max", str(limits.pids)),
                        (self.root / "cpu" / relative / "cpu.shares", str(_v1_shares(limits.cpu_weight)))]

    def set_cpu_weight(self, sandbox_id: str, weight: int) -> None:
        """Change a live sandbox's CPU weight (booting pool members run low, requests normal)."""
        relative = pathlib.PurePosixPath(self.parent) / sandbox_id
        if self.version == 2:
            path, value = self.root / relative / "cpu.weight", str(weight)
        else:
            path, value = self.root / "cpu" / relative / "cpu.shares", str(_v1_shares(weight))
        try:
            path.write_text(value)
        except OSError as exc:
            raise HostError(f"set cpu weight of sandbox {sandbox_id}: {exc}") from exc

    def usage(self, sandbox_id: str) -> Usage:
        if self.version == 2:
            base = self._dirs(sandbox_id)[0]
            return Usage(_read_int(base / "memory.peak"), _read_key(base / "memory.events", "oom_kill"))
        memory = self.root / "memory" / self.parent / sandbox_id
        return Usage(_read_int(memory / "memory.max_usage_in_bytes"), _read_key(memory / "memory.oom_control", "oom_kill"))

    def remove(self, sandbox_id: str, *, wait_s: float = 2.0) -> None:
        """Remove the sandbox's cgroup(s); waits briefly while the last tasks exit."""
        deadline = time.monotonic() + wait_s
        for directory in self._dirs(sandbox_id):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise HostError(f"remove cgroup {directory}: {exc}") from exc
                    time.sleep(0.02)

    def remove_parent(self) -> None:
        """Remove our (empty) parent cgroup(s): ``make clean`` and tests use it."""
        parents = [self.root / self.parent] if self.version == 2 else [
            self.root / controller / self.parent for controller in V1_CONTROLLERS]
        for directory in parents:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise HostError(f"remove cgroup {directory}: {exc}") from exc

    def list_sandboxes(self) -> list[str]:
        """Ids of the sandbox cgroups present under our parent (for reaping)."""
        bases = [self.root / self.parent] if self.version == 2 else [
            self.root / controller / self.parent for controller in V1_CONTROLLERS]
        return sorted({entry.name for base in bases if base.is_dir() for entry in base.iterdir() if entry.is_dir()})
