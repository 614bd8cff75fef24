"""The soak's traffic: N clients in a closed loop over one shared weighted cycle of cases,
every answer judged (``cases.judge``) and recorded with when it was sent."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from orchestrator.soak.cases import CASES, Case, judge

REQUEST_TIMEOUT_S = 120.0
# How often each case comes up in one cycle: mostly what users run, every failure kind too.
WEIGHTS = {"hello": 3, "pandas": 2, "node_async": 2}


@dataclass(frozen=True)
class Reply:
    case: str
    sent_s: float  # since the soak started
    ms: float
    problem: str | None  # None: the expected answer
    start: str | None = None  # X-Sandbox-Start (warm, restored, booted); None for a static-check refusal

    @property
    def ok(self) -> bool:
        return self.problem is None


def cycle(cases: Iterable[Case] = CASES.values(), weights: dict[str, int] = WEIGHTS) -> tuple[Case, ...]:
    """One cycle of the mix, the heavier cases spread through it rather than bunched."""
    pool = [(case, weights.get(case.name, 1)) for case in cases]
    total = sum(weight for _, weight in pool)
    credit = {case.name: 0 for case, _ in pool}
    order = []
    for _ in range(total):
        for case, weight in pool:
            credit[case.name] += weight
        chosen = max(pool, key=lambda entry: credit[entry[0].name])[0]
        credit[chosen.name] -= total
        order.append(chosen)
    return tuple(order)


async def send(session: aiohttp.ClientSession, url: str, case: Case, origin: float) -> Reply:
    sent = time.monotonic()
    try:
        async with session.post(f"{url}/run", data=case.body(), headers={"Content-Type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as response:
            raw = await response.read()
            status, start = response.status, response.headers.get("X-Sandbox-Start")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Reply(case.name, sent - origin, (time.monotonic() - sent) * 1000, f"no answer: {type(exc).__name__} {exc}")
    ms = (time.monotonic() - sent) * 1000
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return Reply(case.name, sent - origin, ms, judge(case, status, body), start)


async def closed_loop(session: aiohttp.ClientSession, url: str, order: tuple[Case, ...], *, clients: int,
                      until: float, origin: float, record: Callable[[Reply], None]) -> None:
    """``clients`` clients, each sending its next case the moment its last one is answered,
    until the monotonic time ``until``; runs in flight then are awaited and recorded."""
    upcoming = itertools.cycle(order)

    async def client() -> None:
        while time.monotonic() < until:
            record(await send(session, url, next(upcoming), origin))

    await asyncio.gather(*(client() for _ in range(clients)))
