"""``make doctor`` / ``python -m orchestrator doctor``: is this host fit to run sandboxes?

Each check runs one of the steps the service itself takes at start-up (so a host that passes
here does not fail there), plus a smoke run and a port probe, and prints ``ok`` or ``FAIL``
with the fix.  Exit status 1 when anything failed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from orchestrator.errors import ServiceError
from orchestrator.host.cgroups import Cgroups
from orchestrator.host.placement import place
from orchestrator.language import load_languages
from orchestrator.host import resolver
from orchestrator.host.firewall import NFT
from orchestrator.host.netns import resolver_address
from orchestrator.host.sealed import MKFS, find_mkfs
from orchestrator.runtime.argv import needs_netns_workaround, release_date
from orchestrator.runtime.runsc import probe_runsc, run_command
from orchestrator.service import CGROUP_ROOT, SEALED_MIN_RELEASE, resolve_rootfs
from orchestrator.settings import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


async def check_runsc(settings: Settings) -> Check:
    try:
        info = await probe_runsc(settings.runsc.binary)
    except ServiceError as exc:
        return Check("runsc", False, str(exc), "apt-get install runsc (or a gVisor release), or set SANDBOX_RUNSC")
    missing = {"oci-seccomp"} - info.flags if settings.runsc.enable_seccomp else set()
    if missing:
        return Check("runsc", False, f"runsc {info.version} lacks --{', --'.join(sorted(missing))}",
                     "install a newer gVisor release or set SANDBOX_ENABLE_SECCOMP=false")
    checkpoint = "checkpoints without compression" if info.checkpoints_uncompressed else \
        "always compresses checkpoints (no snapshots: 0.0~20240729 or later has them)"
    cgroups = "sandboxes start inside their cgroups (--ignore-cgroups)" if "ignore-cgroups" in info.flags else \
        "runsc joins the sandboxes' cgroups itself (no --ignore-cgroups)"
    return Check("runsc", True, f"{info.binary} version {info.version}, platform {settings.runsc.platform}, "
                                f"{len(info.flags)} flags, {checkpoint}, {cgroups}")


SNAPSHOT_PROBE_TIMEOUT_S = 120.0


async def check_snapshots(settings: Settings) -> Check:
    """Make one real image the way the service does (boot, checkpoint, restore under a new id
    with new stdio, resume) in a throwaway state dir, with the network off and no pools."""
    from orchestrator.service import start_service

    if settings.snapshots == "off":
        return Check("snapshots", True, "off (SANDBOX_SNAPSHOTS=off): every sandbox boots")
    if settings.invocation_id:
        # ExecStartPre of the unit: a probe service would create cgroups in the unit's subtree
        # before systemd places the main process (v2 forbids processes beside them).
        return Check("snapshots", True, "not probed under systemd: the service makes and proves its images at "
                                        "start-up (GET /status; run `make doctor` for the probe)")
    parent = place(settings.cgroup_parent, None, CGROUP_ROOT).parent
    with tempfile.TemporaryDirectory(prefix="gvisor-sandbox-doctor-") as root:
        probe = dataclasses.replace(
            settings, state_dir=pathlib.Path(root) / "state", snapshot_dir=pathlib.Path(root) / "images",
            pool_size=0, pool_sizes={}, cgroup_parent=f"{parent}-doctor",
            runsc=dataclasses.replace(settings.runsc, network="none"))
        try:
            service = await start_service(probe)
        except ServiceError as exc:
            return Check("snapshots", False, f"start a probe service: {exc}", "see the other checks")
        try:
            store = service.executor.snapshots
            profiles = store.status()["profiles"]
            candidates = [key for key, entry in profiles.items() if entry["state"] != "off"]
            if not candidates:
                reasons = sorted({entry["reason"] for entry in profiles.values()})
                return Check("snapshots", True, "off: " + "; ".join(reasons))
            profile = candidates[0]
            try:
                image = await store.wait_ready(profile, timeout=SNAPSHOT_PROBE_TIMEOUT_S)
            except TimeoutError:
                entry = store.status()["profiles"][profile]
                if entry["state"] == "slower":
                    return Check("snapshots", True, f"{profile}: {entry['reason']}")
                return Check("snapshots", False, f"{profile}: {entry['state']}: {entry['reason']}",
                             "sandboxes boot instead (slower under load); see the service log for runsc's error")
            off = [key for key, entry in profiles.items() if entry["state"] == "off"]
            return Check("snapshots", True, f"{profile}: checkpoint and restore under a new id with new stdio work "
                                            f"({image.size_bytes / 1e6:.1f} MB image, boot {image.boot_ms:.0f} ms, "
                                            f"restore {image.restore_ms:.0f} ms)"
                                            + (f"; off for {', '.join(off)}" if off else ""))
        finally:
            await service.close()
            if service.cgroups is not None:
                service.cgroups.remove_parent()


async def check_sealed(settings: Settings, *, mkfs: str | None | bool = False) -> Check:
    """Can sealed sandboxes (host.sealed: no gofer, ~25% less CPU per run) be had here?  Never
    a failure: without them every sandbox runs with a host workspace and a gofer."""
    if settings.sealed == "off":
        return Check("sealed", True, "off (SANDBOX_SEALED=off): every sandbox has a gofer")
    if settings.runsc.network == "egress":
        return Check("sealed", True, "not in egress mode (the resolver's file is a bind mount, which takes the gofer)")
    try:
        info = await probe_runsc(settings.runsc.binary)
    except ServiceError as exc:
        return Check("sealed", True, f"not available: {exc}")
    release = release_date(info.version)
    if release is None or release < SEALED_MIN_RELEASE:
        return Check("sealed", True, f"not available: runsc {info.version} predates {SEALED_MIN_RELEASE}")
    mkfs = find_mkfs() if mkfs is False else mkfs
    if mkfs is None:
        return Check("sealed", True, f"not available: {MKFS} is missing (apt-get install erofs-utils: "
                                     "sealed sandboxes cost ~25% less CPU per run)")
    return Check("sealed", True, f"Python runs sealed ({mkfs}; images in {settings.sealed_path}, built at start-up)")


async def check_capacity(settings: Settings) -> Check:
    values = ", ".join(f"{name} {entry['value']} ({entry['source']})" for name, entry in settings.capacity_status().items())
    return Check("capacity", True, values)


async def check_smoke(settings: Settings) -> Check:
    with tempfile.TemporaryDirectory(prefix="gvisor-sandbox-doctor-") as root:
        argv = [str(settings.runsc.binary), f"--root={root}", f"--platform={settings.runsc.platform}",
                "--network=none", "do", "/bin/true"]
        try:
            code, _, err = await run_command(argv, timeout=60)
        except ServiceError as exc:
            return Check("smoke", False, str(exc), "see `runsc --debug --debug-log=/tmp/runsc/ do /bin/true`")
    if code != 0:
        hint = "the kvm platform hangs in nested VMs: set SANDBOX_RUNSC_PLATFORM=ptrace" \
            if settings.runsc.platform == "kvm" else "run as root; check `dmesg` and runsc's debug log"
        return Check("smoke", False, f"`runsc do /bin/true` exited {code}: {err.strip()[-300:]}", hint)
    return Check("smoke", True, "runsc do /bin/true ran a sandbox")


async def check_cgroups(settings: Settings, root: pathlib.Path = CGROUP_ROOT) -> Check:
    """Where sandboxes go, and whether that works.  Inside a delegated unit (doctor is the
    unit's ExecStartPre) only reads: the service makes its own leaf and parent at start-up."""
    placement = place(settings.cgroup_parent, settings.invocation_id, root)
    try:
        cgroups = Cgroups(root, placement.parent, delegated=placement.unit)
        cgroups.verify() if placement.is_delegated else cgroups.prepare()
    except ServiceError as exc:
        return Check("cgroups", False, f"{exc}; {placement.describe()}",
                     "run as root on a cgroup hierarchy with the memory, pids and cpu controllers "
                     "(kernel cmdline / systemd Delegate=yes)")
    return Check("cgroups", True, f"v{cgroups.version}, {placement.describe()}")


async def check_rootfs(settings: Settings) -> Check:
    try:
        languages = load_languages(settings.languages_dirs)
        rootfs = resolve_rootfs(settings, languages)
    except ServiceError as exc:
        return Check("rootfs", False, str(exc), "make build (or set SANDBOX_BASE_<LANG>_IMAGE)")
    unreadable = unreadable_runners(languages.values())
    if unreadable:
        return Check("rootfs", False, f"the sandbox uid cannot read {', '.join(unreadable)} (a checkout made "
                                      "under a strict umask?)", "chmod -R o+rX " + " ".join(unreadable))
    return Check("rootfs", True, ", ".join(f"{name}: {path}" for name, path in sorted(rootfs.items())))


def unreadable_runners(languages) -> list[str]:
    """Runner directories (mounted read-only into sandboxes) and runners that "other", the
    sandbox uid, cannot read: they come from the checkout, with whatever modes it was made with."""
    found = []
    for language in languages:
        if language.runner is None:
            continue
        for path, bits in ((language.definition_dir, 0o005), (language.definition_dir / language.runner, 0o004)):
            try:
                if path.stat().st_mode & bits != bits:
                    found.append(str(path))
            except OSError:
                found.append(str(path))
    return sorted(set(found))


async def check_netns(settings: Settings) -> Check:
    from pyroute2 import netns

    name = "gvs-doctor-probe"
    try:
        netns.create(name)
        netns.remove(name)
    except Exception as exc:  # noqa: BLE001 - pyroute2 raises many types; this is a probe
        return Check("netns", False, f"create a network namespace: {exc}", "run as root on a kernel with netns")
    return Check("netns", True, "a network namespace can be created and removed")


async def check_network(settings: Settings) -> Check:
    if settings.runsc.network == "none":
        return Check("network", True, "none: runsc gives each sandbox an empty netns (gVisor loopback only)")
    if shutil.which(NFT) is None:
        return Check("network", False, "egress mode needs nftables (`nft` not found)", "apt-get install nftables")
    try:
        info = await probe_runsc(settings.runsc.binary)
    except ServiceError as exc:
        return Check("network", False, str(exc), "install runsc")
    try:
        dnsmasq = await resolver.probe_dnsmasq(settings.egress.dnsmasq)
        upstreams = settings.egress.dns_upstreams or resolver.host_upstreams()
    except ServiceError as exc:
        return Check("network", False, f"egress mode needs dnsmasq for the sandboxes' resolver: {exc}",
                     "apt-get install dnsmasq-base (the binary only; no system service), or set SANDBOX_DNSMASQ")
    guess = needs_netns_workaround(info.version)
    return Check("network", True, f"egress via {settings.egress.subnet}, resolver {dnsmasq} on "
                                  f"{resolver_address(settings.egress.subnet)}:53 forwarding allowed names to "
                                  f"{', '.join(map(str, upstreams))} (TTL {settings.egress.dns_ttl_s} s), allowlist "
                                  f"{', '.join(map(str, settings.egress.allow)) or 'empty'}; runsc {info.version} "
                                  f"{'needs' if guess else 'should not need'} the netns workaround (the service "
                                  "confirms with a probe sandbox at start-up)")


async def check_state_dir(settings: Settings) -> Check:
    try:
        settings.state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=settings.state_dir):
            pass
    except OSError as exc:
        return Check("state dir", False, f"{settings.state_dir}: {exc.strerror}", "set SANDBOX_STATE_DIR to a writable path")
    return Check("state dir", True, str(settings.state_dir))


