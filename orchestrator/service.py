"""Wiring: settings -> runtime, languages, rootfs, cgroups, network, executor; start-up reaping.

``start_service`` refuses to start (``HostError``/``ConfigError``/``RunscError``) when the host
cannot run sandboxes, instead of failing every request later.

Network (``Service.network`` records what applies, for logs and ``doctor``): in ``none`` mode
runsc gives each sandbox an empty netns of its own and nothing is set up here.  In ``egress``
mode start-up puts the resolver's address on a link of its own, loads the firewall table (host
addresses read now, this service's port), turns IPv4 forwarding on (the old value is
recorded, never restored), starts the resolver (``host.resolver``: dnsmasq) and boots one
throwaway sandbox to learn whether this runsc needs the netns workaround (``runtime.argv``);
``close`` stops the resolver and removes the link and the table.  Leftover namespaces, veths,
the link, the table and a dnsmasq of an earlier run are reaped in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import pathlib
import shutil
from dataclasses import dataclass

import psutil

from bundles.spec import NETNS_DIR, OOM_SCORE_ADJ
from orchestrator.errors import HostError, RunscError, SandboxError
from orchestrator.executor import Executor
from orchestrator.host import firewall, meminfo, netns, resolver, workspace
from orchestrator.host.cgroups import CgroupLimits, Cgroups
from orchestrator.host.placement import Placement, open_cgroups, place
from orchestrator.host.sealed import SealedImages, find_mkfs
from orchestrator.language import Language, load_languages
from orchestrator.metrics import Metrics
from orchestrator.runtime.argv import RunscConfig, global_flags, needs_netns_workaround, release_date
from orchestrator.runtime.reaper import become_subreaper
from orchestrator.runtime.runsc import RunscInfo, RunscRuntime, probe_runsc
from orchestrator.sandbox import Sandbox, SandboxHost, preload_env, sandbox_spec
from orchestrator.settings import Settings
from orchestrator.snapshot import KeyInputs, ProfileSpec, SnapshotStore, digest_file, file_identity
from rootfs_builder.errors import RootfsError
from rootfs_builder.store import CURRENT, TREE, find_rootfs
from seccomp.profile import load_profile

log = logging.getLogger(__name__)

CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
RUNSC_NETWORK = {"none": "none", "egress": "sandbox"}  # SANDBOX_CONTAINER_NETWORK -> runsc --network
ROOT_NETNS_REFUSAL = "cannot run with network enabled in root network namespace"
REAP_DELETE_TIMEOUT_S = 5.0  # a delete of a container whose processes are dead takes ~20 ms


@dataclass(frozen=True)
class NetworkInfo:
    """How sandboxes get their network (for logs and ``doctor``)."""

    mode: str                             # SANDBOX_CONTAINER_NETWORK
    runsc_network: str                    # runsc --network
    netns_workaround: bool = False        # `runsc run` wrapped (runtime.argv, the netns workaround)
    probe: str = ""                       # how that was decided
    table: str | None = None              # our nftables table (inet)
    name_prefix: str | None = None        # of our netns and veths
    forwarding_before: str | None = None  # net.ipv4.ip_forward before start-up set it to 1
    resolver: str | None = None           # "<address>:53 -> <upstreams>" (egress)


@dataclass
class Service:
    settings: Settings
    runsc: RunscInfo | None
    runtime: object
    cgroups: Cgroups | None
    languages: dict[str, Language]
    rootfs: dict[str, pathlib.Path]
    executor: Executor
    metrics: Metrics
    network: NetworkInfo | None = None
    placement: Placement | None = None
    resolver: resolver.Resolver | None = None

    async def close(self) -> None:
        await self.executor.close()
        if self.executor.host.sealed is not None:
            self.executor.host.sealed.close()
        if self.resolver is not None:
            await self.resolver.stop()
        if self.placement is not None and self.placement.is_delegated and self.cgroups is not None:
            # systemd trims the unit's cgroups it manages; this also covers the v1 hierarchies it does not.
            try:
                await asyncio.to_thread(self.cgroups.remove_parent)
            except HostError as exc:
                log.warning("close: %s", exc)
        networks = self.executor.host.network
        if networks is not None:  # egress: nothing is live any more; drop what is left, then the table
            leftovers = await asyncio.to_thread(networks.reap)
            if leftovers:
                log.warning("removed at close: %s", ", ".join(leftovers))
            await asyncio.to_thread(networks.remove_resolver_link)
        if self.network is not None and self.network.mode == "egress" and self.network.table:
            await firewall.delete_table(self.network.table)


def resolve_rootfs(settings: Settings, languages: dict[str, Language]) -> dict[str, pathlib.Path]:
    """Each language's rootfs directory: ``SANDBOX_BASE_<LANG>_IMAGE`` (a path or a name) or the store."""
    resolved = {}
    problems = []
    for name, language in languages.items():
        choice = settings.base_images.get(name, language.rootfs)
        if choice.startswith("/"):
            path = pathlib.Path(choice)
            if not path.is_dir():
                problems.append(f"{name}: rootfs {path} is not a directory")
                continue
            resolved[name] = path.resolve()
            continue
        try:
            # Checked now, but sandboxes get the store's `current` link: after a rebuild every new
            # sandbox boots on the new tree without a restart (the builder keeps the previous one).
            find_rootfs(settings.rootfs_dir, choice)
            resolved[name] = settings.rootfs_dir / choice / CURRENT / TREE
        except RootfsError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise HostError("resolve rootfs: " + "; ".join(problems))
    return resolved


