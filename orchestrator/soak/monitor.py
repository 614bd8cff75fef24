"""The service process's resident memory and open file descriptors, sampled over time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Sample:
    t_s: float  # since the soak started
    rss_bytes: int
    fds: int
    phase: str  # warm-up, baseline, load, end


def sample(pid: int, origin: float, phase: str) -> Sample | None:
    """One reading of ``pid``; None when it is gone."""
    try:
        process = psutil.Process(pid)
        return Sample(time.monotonic() - origin, process.memory_info().rss, process.num_fds(), phase)
    except psutil.Error:
        return None


class Monitor:
    """Samples ``pid`` every ``interval_s`` in the background, tagged with the current phase."""

    def __init__(self, pid: int, origin: float, interval_s: float = 2.0):
        self.pid = pid
        self.origin = origin
        self.interval_s = interval_s
        self.phase = "warm-up"
        self.samples: list[Sample] = []
        self._task: asyncio.Task | None = None

    def take(self, phase: str | None = None) -> Sample | None:
        taken = sample(self.pid, self.origin, phase or self.phase)
        if taken is not None:
            self.samples.append(taken)
        return taken

    def start(self) -> None:
        async def loop() -> None:
            while True:
                self.take()
                await asyncio.sleep(self.interval_s)

        self._task = asyncio.get_running_loop().create_task(loop(), name="soak-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
