"""Request -> result: static check, a concurrency slot, a fresh sandbox, classification.

Knows nothing about HTTP.  Each request gets a sandbox nobody has used: a warm one from the
pool its code routes to (a language's ``plain`` pool, or its ``preload`` pool when the code
imports one of the preloaded modules), or, when that pool is empty, one started on the spot:
restored from the profile's snapshot image when there is one (``orchestrator.snapshot``),
else booted (without the preload).  Every start, on demand or for a pool, passes the start
gate (``orchestrator.admission``), requests first.  The sandbox is torn down in the
background after the answer is ready; its slot is held until then, so teardown counts
against the concurrency cap and cannot pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import pathlib
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from orchestrator import outcome
from orchestrator.admission import REQUEST, StartGate
from orchestrator.artifacts import as_contract, collect_artifacts, has_candidates
from orchestrator.balancer import Load
from orchestrator.errors import CapacityError
from orchestrator.language import Language
from orchestrator.metrics import Metrics
from orchestrator.pool import Profile, SandboxPool
from orchestrator.sandbox import Job, Sandbox, SandboxHost
from orchestrator.settings import Settings
from orchestrator.snapshot import ProfileSpec, SnapshotStore
from orchestrator.start import Restore
from orchestrator.static_check import IMPORT_SCANNERS, analyze

log = logging.getLogger(__name__)

INLINE_ANALYSIS_BYTES = 8 * 1024  # larger sources are parsed in a worker process (~1 ms per KB)


@dataclass(frozen=True)
class RunRequest:
    language: str
    source: str
    arguments: dict
    request_id: str = "-"


@dataclass(frozen=True)
class Execution:
    """A request's result body plus facts about how it ran (for headers, logs, benchmarks)."""

    result: dict
    sandbox_id: str | None = None
    warm: bool = False
    start: str | None = None  # warm (from a pool), restored or booted (on demand)
    sandbox_ms: float | None = None  # the runner's own account of the user's code
    cpu_ms: float | None = None  # CPU time of the run, from the sandbox's cgroup


def profile_key(language: str, preload: bool) -> str:
    return f"{language}_preload" if preload else language