def snapshot_off_reasons(settings: Settings, info: RunscInfo | None, languages: dict[str, Language],
                         profiles: list[ProfileSpec]) -> dict[str, str]:
    """Why a profile does not use snapshots (no entry: it does, once its image is made)."""
    reason = None
    if settings.snapshots == "off":
        reason = "SANDBOX_SNAPSHOTS=off"
    elif info is None:
        reason = "no real runsc (an injected runtime)"
    elif not info.checkpoints_uncompressed:
        reason = (f"runsc {info.version} cannot checkpoint without compression (a restore would cost ~0.9 s, "
                  "more than a boot): install runsc 20240729 or later for snapshots")
    off = {}
    for profile in profiles:
        language = languages[profile.language]
        if reason is not None:
            off[profile.key] = reason
        elif not language.snapshot:
            off[profile.key] = f"language {language.name}: {language.snapshot_note or 'snapshot = false'}"
    return off


def make_snapshot_store(settings: Settings, info: RunscInfo | None, runtime, executor: Executor) -> SnapshotStore:
    """The store of per-profile images under ``<state>/snapshots``, keyed as its docstring says."""
    profiles = executor.profiles()
    languages = executor.languages
    off = snapshot_off_reasons(settings, info, languages, profiles)

    def rootfs_tree(profile: ProfileSpec) -> pathlib.Path:
        return pathlib.Path(os.path.realpath(executor.rootfs[profile.language]))

    language_digests = {}
    for name, language in languages.items():
        files = [language.definition_dir / "language.toml"]
        if language.runner:
            files.append(language.definition_dir / language.runner)
        language_digests[name] = [digest_file(path) for path in files if path.is_file()]

    known: dict[str, tuple[tuple, dict]] = {}  # profile -> (tree identity, parts): specs are built on a change only

    def profile_parts(profile: ProfileSpec) -> dict:
        language = languages[profile.language]
        tree = rootfs_tree(profile)
        identity = file_identity(tree)
        if profile.key in known and known[profile.key][0] == identity:
            return known[profile.key][1]
        host = executor.host
        spec = sandbox_spec(language, host, tree, preload_env(language, profile.preload),
                            workspace="/placeholder/workspace",
                            cgroups_path="/placeholder/cgroup",
                            netns_path=f"{NETNS_DIR}/placeholder" if host.network is not None else None,
                            sandbox_id="placeholder")
        parts = {"language": language_digests[profile.language], "rootfs": list(identity), "spec": spec}
        known[profile.key] = (identity, parts)
        return parts

    inputs = None
    if info is not None and isinstance(runtime, RunscRuntime):
        flags = [flag for flag in global_flags(runtime.config) if not flag.startswith(("--root=", "--debug"))]
        flags.append(f"netns-workaround={runtime.config.netns_workaround}")
        inputs = KeyInputs(info.binary, info.version, flags, profile_parts)
    return SnapshotStore(settings.snapshots_path, profiles, inputs, executor.snapshot_sandbox, rootfs_tree, off=off)


