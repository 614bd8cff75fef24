"""The start gate: at most N starts at once, requests served before refills, then in order."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.admission import REFILL, REQUEST, StartGate


async def test_at_most_capacity_hold_a_slot():
    gate = StartGate(2)
    inside, peak = 0, 0

    async def start():
        nonlocal inside, peak
        async with gate.slot(REFILL):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(start() for _ in range(10)))
    assert peak == 2 and gate.busy == 0 and gate.waiting == 0


async def test_a_waiting_request_goes_before_waiting_refills():
    gate = StartGate(1)
    order = []
    release = asyncio.Event()

    async def hold():
        async with gate.slot(REFILL):
            await release.wait()

    async def start(name, priority):
        async with gate.slot(priority):
            order.append(name)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(start("refill-1", REFILL)), asyncio.create_task(start("refill-2", REFILL))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(start("request", REQUEST)))
    await asyncio.sleep(0)
    assert gate.waiting == 3
    release.set()
    await asyncio.gather(holder, *tasks)
    assert order == ["request", "refill-1", "refill-2"]
    assert gate.status()["waited_requests"] == 1 and gate.status()["waited_refills"] == 2


async def test_a_cancelled_waiter_does_not_keep_a_slot():
    gate = StartGate(1)
    release = asyncio.Event()

    async def hold():
        async with gate.slot(REQUEST):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(gate.slot(REQUEST).__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.busy == 0
    async with gate.slot(REQUEST):
        assert gate.busy == 1


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        StartGate(0)
