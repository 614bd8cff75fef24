"""Admission of sandbox starts: at most N at once, requests before refills.

Starting a sandbox (a boot or a restore) keeps a CPU busy for its whole duration; starting
more at once than there are CPUs only makes every one of them slower (under sustained load
the old service let pool boots pile up until a pandas boot took 47 s).  ``StartGate`` is a
semaphore whose waiters are served by priority, then in arrival order: a request waiting to
start its sandbox goes before any pool refill, so a hello never waits behind refills of the
pandas pool longer than the start already running.

Every start passes here, so the gate also keeps the account of how starts end: how many failed
in a row and when the last one failed.  A node where no sandbox can start says so to its load
balancer (``orchestrator.balancer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable

REQUEST = 0  # a request is waiting for this sandbox
REFILL = 1   # a pool member started ahead of demand


class StartGate:
    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._clock = clock
        self.failed_in_a_row = 0  # starts that raised since the last one that succeeded
        self.last_failure_at: float | None = None  # clock() of the last failed start
        self.last_error: str | None = None
        self._busy = 0
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._order = itertools.count()
        self.waited = {REQUEST: 0, REFILL: 0}

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiters if not future.done())

    @contextlib.asynccontextmanager
    async def slot(self, priority: int = REQUEST) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        except Exception as exc:  # the start failed (a cancellation is no verdict on the host)
            self.failed_in_a_row += 1
            self.last_failure_at = self._clock()
            self.last_error = str(exc)[:200]
            raise
        else:
            self.failed_in_a_row = 0
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._busy < self.capacity and not self.waiting:
            self._busy += 1
            return
        self.waited[priority] = self.waited.get(priority, 0) + 1
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted just as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # the slot passes to the waiter; _busy is unchanged
                return
        self._busy -= 1

    def status(self) -> dict:
        return {"capacity": self.capacity, "busy": self._busy, "waiting": self.waiting,
                "waited_requests": self.waited[REQUEST], "waited_refills": self.waited[REFILL],
                "failed_in_a_row": self.failed_in_a_row}