def runsc_status(info: RunscInfo | None, settings: Settings, store: SnapshotStore | None,
                 config: RunscConfig | None = None) -> dict:
    """What the installed runsc is and can do (``/status``, ``doctor``); ``cgroups_joined_by``:
    who puts a sandbox in its cgroups, the start wrapper (runsc runs with --ignore-cgroups,
    see runtime.argv) or runsc itself."""
    if info is None:
        return {"binary": None, "version": None}
    return {"binary": str(info.binary), "version": info.version, "platform": settings.runsc.platform,
            "checkpoint_uncompressed": info.checkpoints_uncompressed,
            "restore_new_id_new_stdio": store.restore_proven if store is not None else None,
            "cgroups_joined_by": None if config is None else "wrapper" if config.join_cgroups else "runsc"}


# The oldest runsc whose gofer-less EROFS root (host.sealed) is verified here (0.0~20240729).
SEALED_MIN_RELEASE = 20240729


def sealed_off_reason(settings: Settings, info: RunscInfo | None, host: SandboxHost) -> str | None:
    """Why no language may run sealed here, or None."""
    if settings.sealed == "off":
        return "SANDBOX_SEALED=off"
    if info is None:
        return "no runsc was probed (an injected runtime)"
    release = release_date(info.version)
    if release is None or release < SEALED_MIN_RELEASE:
        return f"runsc {info.version} predates {SEALED_MIN_RELEASE}: no root from an EROFS image without a gofer"
    if host.network is not None:
        return "egress mode: the resolver's file is bound into the sandbox, which takes runsc's gofer"
    return None


async def prepare_sealed(settings: Settings, info: RunscInfo | None, host: SandboxHost,
                         languages: dict[str, Language], rootfs: dict[str, pathlib.Path]) -> SealedImages:
    """The sealed images of every language that allows one (built now when missing; a
    language whose image cannot be had runs unsealed, and ``/status`` says why)."""
    # The empty root lives with the images, not in the state dir: it is in every sealed spec,
    # and so in the snapshot keys, which must not change with the state dir.
    images = SealedImages(settings.sealed_path, settings.sealed_path / "empty-root", mkfs=find_mkfs())
    reason = sealed_off_reason(settings, info, host)
    for name, language in sorted(languages.items()):
        if not language.sealed:
            continue
        if reason is not None:
            images.reasons[name] = reason
            continue
        await asyncio.to_thread(images.prepare, name, rootfs[name], language.definition_dir)  # it resolves the link
    if reason is None:
        removed = await asyncio.to_thread(images.prune)
        if removed:
            log.info("sealed: removed images no service uses: %s", ", ".join(removed))
    return images


def sandbox_networks(settings: Settings) -> netns.SandboxNetworks:
    return netns.SandboxNetworks(netns.instance_prefix(settings.state_dir), settings.egress.subnet)


def firewall_table(settings: Settings) -> str:
    return firewall.table_name(netns.instance_prefix(settings.state_dir))


def resolver_dir(settings: Settings) -> pathlib.Path:
    return settings.state_dir / "resolver"


