"""The idle-host workloads: one request at a time behind a gate, a burst, hellos beside
infinite loops, and the service overhead derived from warm replies."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from orchestrator.bench.client import Gate, Reply, post_run
from orchestrator.bench.measurement import Measurement
from orchestrator.bench.scenario import HELLO, LOOP, Kind

log = logging.getLogger(__name__)

BURST_TOTAL, BURST_CONCURRENCY = 32, 16
# The loops run long enough for every hello to meet all four of them (the service's
# SANDBOX_TIMEOUT is LOOP_TIMEOUT).
LOOPS, LOOP_TIMEOUT, LOOP_BUDGET_S, LOOP_HELLO_PAUSE_S = 4, "40s", 37.0, 1.0


async def sequential(session: aiohttp.ClientSession, url: str, kind: Kind, count: int,
                     before: Gate) -> tuple[Measurement, list[Reply]]:
    measurement, replies = Measurement(), []
    for _ in range(count):
        await before()
        reply = await post_run(session, url, kind)
        measurement.add(reply)
        replies.append(reply)
    return measurement, replies


async def burst(session: aiohttp.ClientSession, url: str) -> Measurement:
    gate = asyncio.Semaphore(BURST_CONCURRENCY)

    async def one() -> Reply:
        async with gate:
            return await post_run(session, url, HELLO)

    started = time.perf_counter()
    replies = await asyncio.gather(*(one() for _ in range(BURST_TOTAL)))
    measurement = Measurement(extra={"wall_s": round(time.perf_counter() - started, 2)})
    for reply in replies:
        measurement.add(reply)
    return measurement


async def hello_during_loops(session: aiohttp.ClientSession, url: str, count: int) -> Measurement:
    """Up to ``count`` hellos, one per LOOP_HELLO_PAUSE_S, while ``LOOPS`` requests spin in
    ``while True: pass``: what a user sees, whatever state the pools are in (a hello finds a
    warm sandbox or boots one beside the loops), all within ``LOOP_BUDGET_S`` of the loops'
    start and only while every loop is still running."""
    loops = [asyncio.ensure_future(post_run(session, url, LOOP)) for _ in range(LOOPS)]
    started = time.monotonic()
    measurement = Measurement()
    try:
        await asyncio.sleep(1.0)
        for _ in range(count):
            if started + LOOP_BUDGET_S - time.monotonic() < 5.0 or any(loop.done() for loop in loops):
                break
            measurement.add(await post_run(session, url, HELLO))
            await asyncio.sleep(LOOP_HELLO_PAUSE_S)
        spinning = sum(not loop.done() for loop in loops)
    finally:
        loop_replies = await asyncio.gather(*loops)
    if measurement.runs < count:
        measurement.notes.append(f"{measurement.runs} of {count} hellos fit while the loops ran "
                                 f"({LOOP_BUDGET_S:.0f} s budget)")
    if spinning < LOOPS:
        measurement.notes.append(f"only {spinning}/{LOOPS} loops were still running when the last hello answered")
    outcomes = sorted({reply.problem or "success" for reply in loop_replies})
    measurement.notes.append(f"the loops ended with: {'; '.join(outcomes)[:160]}")
    return measurement


def overhead_of(replies: list[Reply]) -> Measurement | None:
    """End-to-end latency minus the runner's own time, for requests served warm."""
    samples = [reply.ms - reply.run_ms for reply in replies
               if reply.ok and reply.start == "warm" and reply.run_ms is not None]
    return Measurement(samples_ms=samples) if samples else None
