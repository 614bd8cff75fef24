"""What the benchmark reads from and tidies on the host: the memory of our idle sandboxes,
runsc processes, the host's busy CPU time, containers left under our ``--root``s, and our
cgroup parent."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pathlib
import subprocess
import urllib.parse

import psutil

from orchestrator.bench.floor import RUNSC_TIMEOUT_S
from orchestrator.errors import ServiceError
from orchestrator.host.cgroups import Cgroups
from orchestrator.service import CGROUP_ROOT


def _bundle_of(cmdline: list[str]) -> str | None:
    for index, arg in enumerate(cmdline):
        if arg.startswith(("--bundle=", "-bundle=")):
            return arg.split("=", 1)[1]
        if arg in ("--bundle", "-bundle") and index + 1 < len(cmdline):
            return cmdline[index + 1]
    return None


def _profile_of(state_dir: pathlib.Path, sandbox_id: str) -> str:
    """A sandbox's pool profile (``python``, ``python_preload``), read from its bundle."""
    try:
        spec = json.loads((state_dir / "sandboxes" / sandbox_id / "bundle" / "config.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    language = spec.get("annotations", {}).get("dev.gvisor-sandbox.language", sandbox_id.split("-")[0])
    preload = any(entry.startswith("SANDBOX_PRELOAD=") for entry in spec.get("process", {}).get("env", []))
    return f"{language}_preload" if preload else language


def sandbox_pss_mb(state_dir: pathlib.Path) -> dict[str, list[float]]:
    """Per profile, each live sandbox's host PSS (MiB): its ``runsc run``, gofer and sandbox
    processes (found by our ``--root`` and their bundle) and all their descendants (the
    ptrace stubs)."""
    root_flag = f"--root={state_dir / 'runsc'}"
    groups: dict[str, dict[int, psutil.Process]] = {}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        bundle = _bundle_of(cmdline) if root_flag in cmdline else None
        if bundle is None:
            continue
        group = groups.setdefault(pathlib.Path(bundle).parent.name, {})
        with contextlib.suppress(psutil.Error):
            for member in (process, *process.children(recursive=True)):
                group[member.pid] = member
    per_profile: dict[str, list[float]] = {}
    for sandbox_id, group in sorted(groups.items()):
        pss = 0
        for member in group.values():
            with contextlib.suppress(psutil.Error):
                pss += member.memory_full_info().pss
        per_profile.setdefault(_profile_of(state_dir, sandbox_id), []).append(pss / 2**20)
    return per_profile


def busy_cpu_s(times) -> float:
    """Busy CPU seconds in psutil's ``cpu_times()``: user, nice, system, irq and softirq (not
    idle or iowait; not steal, the hypervisor's; guest time is already inside user)."""
    return sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq"))


def host_busy_cpu_s() -> float:
    """The whole host's busy CPU seconds since boot, summed over its CPUs."""
    return busy_cpu_s(psutil.cpu_times())


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this host (a loopback address or ``localhost``): only then does the
    host's CPU time say anything about what the endpoint spends."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def count_runsc_processes() -> int:
    """runsc processes on the host (``runsc``, ``runsc-gofer``, ``runsc-sandbox``)."""
    return sum(1 for process in psutil.process_iter(["cmdline"])
               if os.path.basename((process.info["cmdline"] or [""])[0]).startswith("runsc"))


def find_leftovers(runsc_binary: pathlib.Path, roots: list[pathlib.Path]) -> list[str]:
    """runsc processes and containers under our ``--root``s."""
    found = []
    flags = {f"--root={root}" for root in roots}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if flags & set(cmdline):
            found.append(f"process {process.pid}: {' '.join(cmdline)[:120]}")
    for root in roots:
        if root.exists():
            listed = subprocess.run([str(runsc_binary), f"--root={root}", "list", "--quiet"], stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=RUNSC_TIMEOUT_S)
            found += [f"runsc container {name} under {root}" for name in listed.stdout.split()]
    return found


def remove_cgroup_parent(parent: str) -> list[str]:
    """Remove our (empty) cgroup parent from every hierarchy; what could not be removed."""
    cgroups = Cgroups(CGROUP_ROOT, parent)
    children = cgroups.list_sandboxes()
    if children:
        return [f"cgroups under /{parent}: {', '.join(children)}"]
    try:
        cgroups.remove_parent()
    except ServiceError as exc:
        return [str(exc)]
    return []