async def reap(runtime: RunscRuntime, cgroups: Cgroups | None, state_dir: pathlib.Path,
               networks: netns.SandboxNetworks | None = None, table: str | None = None) -> list[str]:
    """Remove what an earlier run of the service left: sandboxes, cgroups, sandbox dirs,
    network namespaces, veths and the firewall table."""
    reaped = []
    # After a kill -9 the old service's runsc processes run on, orphaned: kill them first (by
    # their --root, and whatever else is in a sandbox's cgroup), or a delete can wait on a gofer
    # that is still busy and a `runsc run` still creating its container add one after the list.
    killed = len(await asyncio.to_thread(runtime.kill_strays))
    if cgroups is not None:
        killed += sum(cgroups.kill_tasks(sandbox_id) for sandbox_id in cgroups.list_sandboxes())
    if killed:
        reaped.append(f"{killed} runsc processes")

    async def delete(sandbox_id: str) -> str:
        try:
            await runtime.delete(sandbox_id, timeout=REAP_DELETE_TIMEOUT_S)
        except RunscError as exc:  # its processes are gone; what is left is files
            log.warning("reap: %s; removing its runsc files", exc)
        runtime.forget(sandbox_id)
        return f"sandbox {sandbox_id}"

    reaped += await asyncio.gather(*(delete(sandbox_id) for sandbox_id in await runtime.list_ids()))
    if cgroups is not None:
        for sandbox_id in cgroups.list_sandboxes():
            await asyncio.to_thread(cgroups.remove, sandbox_id)
            reaped.append(f"cgroup {sandbox_id}")
    for sandbox_id in workspace.list_sandbox_dirs(state_dir):
        workspace.remove_sandbox_dirs(workspace.SandboxDirs(workspace.sandboxes_dir(state_dir) / sandbox_id))
        reaped.append(f"directory {sandbox_id}")
    killed = await asyncio.to_thread(resolver.kill_processes, state_dir / "resolver" / resolver.CONF_NAME)
    reaped += [f"dnsmasq {pid}" for pid in killed]
    if networks is not None:
        reaped += await asyncio.to_thread(networks.reap)
        if await asyncio.to_thread(networks.remove_resolver_link):
            reaped.append(f"link {networks.resolver_link}")
    if table is not None and shutil.which(firewall.NFT) and await firewall.delete_table(table):
        reaped.append(f"nftables table inet {table}")
    return reaped


def runsc_config(settings: Settings, known_flags: frozenset[str] | None = None) -> RunscConfig:
    return RunscConfig(
        binary=settings.runsc.binary,
        root=settings.state_dir / "runsc",
        platform=settings.runsc.platform,
        network=RUNSC_NETWORK[settings.runsc.network],
        oci_seccomp=settings.runsc.enable_seccomp,
        debug_log_dir=settings.runsc.debug_log_dir,
        known_flags=known_flags,
        oom_score_adj=OOM_SCORE_ADJ,
        # Sandboxes start inside their cgroups, one burst of writes, where runsc can be told to
        # leave them alone (runtime.argv); start_service turns it off without cgroups of ours.
        join_cgroups=known_flags is not None and "ignore-cgroups" in known_flags,
    )


async def reap_all(settings: Settings, cgroup_root: pathlib.Path = CGROUP_ROOT) -> list[str]:
    """``make clean``: everything of ours, including the (then empty) parent cgroup."""
    cgroups = open_cgroups(place(settings.cgroup_parent, settings.invocation_id, cgroup_root), cgroup_root)
    removed = await reap(RunscRuntime(runsc_config(settings)), cgroups, settings.state_dir,
                         sandbox_networks(settings), firewall_table(settings))
    cgroups.remove_parent()
    return removed


