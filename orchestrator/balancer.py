"""What a node tells its load balancer: whether to send it runs, how many, and that it drains.

A node behind HAProxy (``deploy/haproxy``) answers two kinds of checks:

- ``GET /readyz`` (HAProxy's ``option httpchk``, or any balancer's readiness probe): 200 while
  the node takes runs; 503 while it drains, and while no sandbox can start here (the last
  ``UNSTARTABLE_AFTER`` starts all failed, the latest less than ``UNSTARTABLE_FOR_S`` ago; after
  that the node is offered runs again, and the first start that works clears it).
  ``/healthz`` stays upstream's ``{"status": "ok"}`` whatever happens: it says the process lives.
- HAProxy's ``agent-check`` on ``SANDBOX_LB_AGENT_PORT`` (off by default): one line per
  connection, words HAProxy understands (``agent_reply``)::

      73% maxconn:8 up                      taking runs
      0% maxconn:8 up                       draining (SIGTERM): no new runs, running ones finish
      100% maxconn:8 down #no sandbox can start: 3 failed in a row

  The weight is a percentage of the server's configured weight, from free capacity
  (``weight_percent``): the share of free concurrency slots, halved when no warm sandbox is
  ready (every run would then wait for a start), at least 1% while the node takes runs because
  0% takes it out of the balancing.  ``maxconn`` is ``SANDBOX_MAX_CONCURRENCY``.

Who owns a drain.  HAProxy keeps ONE administrative state per server (ready, drain, maint),
written both by the agent and by the runtime API (``set server <backend>/<server> state
drain``).  An agent that answers ``ready`` cancels an operator's drain at its next check, and an
agent's ``drain`` outlives the process that said it: a node restarted after a drain would stay
out until somebody said ``ready`` (both verified with HAProxy 2.6).  So the agent never says
``ready``, ``drain`` or ``maint``: the administrative state belongs to the operator, through the
runtime API; the weight and the operational state (``up``/``down``) belong to the node.  The
node's own drain is weight 0%, which takes it out of the balancing the way ``drain`` does (the
connections it has finish) and ends with the process that asked for it.

A drain (``Drain``) has three phases: ``serving``; ``draining`` (SIGTERM came: the checks say
so, runs that still arrive are served, for ``SANDBOX_DRAIN_DELAY`` while the balancer notices);
``closing`` (new runs are refused with HTTP 503 and the ``-10`` body, which a balancer may retry
elsewhere because no sandbox saw the code; running ones finish).  The delay applies only when a
balancer checked the node (agent or ``/readyz``) in the last ``BALANCER_SEEN_S``: a node nobody
balances stops at once, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.errors import HostError

log = logging.getLogger(__name__)

SERVING, DRAINING, CLOSING = "serving", "draining", "closing"
UNSTARTABLE_AFTER = 3  # failed starts in a row after which no sandbox "can start"
UNSTARTABLE_FOR_S = 60.0  # ... as long as the last of them is this recent (pools retry at least every 30 s)
BALANCER_SEEN_S = 60.0  # a check this recent means a balancer sends us runs
AGENT_WRITE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Load:
    """What the node's capacity looks like now (``Executor.load``)."""

    max_concurrency: int
    held_slots: int  # concurrency slots held: runs, and sandboxes still being torn down
    ready_sandboxes: int = 0  # warm sandboxes ready, all pools together
    pool_size: int = 0  # warm sandboxes wanted, all pools together
    starts_failed_in_a_row: int = 0
    last_start_failure_age_s: float | None = None

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrency - self.held_slots)

    @property
    def can_start(self) -> bool:
        """False while recent starts all failed (``UNSTARTABLE_AFTER``, ``UNSTARTABLE_FOR_S``)."""
        return not (self.starts_failed_in_a_row >= UNSTARTABLE_AFTER
                    and self.last_start_failure_age_s is not None
                    and self.last_start_failure_age_s < UNSTARTABLE_FOR_S)


def weight_percent(load: Load) -> int:
    """1..100: the free share of the concurrency slots, times 1 when every warm sandbox is
    ready down to 1/2 when none is (no pools: 1)."""
    free = load.free_slots / max(1, load.max_concurrency)
    warm = min(1.0, load.ready_sandboxes / load.pool_size) if load.pool_size > 0 else 1.0
    return max(1, min(100, round(100 * free * (0.5 + 0.5 * warm))))


@dataclass
class Drain:
    """The node's drain: ``serving`` -> ``draining`` (balancer told, runs still taken) ->
    ``closing`` (new runs refused).  Also remembers when a balancer last checked the node."""

    clock: Callable[[], float] = time.monotonic
    phase: str = SERVING
    last_check_at: float | None = None

    def checked(self) -> None:
        """A balancer asked (an agent check or ``/readyz``)."""
        self.last_check_at = self.clock()

    def balancer_seen(self) -> bool:
        return self.last_check_at is not None and self.clock() - self.last_check_at < BALANCER_SEEN_S

    def begin(self) -> None:
        if self.phase == SERVING:
            self.phase = DRAINING

    def close(self) -> None:
        self.phase = CLOSING

    @property
    def is_draining(self) -> bool:
        return self.phase != SERVING

    @property
    def refuses_runs(self) -> bool:
        return self.phase == CLOSING


def agent_reply(load: Load, drain: Drain) -> str:
    """One line of HAProxy's agent protocol (see the module docstring)."""
    weight = 0 if drain.is_draining else weight_percent(load)
    state = "up" if load.can_start else f"down #no sandbox can start: {load.starts_failed_in_a_row} failed in a row"
    return f"{weight}% maxconn:{load.max_concurrency} {state}\n"


def readiness(load: Load, drain: Drain) -> tuple[int, dict]:
    """(HTTP status, body) of ``/readyz``."""
    if drain.is_draining:
        return 503, {"status": "draining", "phase": drain.phase}
    if not load.can_start:
        return 503, {"status": "unavailable",
                     "detail": f"no sandbox can start: the last {load.starts_failed_in_a_row} starts failed"}
    return 200, {"status": "ready", "weight": weight_percent(load), "free_slots": load.free_slots,
                 "ready_sandboxes": load.ready_sandboxes}


async def start_agent(host: str, port: int, load: Callable[[], Load], drain: Drain) -> asyncio.AbstractServer:
    """Listen for HAProxy's agent checks on ``host:port``: each connection gets one
    ``agent_reply`` line and is closed (whatever HAProxy's ``agent-send`` wrote is ignored)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        drain.checked()
        try:
            writer.write(agent_reply(load(), drain).encode("ascii"))
            await asyncio.wait_for(writer.drain(), AGENT_WRITE_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            log.debug("agent check from %s: %s", writer.get_extra_info("peername"), exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), AGENT_WRITE_TIMEOUT_S)

    try:
        return await asyncio.start_server(answer, host, port)
    except OSError as exc:
        raise HostError(f"listen on {host}:{port} (SANDBOX_LB_AGENT_PORT): {exc.strerror}") from exc
