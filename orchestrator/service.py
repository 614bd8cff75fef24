"""Wiring: settings -> runtime, languages, rootfs, cgroups, executor; start-up reaping.

``start_service`` refuses to start (``HostError``/``ConfigError``/``RunscError``) when the host
cannot run sandboxes, instead of failing every request later.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from dataclasses import dataclass

import psutil

from orchestrator.errors import HostError, RunscError
from orchestrator.executor import Executor
from orchestrator.host import workspace
from orchestrator.host.cgroups import CgroupLimits, Cgroups
from orchestrator.language import Language, load_languages
from orchestrator.metrics import Metrics
from orchestrator.runtime.argv import RunscConfig
from orchestrator.runtime.runsc import RunscInfo, RunscRuntime, probe_runsc
from orchestrator.sandbox import SandboxHost
from orchestrator.settings import Settings
from rootfs_builder.errors import RootfsError
from rootfs_builder.store import find_rootfs
from seccomp.profile import load_profile

log = logging.getLogger(__name__)

CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")


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

    async def close(self) -> None:
        await self.executor.close()


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
            resolved[name] = find_rootfs(settings.rootfs_dir, choice).path
        except RootfsError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise HostError("resolve rootfs: " + "; ".join(problems))
    return resolved


async def reap(runtime: RunscRuntime, cgroups: Cgroups | None, state_dir: pathlib.Path) -> list[str]:
    """Remove what an earlier run of the service left: sandboxes, cgroups, sandbox dirs."""
    reaped = []
    for sandbox_id in await runtime.list_ids():
        await runtime.kill(sandbox_id)
        await runtime.delete(sandbox_id)
        reaped.append(f"sandbox {sandbox_id}")
    if cgroups is not None:
        for sandbox_id in cgroups.list_sandboxes():
            await asyncio.to_thread(cgroups.remove, sandbox_id)
            reaped.append(f"cgroup {sandbox_id}")
    for sandbox_id in workspace.list_sandbox_dirs(state_dir):
        workspace.remove_sandbox_dirs(workspace.SandboxDirs(workspace.sandboxes_dir(state_dir) / sandbox_id))
        reaped.append(f"directory {sandbox_id}")
    return reaped


def runsc_config(settings: Settings, known_flags: frozenset[str] | None = None) -> RunscConfig:
    return RunscConfig(
        binary=settings.runsc.binary,
        root=settings.state_dir / "runsc",
        platform=settings.runsc.platform,
        network=settings.runsc.network,
        oci_seccomp=settings.runsc.enable_seccomp,
        debug_log_dir=settings.runsc.debug_log_dir,
        known_flags=known_flags,
    )


async def reap_all(settings: Settings, cgroup_root: pathlib.Path = CGROUP_ROOT) -> list[str]:
    """``make clean``: everything of ours, including the (then empty) parent cgroup."""
    cgroups = Cgroups(cgroup_root, settings.cgroup_parent)
    removed = await reap(RunscRuntime(runsc_config(settings)), cgroups, settings.state_dir)
    cgroups.remove_parent()
    return removed


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
    try:
        settings.state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    except OSError as exc:
        raise HostError(f"create state dir {settings.state_dir}: {exc}") from exc
    cgroups = None
    if cgroup_root is not None:
        cgroups = Cgroups(cgroup_root, settings.cgroup_parent)
        total_memory = settings.total_memory_bytes or int(psutil.virtual_memory().total * 0.8)
        cgroups.prepare(CgroupLimits(memory_bytes=total_memory, cpus=settings.total_cpus))
    if isinstance(runtime, RunscRuntime):
        reaped = await reap(runtime, cgroups, settings.state_dir)
        if reaped:
            log.warning("reaped leftovers of an earlier run: %s", ", ".join(reaped))
    seccomp = load_profile(settings.runsc.seccomp_profile) if settings.runsc.enable_seccomp else None
    host = SandboxHost(runtime=runtime, cgroups=cgroups, state_dir=settings.state_dir,
                       uid=settings.sandbox_uid, gid=settings.sandbox_gid, limits=settings.limits,
                       boot_timeout_s=settings.boot_timeout_s, seccomp=seccomp)
    metrics = Metrics()
    executor = Executor(settings, languages, rootfs, host, metrics=metrics)
    executor.start_pools()
    return Service(settings=settings, runsc=info, runtime=runtime, cgroups=cgroups, languages=languages,
                   rootfs=rootfs, executor=executor, metrics=metrics)