async def prepare_egress(settings: Settings, networks: netns.SandboxNetworks, stack: contextlib.AsyncExitStack
                         ) -> tuple[NetworkInfo, resolver.Resolver]:
    """The host side of egress mode: a subnet nothing else routes, the resolver's address, the
    table, forwarding, the resolver.  Each undo goes on ``stack``."""
    table = firewall_table(settings)
    egress = settings.egress
    overlaps = await asyncio.to_thread(netns.overlapping_routes, egress.subnet, networks.veth_prefix)
    if overlaps:
        raise HostError(f"check SANDBOX_EGRESS_SUBNET {egress.subnet}: overlaps routes of this host: "
                        f"{', '.join(overlaps)} (choose another range)")
    upstreams = egress.dns_upstreams or await asyncio.to_thread(resolver.host_upstreams)
    address = await asyncio.to_thread(networks.create_resolver_link)
    stack.push_async_callback(asyncio.to_thread, networks.remove_resolver_link)
    config = firewall.FirewallConfig(
        table=table, veth_prefix=networks.veth_prefix, subnet=egress.subnet,
        allow=egress.allow, allow_private=egress.allow_private,
        host_addresses=await asyncio.to_thread(netns.host_addresses), service_port=settings.port,
        resolver=address, dns_ttl_s=egress.dns_ttl_s)
    await firewall.apply_ruleset(firewall.render_ruleset(config), settings.state_dir / "nftables.nft")
    stack.push_async_callback(firewall.delete_table, table)
    before = firewall.enable_forwarding()
    directory = resolver_dir(settings)
    try:
        directory.mkdir(mode=0o711, exist_ok=True)
    except OSError as exc:
        raise HostError(f"create resolver dir {directory}: {exc}") from exc
    dns = resolver.Resolver(
        resolver.ResolverConfig(table=table, address=address, upstreams=upstreams, names=config.name_rules,
                                ttl_s=egress.dns_ttl_s, pid_file=directory / resolver.PID_NAME),
        directory, binary=egress.dnsmasq,
        deny_reason=functools.partial(firewall.deny_reason, subnet=egress.subnet, allow_private=egress.allow_private,
                                      host_addresses=config.host_addresses, resolver=address))
    await dns.start()
    stack.push_async_callback(dns.stop)
    if before != "1":
        log.warning("egress: turned IPv4 forwarding on (net.ipv4.ip_forward was %s; it stays on)", before)
    log.info("egress: table inet %s, subnet %s, allowlist %s", table, settings.egress.subnet,
             ", ".join(map(str, config.allow)) or "empty (no destination is reachable)")
    if config.allow_private:
        log.warning("egress: SANDBOX_EGRESS_ALLOW_PRIVATE (test-only) opens %s to sandboxes",
                    ", ".join(map(str, config.allow_private)))
    return NetworkInfo(mode="egress", runsc_network=RUNSC_NETWORK["egress"], table=table,
                       name_prefix=networks.prefix, forwarding_before=before,
                       resolver=f"{address}:53 -> {', '.join(map(str, upstreams))}"), dns


async def probe_netns_workaround(host: SandboxHost, config: RunscConfig, info: RunscInfo,
                                 languages: dict[str, Language], rootfs: dict[str, pathlib.Path], *,
                                 make_runtime=RunscRuntime) -> tuple[bool, str]:
    """Does ``runsc run`` need the netns workaround here?  Boot one throwaway egress sandbox as
    is; if runsc refuses our netns as the root one, boot another wrapped.  Without a language
    that boots ahead, decide by the runsc version instead.  Returns (needed, how we know)."""
    language = next((languages[name] for name in sorted(languages) if languages[name].can_boot_ahead), None)
    if language is None:
        needed = needs_netns_workaround(info.version)
        return needed, f"by version {info.version} (no language boots ahead to probe with)"
    failure: SandboxError | None = None
    for workaround in (False, True):
        runtime = make_runtime(dataclasses.replace(config, netns_workaround=workaround))
        sandbox = Sandbox(language, rootfs[language.name], dataclasses.replace(host, runtime=runtime))
        try:
            await sandbox.boot()
        except SandboxError as exc:
            failure = exc
            if ROOT_NETNS_REFUSAL not in str(exc):
                break
            continue
        finally:
            await sandbox.destroy()
        if workaround:
            return True, f"probe: runsc {info.version} refused the netns as the root one; the workaround works"
        return False, f"probe: runsc {info.version} accepted the netns as is"
    raise HostError(f"probe egress sandbox: {failure}")


