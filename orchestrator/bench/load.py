"""Sustained load: a closed loop of N clients, each sending its next run the moment its last
one answers, for a fixed time, cycling through a scenario's mix of kinds.

The clients share one cycle of ``Scenario.order()``, so the runs sent follow the mix's weights
whatever each kind's latency.  Once the time is up no client sends again; the runs still in
flight are awaited and counted, and the wall time runs to the last answer, so runs/s is
successful runs over the time it took to get them.  ``cpu_clock`` (the host's busy CPU
seconds, ``host.host_busy_cpu_s``) is read at both ends of that same span, for the CPU a run
costs the host.  ``quiet_load`` reads the same clock over a window with no request in flight,
for what the host spends anyway (idle pools, another endpoint, the host itself).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import aiohttp

from orchestrator.bench.client import post_run
from orchestrator.bench.measurement import Measurement, ScenarioRun
from orchestrator.bench.scenario import Scenario


async def closed_loop(session: aiohttp.ClientSession, url: str, scenario: Scenario, *, clients: int,
                      duration_s: float, cpu_clock: Callable[[], float] | None = None) -> ScenarioRun:
    if clients < 1 or duration_s <= 0:
        raise ValueError(f"closed loop: needs clients >= 1 and a duration > 0, not {clients} and {duration_s}")
    cycle = itertools.cycle(scenario.order())
    kinds = {name: Measurement() for name in scenario.kinds}
    cpu_before = cpu_clock() if cpu_clock is not None else 0.0
    started = time.perf_counter()
    stop_at = started + duration_s

    async def client() -> None:
        while time.perf_counter() < stop_at:
            kind = next(cycle)
            kinds[kind.name].add(await post_run(session, url, kind))

    async with asyncio.TaskGroup() as group:
        for _ in range(clients):
            group.create_task(client())
    wall_s = time.perf_counter() - started
    host_cpu_s = cpu_clock() - cpu_before if cpu_clock is not None else None
    return ScenarioRun(scenario.name, clients, duration_s, round(wall_s, 3), kinds, host_cpu_s=host_cpu_s)


async def quiet_load(cpu_clock: Callable[[], float], window_s: float) -> float:
    """The host's busy CPU in ms per second of wall time over ``window_s`` in which the
    benchmark sends nothing: the load a scenario starts on."""
    if window_s <= 0:
        raise ValueError(f"quiet load: needs a window > 0 s, not {window_s}")
    before, started = cpu_clock(), time.perf_counter()
    await asyncio.sleep(window_s)
    return (cpu_clock() - before) * 1000 / (time.perf_counter() - started)