async def check_port(settings: Settings) -> Check:
    ports = [(settings.port, "SANDBOX_EXECUTOR_MANAGER_PORT")]
    if settings.lb_agent_port is not None:
        ports.append((settings.lb_agent_port, "SANDBOX_LB_AGENT_PORT"))
    for port, variable in ports:
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((settings.host, port))
            except OSError as exc:
                return Check("port", False, f"{settings.host}:{port}: {exc.strerror}",
                             f"stop what listens there (`ss -ltnp`) or set {variable}")
    shown = " and ".join(f"{settings.host}:{port}" for port, _ in ports)
    return Check("port", True, f"{shown} {'is' if len(ports) == 1 else 'are'} free"
                 + (" (HTTP, HAProxy agent)" if len(ports) > 1 else ""))


CHECKS: list[Callable[[Settings], Awaitable[Check]]] = [
    check_runsc, check_smoke, check_cgroups, check_netns, check_network, check_rootfs, check_state_dir, check_port,
    check_snapshots, check_sealed, check_capacity]


async def run_checks(settings: Settings, checks=None) -> list[Check]:
    results = []
    for check in checks or CHECKS:
        results.append(await check(settings))
    return results


def render(results: list[Check]) -> str:
    lines = []
    for result in results:
        lines.append(f"{'ok  ' if result.ok else 'FAIL'}  {result.name:<10} {result.detail}")
        if not result.ok and result.fix:
            lines.append(f"      {'':<10} fix: {result.fix}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed} ok, {failed} failed" if failed else f"all {len(results)} checks ok")
    return "\n".join(lines)


async def run_doctor(settings: Settings) -> int:
    results = await run_checks(settings)
    print(render(results))
    return 0 if all(r.ok for r in results) else 1

