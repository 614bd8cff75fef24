"""HTTP to one RAGFlow-compatible endpoint: send a run and judge its answer, read how the
sandbox was started, and wait on our service's pools.

Every answer is checked: HTTP 200, ``status`` ``success`` and the ``result.value`` the kind
expects.  How a run was served comes from ``X-Sandbox-Start`` (``warm``, ``restored``,
``booted``), else from the older ``X-Sandbox-Warm`` (1: warm, 0: booted), else ``unknown``
(an endpoint that says neither, e.g. the Docker-based original).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp

from orchestrator.bench.scenario import Kind

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 180.0
SETTLE_TIMEOUT_S = 180.0
STARTS = ("warm", "restored", "booted")
UNKNOWN = "unknown"
SNAPSHOT_IN_PROGRESS = ("pending", "making")

Gate = Callable[[], Awaitable[None]]


class BenchError(Exception):
    """The benchmark itself cannot go on (a service that does not start, pools that never fill)."""


@dataclass
class Reply:
    ok: bool
    ms: float
    kind: str = ""
    start: str | None = None  # warm | restored | booted | unknown; None: no HTTP answer
    run_ms: float | None = None  # X-Sandbox-Run-Ms: the runner's own time for the user's code
    problem: str | None = None


def served_by(headers: Mapping[str, str]) -> str:
    """How the endpoint started the sandbox of this answer (see the module docstring)."""
    start = headers.get("X-Sandbox-Start", "").strip().lower()
    if start in STARTS:
        return start
    return {"1": "warm", "0": "booted"}.get(headers.get("X-Sandbox-Warm", "").strip(), UNKNOWN)


def runner_ms(headers: Mapping[str, str]) -> float | None:
    """``X-Sandbox-Run-Ms``: the runner's own time for the user's code; None when absent or not
    a number (a foreign endpoint's header is no reason to stop a run)."""
    try:
        return float(headers["X-Sandbox-Run-Ms"])
    except (KeyError, ValueError):
        return None


def judge(status: int, body: object, kind: Kind) -> str | None:
    """What is wrong with this answer for a run of ``kind``; None when it is correct."""
    if status != 200:
        return f"HTTP {status}"
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if body.get("status") != "success":
        return f"status {body.get('status')} exit_code {body.get('exit_code')}: {str(body.get('stderr'))[:100]}"
    result = body.get("result")
    value = result.get("value") if isinstance(result, dict) else None
    if not isinstance(result, dict) or not result.get("present") or value != kind.expected:
        return f"wrong result for {kind.name}: {json.dumps(result)[:100]} (expected {kind.expected!r})"
    return None


def request_body(kind: Kind) -> bytes:
    return json.dumps({"code_b64": base64.b64encode(kind.code.encode()).decode(), "language": kind.language,
                       "arguments": {}}).encode()


async def post_run(session: aiohttp.ClientSession, url: str, kind: Kind) -> Reply:
    started = time.perf_counter()
    try:
        async with session.post(url + "/run", data=request_body(kind), headers={"Content-Type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as response:
            raw = await response.read()
            ms = (time.perf_counter() - started) * 1000
            status, headers = response.status, response.headers
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Reply(False, (time.perf_counter() - started) * 1000, kind.name,
                     problem=f"no answer: {type(exc).__name__} {exc}")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    problem = judge(status, body, kind)
    return Reply(problem is None, ms, kind.name, start=served_by(headers), run_ms=runner_ms(headers),
                 problem=problem)


async def service_status(session: aiohttp.ClientSession, url: str) -> dict | None:
    """``GET /status`` (our service), or None where the endpoint has no such thing."""
    try:
        async with session.get(url + "/status", timeout=aiohttp.ClientTimeout(total=5)) as response:
            body = await response.json(content_type=None) if response.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    return body if isinstance(body, dict) else None


async def pool_state(session: aiohttp.ClientSession, url: str) -> dict | None:
    """``/status``'s pools (our service), or None where the endpoint has no such thing."""
    body = await service_status(session, url)
    pools = body.get("pools") if body else None
    return pools if isinstance(pools, dict) else None


def is_settled(status: Mapping) -> bool:
    """Our service at rest: every pool full with nothing booting, and no snapshot image being
    made (``snapshots.profiles.*.state`` pending or making, where the service has snapshots)."""
    pools = status.get("pools") or {}
    if not all(pool["ready"] >= pool["size"] and pool["booting"] == 0 for pool in pools.values()):
        return False
    profiles = (status.get("snapshots") or {}).get("profiles") or {}
    return not any(profile.get("state") in SNAPSHOT_IN_PROGRESS for profile in profiles.values())


async def wait_settled(session: aiohttp.ClientSession, url: str, *, timeout: float = SETTLE_TIMEOUT_S) -> bool:
    """Until ``is_settled``; False at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if is_settled(await service_status(session, url) or {}):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


def request_gate(session: aiohttp.ClientSession, url: str, pause_s: float | None) -> Gate:
    """What runs before each idle-host request: with pool state (``pause_s`` None) wait until
    the service is settled (``is_settled``); without, a pause."""
    if pause_s is not None:
        async def pause() -> None:
            await asyncio.sleep(pause_s)
        return pause

    async def settle() -> None:
        if not await wait_settled(session, url):
            status = await service_status(session, url) or {}
            raise BenchError(f"not settled within {SETTLE_TIMEOUT_S:.0f} s: pools {status.get('pools')}, "
                             f"snapshots {status.get('snapshots')}")
    return settle