class Executor:
    def __init__(self, settings: Settings, languages: dict[str, Language], rootfs: dict[str, pathlib.Path],
                 host: SandboxHost, metrics: Metrics | None = None):
        self.settings = settings
        self.languages = languages
        self.rootfs = rootfs
        self.host = host
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._boot_slots = asyncio.Semaphore(settings.pool_boot_parallelism)
        self.start_gate = StartGate(settings.start_parallelism)
        self.snapshots: SnapshotStore | None = None  # set by the service
        self.runsc_status: Callable[[], dict] = dict  # what the installed runsc is and can do (the service)
        self.network_status: Callable[[], dict | None] = lambda: None  # the network mode, its resolver (the service)
        self._teardowns: set[asyncio.Task] = set()
        self.pools: dict[str, SandboxPool] = {}
        self._analysis_pool: ProcessPoolExecutor | None = None
        self.metrics = metrics
        self._active: set[Sandbox] = set()
        self.running = 0
        self.held_slots = 0  # concurrency slots held: running requests and teardowns not yet done
        self.cold_starts = 0
        self.warm_starts = 0
        self.restored_starts = 0

    # -- pools ----------------------------------------------------------------------------

    def profiles(self) -> list[ProfileSpec]:
        """Every pool profile: each language that boots ahead, plain and with its preload."""
        return [ProfileSpec(profile_key(language.name, preload), language.name, preload)
                for language in self.languages.values() if language.can_boot_ahead
                for preload in ((False, True) if language.preload else (False,))]

    def start_pools(self) -> None:
        """Create and start a pool per profile whose size is above zero."""
        for profile in self.profiles():
            size = self.settings.pool_size_for(profile.key)
            if size <= 0:
                continue
            on_boot = None
            if self.metrics is not None:
                on_boot = functools.partial(self.metrics.observe_boot, profile.key, "warm")
            pool = SandboxPool(Profile(profile.language, profile.preload, size), self._factory(profile),
                               boot_slots=self._boot_slots, max_age_s=self.settings.pool_max_age_s,
                               on_boot=on_boot, start_gate=self.start_gate,
                               before_start=functools.partial(self._image_settled, profile.key))
            self.pools[profile.key] = pool
            pool.start()

    async def _image_settled(self, profile_key: str) -> None:
        """A pool member waits (a boot timeout at most) while its profile's image is being
        made: restoring it then costs ~0.2 s, booting a preloaded one now ~5 s of CPU."""
        if self.snapshots is not None:
            await self.snapshots.settled(profile_key, self.settings.boot_timeout_s)

    def _factory(self, profile: ProfileSpec):
        language = self.languages[profile.language]

        def make() -> Sandbox:
            lease = self.snapshots.lease(profile.key) if self.snapshots is not None else None
            return Sandbox(language, self.rootfs[language.name], self.host, preload=profile.preload, warm=True,
                           start=Restore(lease) if lease is not None else None)
        return make

    def snapshot_sandbox(self, profile: ProfileSpec, lease) -> Sandbox:
        """For the snapshot store: a sandbox of ``profile`` to checkpoint (``lease`` None) or
        restored from the image being proven."""
        language = self.languages[profile.language]
        return Sandbox(language, self.rootfs[language.name], self.host, preload=profile.preload,
                       start=Restore(lease) if lease is not None else None)

    def route(self, language: Language, source: str) -> str:
        """The pool profile for this code: ``preload`` when it imports a preloaded module."""
        scanner = IMPORT_SCANNERS.get(language.static_check) if language.preload else None
        return self._profile(language, scanner(source) if scanner else None)

    @staticmethod
    def _profile(language: Language, imported: frozenset[str] | None) -> str:
        if not language.preload:
            return profile_key(language.name, False)
        if imported is None:  # unknown: the preloaded sandbox serves any code
            return profile_key(language.name, True)
        preloaded = {module.partition(".")[0] for module in language.preload}
        return profile_key(language.name, bool(imported & preloaded))

    async def analyze(self, language: Language, source: str) -> tuple[list[str], str]:
        """(static-check issues, pool profile) of a request.  Parsing costs ~1 ms per KB of
        source and holds the GIL, so code over INLINE_ANALYSIS_BYTES is analysed in a worker
        process: a large body must not stall /healthz and every other request."""
        checker = language.static_check if self.settings.enable_static_check and language.static_check != "none" \
            else None
        scanner = language.static_check if language.preload and language.static_check in IMPORT_SCANNERS else None
        args = (checker, source + language.source_suffix, scanner, source)
        if len(source) <= INLINE_ANALYSIS_BYTES:
            issues, imported = analyze(*args)
        else:
            if self._analysis_pool is None:
                self._analysis_pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            issues, imported = await asyncio.get_running_loop().run_in_executor(self._analysis_pool, analyze, *args)
        return issues, self._profile(language, imported if scanner else None)

    def status(self) -> dict:
        return {
            "running": self.running,
            "runsc": self.runsc_status(),
            "network": self.network_status(),
            "max_concurrency": self.settings.max_concurrency,
            "warm_starts": self.warm_starts,
            "cold_starts": self.cold_starts,
            "restored_starts": self.restored_starts,
            "starts": self.start_gate.status(),
            "capacity": self.settings.capacity_status(),
            "pools": {key: pool.status() for key, pool in sorted(self.pools.items())},
            "snapshots": self.snapshots.status() if self.snapshots is not None else None,
            "sealed": self.host.sealed.status() if self.host.sealed is not None else None,
        }

    def load(self) -> Load:
        """Capacity now, for the load balancer (``orchestrator.balancer``); cheap enough for
        every check."""
        gate = self.start_gate
        age = None if gate.last_failure_at is None else time.monotonic() - gate.last_failure_at
        return Load(max_concurrency=self.settings.max_concurrency, held_slots=self.held_slots,
                    ready_sandboxes=sum(pool.ready_count for pool in self.pools.values()),
                    pool_size=sum(pool.profile.size for pool in self.pools.values()),
                    starts_failed_in_a_row=gate.failed_in_a_row, last_start_failure_age_s=age)

    # -- requests -------------------------------------------------------------------------

    async def execute(self, request: RunRequest) -> Execution:
        language = self.languages[request.language]
        issues, profile = await self.analyze(language, request.source)
        if issues:
            log.info("request=%s rejected by the static check (%d issues)", request.request_id, len(issues))
            return Execution(outcome.unsafe_code_result(issues))
        pool = self.pools.get(profile)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.settings.queue_timeout_s)
        except asyncio.TimeoutError:
            raise CapacityError(f"acquire sandbox: none free within {self.settings.queue_timeout_s:.0f} s") from None
        self.held_slots += 1
        self.running += 1
        sandbox: Sandbox | None = None
        try:
            sandbox = pool.take() if pool is not None else None
            warm = sandbox is not None
            if sandbox is None:
                lease = self.snapshots.lease(profile) if self.snapshots is not None else None
                sandbox = Sandbox(language, self.rootfs[language.name], self.host,
                                  start=Restore(lease) if lease is not None else None)
            self._active.add(sandbox)
            if warm:
                self.warm_starts += 1
            else:
                if sandbox.start_kind == "restored":
                    self.restored_starts += 1
                else:
                    self.cold_starts += 1
                async with self.start_gate.slot(REQUEST):
                    await sandbox.boot()
                if self.metrics is not None and sandbox.boot_ms is not None:
                    self.metrics.observe_boot(profile, sandbox.start_kind, sandbox.boot_ms / 1000)
            job = Job(source=request.source.encode("utf-8"), arguments=request.arguments,
                      timeout_s=self.settings.limits.timeout_s, request_id=request.request_id)
            # From here on the code is in a sandbox: if the node dies now, this line is what
            # says the request may have run (nothing may retry it blindly).
            log.info("request=%s sandbox=%s language=%s running", request.request_id, sandbox.id, language.name)
            record = await sandbox.run(job)
            exclude = frozenset({language.source_file, "arguments.json"})
            succeeded = record.exit_code == 0 and not (record.timed_out or record.oom_killed or record.output_exceeded)
            if succeeded and sandbox.sealed:
                record.artifacts = as_contract(sandbox.artifacts)  # a sealed runner sent them
            elif succeeded and has_candidates(sandbox.workspace_dir, exclude=exclude):
                record.artifacts = await asyncio.to_thread(collect_artifacts, sandbox.workspace_dir, exclude=exclude)
            result = outcome.classify(record, memory_limit_bytes=self.settings.limits.memory_bytes,
                                      output_limit_bytes=self.settings.limits.output_bytes)
            log.info("request=%s sandbox=%s language=%s start=%s status=%s exit_code=%s time_ms=%.0f cpu_ms=%s",
                     request.request_id, sandbox.id, language.name, "warm" if warm else sandbox.start_kind,
                     result["status"],
                     result["exit_code"], record.wall_ms, None if record.cpu_ms is None else round(record.cpu_ms))
            return Execution(result, sandbox_id=sandbox.id, warm=sandbox.warm, sandbox_ms=record.sandbox_ms,
                             cpu_ms=record.cpu_ms, start="warm" if warm else sandbox.start_kind)
        finally:
            self.running -= 1
            self._active.discard(sandbox)
            if pool is not None:
                pool.refill_now()
            self._retire(sandbox)

    def _retire(self, sandbox: Sandbox | None) -> None:
        """Destroy ``sandbox`` in the background, then give its slot back."""
        async def teardown() -> None:
            try:
                if sandbox is not None:
                    await sandbox.destroy()
            finally:
                self.held_slots -= 1
                self._slots.release()

        task = asyncio.get_running_loop().create_task(teardown(), name="teardown")
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    async def close(self) -> None:
        """Kill what still runs, stop the pools (destroying their members) and wait for every
        pending teardown."""
        await asyncio.gather(*(sandbox.destroy() for sandbox in list(self._active)), return_exceptions=True)
        await asyncio.gather(*(pool.close() for pool in self.pools.values()), return_exceptions=True)
        if self.snapshots is not None:
            await self.snapshots.close()
        if self._analysis_pool is not None:
            self._analysis_pool.shutdown(wait=False, cancel_futures=True)
        while self._teardowns:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._teardowns))
