"""Warm pools: sandboxes booted ahead of requests, each used by exactly one request.

One ``SandboxPool`` per *profile*: a language plus the modules its runner imports before it
reports ready.  A language with a preload list has two profiles — ``plain`` (the interpreter
alone: cheap to boot, for code that imports nothing heavy) and ``preload`` (e.g. numpy,
pandas and matplotlib already imported: seconds of CPU to boot under ptrace, for code that
imports them) — and each request is routed by the modules its code imports.  Keeping both
means a hello never waits behind, or pays for, a pandas import.

A pool refills in the background after a ``take``: as soon as the request that took the member
is answered (``refill_now``), at the latest REFILL_DELAY_S after the take.  Booting next to a
short request would slow it down several times over (runsc's start-up competes with it for
the CPU; measured here: a warm hello 6 ms alone, ~20 ms next to a boot).  Boots across all
pools share a small number of slots (``boot_slots``), so refills cannot storm the host, and
booting sandboxes run at a low CPU weight so they never starve running requests.  Members that die while idle or
grow older than ``max_age_s`` are replaced.  A failing boot backs off exponentially and is
reported in ``status()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from orchestrator.admission import REFILL, StartGate
from orchestrator.errors import ServiceError
from orchestrator.sandbox import Sandbox

log = logging.getLogger(__name__)

REFILL_DELAY_S = 0.5
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Profile:
    language: str
    preload: bool
    size: int

    @property
    def name(self) -> str:
        return f"{self.language}+preload" if self.preload else self.language


class SandboxPool:
    def __init__(self, profile: Profile, factory: Callable[[], Sandbox], *, boot_slots: asyncio.Semaphore,
                 max_age_s: float = 1800.0, on_boot: Callable[[float], None] | None = None,
                 start_gate: StartGate | None = None, before_start: Callable[[], Awaitable[None]] | None = None):
        """``before_start``: awaited before each member is made (the executor waits there for
        the profile's snapshot image while it is being made)."""
        self.profile = profile
        self._start_gate = start_gate
        self._before_start = before_start
        self._factory = factory
        self._boot_slots = boot_slots
        self._max_age_s = max_age_s
        self._on_boot = on_boot
        self._ready: collections.deque[Sandbox] = collections.deque()
        self._booting = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._watchers: dict[str, asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()
        self.last_error: str | None = None
        self.boots = 0
        self.restores = 0
        self.failures = 0
        self.taken = 0
        self.replaced = 0
        self.boot_ms: collections.deque[float] = collections.deque(maxlen=50)

    # -- public -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.profile.size > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refill_loop(), name=f"pool-{self.profile.name}")

    def take(self) -> Sandbox | None:
        """A ready, never used sandbox, or None when the pool is empty right now.  Call
        ``refill_now`` when the request it serves is answered."""
        while self._ready:
            sandbox = self._ready.popleft()
            self._unwatch(sandbox)
            asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._wake.set)
            if not sandbox.is_alive:
                self._discard(sandbox, "died while idle")
            elif not sandbox.is_on_current_rootfs:
                self._discard(sandbox, "its rootfs was rebuilt since it booted")
            else:
                self.taken += 1
                return sandbox
        self._wake.set()
        return None

    def refill_now(self) -> None:
        """The request a taken member served is answered: boot its replacement."""
        self._wake.set()

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def status(self) -> dict:
        return {
            "profile": self.profile.name,
            "size": self.profile.size,
            "ready": len(self._ready),
            "booting": self._booting,
            "boots": self.boots,
            "restores": self.restores,
            "boot_failures": self.failures,
            "taken": self.taken,
            "replaced": self.replaced,
            "median_boot_ms": round(sorted(self.boot_ms)[len(self.boot_ms) // 2], 1) if self.boot_ms else None,
            "last_error": self.last_error,
        }

    async def wait_ready(self, count: int | None = None, timeout: float = 120.0) -> None:
        """Wait until ``count`` (default: size) members are ready; for tests and benchmarks."""
        wanted = self.profile.size if count is None else count
        deadline = time.monotonic() + timeout
        while len(self._ready) < wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pool {self.profile.name}: {len(self._ready)}/{wanted} ready after {timeout:.0f} s"
                                   f" (last error: {self.last_error})")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        members = list(self._ready)
        self._ready.clear()
        for sandbox in members:
            self._unwatch(sandbox)
        await asyncio.gather(*(sandbox.destroy() for sandbox in members), return_exceptions=True)

    # -- refill -----------------------------------------------------------------------------

    async def _refill_loop(self) -> None:
        backoff = 0.0
        while not self._closing:
            self._recycle_stale()
            missing = self.profile.size - len(self._ready) - self._booting
            if missing > 0:
                if backoff:
                    await asyncio.sleep(backoff)
                ok = await self._boot_one()
                backoff = 0.0 if ok else min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, backoff * 2))
                continue
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(1.0, self._max_age_s / 10))

    async def _boot_one(self) -> bool:
        """Boot one member (waiting for a boot slot); True on success."""
        self._booting += 1
        try:
            if self._before_start is not None:
                await self._before_start()
            async with self._boot_slots:
                sandbox = self._factory()
                try:
                    if self._start_gate is not None:
                        async with self._start_gate.slot(REFILL):
                            await sandbox.boot()
                    else:
                        await sandbox.boot()
                except ServiceError as exc:
                    self.failures += 1
                    self.last_error = str(exc)
                    log.error("pool %s: boot failed: %s", self.profile.name, exc)
                    return False
        finally:
            self._booting -= 1
        if self._closing:
            await sandbox.destroy()
            return True
        if sandbox.start_kind == "restored":
            self.restores += 1
        else:
            self.boots += 1
        self.last_error = None
        if sandbox.boot_ms is not None:
            self.boot_ms.append(sandbox.boot_ms)
            if self._on_boot is not None:
                self._on_boot(sandbox.boot_ms / 1000)
        self._ready.append(sandbox)
        self._watch(sandbox)
        return True

    def _recycle_stale(self) -> None:
        now = time.monotonic()
        for sandbox in list(self._ready):
            if sandbox.booted_at is not None and now - sandbox.booted_at > self._max_age_s:
                self._ready.remove(sandbox)
                self._unwatch(sandbox)
                self._discard(sandbox, "older than the pool's max age")

    def _watch(self, sandbox: Sandbox) -> None:
        """Replace ``sandbox`` as soon as it dies while idle."""
        async def watch() -> None:
            await sandbox.wait_exit()
            if sandbox in self._ready:
                self._ready.remove(sandbox)
                self._watchers.pop(sandbox.id, None)
                self._discard(sandbox, "died while idle")

        self._watchers[sandbox.id] = asyncio.get_running_loop().create_task(watch(), name=f"watch-{sandbox.id}")

    def _unwatch(self, sandbox: Sandbox) -> None:
        watcher = self._watchers.pop(sandbox.id, None)
        if watcher is not None:
            watcher.cancel()

    def _discard(self, sandbox: Sandbox, why: str) -> None:
        log.warning("pool %s: replacing %s: %s", self.profile.name, sandbox.id, why)
        self.replaced += 1
        self._wake.set()
        task = asyncio.get_running_loop().create_task(sandbox.destroy(), name=f"discard-{sandbox.id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