async def start_service(settings: Settings, *, runtime=None, cgroup_root: pathlib.Path | None = CGROUP_ROOT) -> Service:
    """Check the host, reap leftovers and build the executor.  ``runtime`` may be injected (tests)."""
    languages = load_languages(settings.languages_dirs)
    rootfs = resolve_rootfs(settings, languages)
    info = None
    if runtime is None:
        info = await probe_runsc(settings.runsc.binary)
        config = runsc_config(settings, info.flags)
        if settings.runsc.enable_seccomp and not config.knows("oci-seccomp"):
            raise RunscError(f"SANDBOX_ENABLE_SECCOMP: runsc {info.version} has no --oci-seccomp flag")
        runtime = RunscRuntime(config)
        log.info("runsc %s at %s, platform %s", info.version, info.binary, settings.runsc.platform)
        # `runsc restore` orphans its helpers when it exits; adopt and reap them (runtime.reaper).
        become_subreaper()
    try:
        settings.state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    except OSError as exc:
        raise HostError(f"create state dir {settings.state_dir}: {exc}") from exc
    cgroups = placement = None
    if cgroup_root is not None:
        placement = place(settings.cgroup_parent, settings.invocation_id, cgroup_root)
        cgroups = open_cgroups(placement, cgroup_root, move_pid=os.getpid())
        log.info("cgroups v%d: %s", cgroups.version, placement.describe())
        total_memory = settings.total_memory_bytes or int(psutil.virtual_memory().total * 0.8)
        cgroups.prepare(CgroupLimits(memory_bytes=total_memory, cpus=settings.total_cpus))
    networks = sandbox_networks(settings)
    if isinstance(runtime, RunscRuntime):
        reaped = await reap(runtime, cgroups, settings.state_dir, networks, firewall_table(settings))
        if reaped:
            log.warning("reaped leftovers of an earlier run: %s", ", ".join(reaped))
    seccomp = load_profile(settings.runsc.seccomp_profile) if settings.runsc.enable_seccomp else None
    meminfo_file = None
    if isinstance(runtime, RunscRuntime) and runtime.config.join_cgroups:
        if cgroups is None:  # nothing of ours to join: runsc keeps its own handling
            runtime = RunscRuntime(dataclasses.replace(runtime.config, join_cgroups=False))
        else:
            meminfo_file = await asyncio.to_thread(meminfo.write, settings.state_dir, settings.limits.memory_bytes)
    host = SandboxHost(runtime=runtime, cgroups=cgroups, state_dir=settings.state_dir,
                       uid=settings.sandbox_uid, gid=settings.sandbox_gid, limits=settings.limits,
                       boot_timeout_s=settings.boot_timeout_s, seccomp=seccomp, meminfo=meminfo_file)
    network = NetworkInfo(mode="none", runsc_network=RUNSC_NETWORK["none"],
                          probe="runsc gives each sandbox an empty netns of its own")
    dns = None
    undo = contextlib.AsyncExitStack()
    try:
        if settings.runsc.network == "egress":
            network, dns = await prepare_egress(settings, networks, undo)
            host = dataclasses.replace(host, network=networks, resolv_conf=str(dns.resolv_conf_path))
            if isinstance(runtime, RunscRuntime) and info is not None:
                workaround, how = await probe_netns_workaround(host, runtime.config, info, languages, rootfs)
                runtime = RunscRuntime(dataclasses.replace(runtime.config, netns_workaround=workaround))
                host = dataclasses.replace(host, runtime=runtime)
                network = dataclasses.replace(network, netns_workaround=workaround, probe=how)
            log.info("egress: runsc --network=sandbox, netns workaround %s (%s)",
                     "on" if network.netns_workaround else "off", network.probe)
        sealed = await prepare_sealed(settings, info, host, languages, rootfs)
        undo.callback(sealed.close)
        host = dataclasses.replace(host, sealed=sealed)
        metrics = Metrics()
        executor = Executor(settings, languages, rootfs, host, metrics=metrics)
        store = make_snapshot_store(settings, info, runtime, executor)
    except BaseException:
        await undo.aclose()  # egress: the resolver, the table and the link go with the failed start
        raise
    executor.snapshots = store
    executor.runsc_status = lambda: runsc_status(info, settings, store, getattr(runtime, "config", None))
    executor.network_status = lambda: {"mode": network.mode,
                                       "resolver": dns.status() if dns is not None else None}
    store.start()
    executor.start_pools()
    log.info("capacity: %s", ", ".join(f"{name} {entry['value']} ({entry['source']})"
                                       for name, entry in settings.capacity_status().items()))
    return Service(settings=settings, runsc=info, runtime=runtime, cgroups=cgroups, languages=languages,
                   rootfs=rootfs, executor=executor, metrics=metrics, network=network, placement=placement,
                   resolver=dns)
