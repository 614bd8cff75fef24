"""What a node tells its load balancer: the weight from free capacity, HAProxy's agent line,
readiness, the drain's phases, and the agent listener over a real TCP connection."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.admission import REQUEST, StartGate
from orchestrator.balancer import (BALANCER_SEEN_S, CLOSING, DRAINING, SERVING, UNSTARTABLE_FOR_S, Drain, Load,
                                   agent_reply, readiness, start_agent, weight_percent)
from orchestrator.errors import HostError


@pytest.mark.parametrize(("load", "expected"), [
    (Load(max_concurrency=8, held_slots=0, ready_sandboxes=4, pool_size=4), 100),
    (Load(max_concurrency=8, held_slots=4, ready_sandboxes=4, pool_size=4), 50),
    (Load(max_concurrency=8, held_slots=0, ready_sandboxes=0, pool_size=4), 50),  # every run would wait for a start
    (Load(max_concurrency=8, held_slots=0, ready_sandboxes=2, pool_size=4), 75),
    (Load(max_concurrency=8, held_slots=2), 75),  # no pools: free slots alone
    (Load(max_concurrency=8, held_slots=8, ready_sandboxes=4, pool_size=4), 1),  # full: 1%, never 0% (a drain)
    (Load(max_concurrency=8, held_slots=9), 1),
])
def test_weight_from_free_slots_and_ready_sandboxes(load, expected):
    assert weight_percent(load) == expected


def test_agent_line_while_serving_draining_and_unable_to_start():
    drain = Drain()
    load = Load(max_concurrency=8, held_slots=2, ready_sandboxes=4, pool_size=4)
    assert agent_reply(load, drain) == "75% maxconn:8 up\n"
    drain.begin()
    assert agent_reply(load, drain) == "0% maxconn:8 up\n"  # never the admin word "drain": see the module
    broken = Load(max_concurrency=8, held_slots=0, starts_failed_in_a_row=3, last_start_failure_age_s=1.0)
    assert agent_reply(broken, Drain()) == "100% maxconn:8 down #no sandbox can start: 3 failed in a row\n"
    for line in (agent_reply(load, drain), agent_reply(broken, Drain())):
        words = line.split("#")[0].split()
        assert not {"ready", "drain", "maint"} & set(words), line  # the operator's state is never touched
        assert line.isascii() and line.endswith("\n") and line.count("\n") == 1


def test_no_sandbox_can_start_only_while_recent_starts_all_failed():
    assert Load(8, 0, starts_failed_in_a_row=2, last_start_failure_age_s=0.0).can_start
    assert not Load(8, 0, starts_failed_in_a_row=3, last_start_failure_age_s=0.0).can_start
    # long enough ago: offered runs again, so that a node without pools can find out it recovered
    assert Load(8, 0, starts_failed_in_a_row=3, last_start_failure_age_s=UNSTARTABLE_FOR_S + 1).can_start


def test_readiness():
    load = Load(max_concurrency=8, held_slots=8)
    code, body = readiness(load, Drain())
    assert code == 200 and body["status"] == "ready" and body["free_slots"] == 0  # full is not unready
    drain = Drain()
    drain.begin()
    assert readiness(load, drain) == (503, {"status": "draining", "phase": DRAINING})
    code, body = readiness(Load(8, 0, starts_failed_in_a_row=5, last_start_failure_age_s=2.0), Drain())
    assert code == 503 and body["status"] == "unavailable"


def test_drain_phases_and_whether_a_balancer_checks_us():
    now = [100.0]
    drain = Drain(clock=lambda: now[0])
    assert drain.phase == SERVING and not drain.is_draining and not drain.balancer_seen()
    drain.checked()
    now[0] += BALANCER_SEEN_S - 1
    assert drain.balancer_seen()
    now[0] += 2
    assert not drain.balancer_seen()
    drain.begin()
    assert drain.is_draining and not drain.refuses_runs
    drain.close()
    drain.begin()  # a second signal does not go back
    assert drain.phase == CLOSING and drain.refuses_runs


async def test_start_gate_counts_failed_starts_in_a_row():
    gate = StartGate(1, clock=lambda: 42.0)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            async with gate.slot(REQUEST):
                raise RuntimeError("runsc: boom")
    assert gate.failed_in_a_row == 2 and gate.last_failure_at == 42.0 and "boom" in gate.last_error
    async with gate.slot(REQUEST):
        pass
    assert gate.failed_in_a_row == 0 and gate.busy == 0
    assert gate.status()["failed_in_a_row"] == 0


async def test_agent_listener_answers_one_line_per_connection():
    drain = Drain()
    loads = iter([Load(max_concurrency=4, held_slots=1), Load(max_concurrency=4, held_slots=4)])
    server = await start_agent("127.0.0.1", 0, lambda: next(loads), drain)
    port = server.sockets[0].getsockname()[1]
    try:
        replies = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello from agent-send\n")  # HAProxy may send a string first: ignored
            replies.append(await asyncio.wait_for(reader.read(), 5))  # the agent closes after its line
            writer.close()
        assert replies == [b"75% maxconn:4 up\n", b"1% maxconn:4 up\n"]
        assert drain.balancer_seen()
        with pytest.raises(HostError, match="SANDBOX_LB_AGENT_PORT"):
            await start_agent("127.0.0.1", port, lambda: Load(4, 0), drain)
    finally:
        server.close()
        await server.wait_closed()
