"""One side of a comparison: the chosen workload groups run against our own service (started
here, one instance per group with the settings that group needs) or against a foreign
RAGFlow-compatible endpoint (``--url``, ``--compare-url``), where what needs our internals
is skipped with the reason.

Groups (``GROUPS``): ``floors`` (raw runsc, local only), ``cold`` (hello and pandas with every
pool off), ``pool-empty`` (pandas with its pool empty on an idle host), ``idle`` (warm hello
and pandas on an idle host, idle sandbox memory, a burst, hellos beside loops, overhead) and
``sustained`` (the closed-loop scenarios).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from dataclasses import dataclass, field

import aiohttp

from orchestrator.bench import host
from orchestrator.bench.client import (BenchError, Gate, pool_state, post_run, request_gate, service_status,
                                       wait_settled)
from orchestrator.bench.load import closed_loop, quiet_load
from orchestrator.bench.measurement import Measurement, ScenarioRun
from orchestrator.bench.scenario import HELLO, KINDS, PANDAS, Kind, Scenario
from orchestrator.bench.service import own_service
from orchestrator.bench.workload import (BURST_CONCURRENCY, BURST_TOTAL, LOOP_TIMEOUT, LOOPS, burst,
                                         hello_during_loops, overhead_of, sequential)

log = logging.getLogger(__name__)

GROUPS = ("floors", "cold", "pool-empty", "idle", "sustained")
COLD_PAUSE_S = 0.3  # lets the previous cold sandbox's teardown finish before the next request
# Our service per group (on top of service.SERVICE_ENV: no rate limit, 127.0.0.1).
COLD_ENV = {"SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "0", "SANDBOX_TIMEOUT": "60s"}
POOL_EMPTY_ENV = {"SANDBOX_POOL_SIZE_PYTHON_PRELOAD": "0"}
WARM_ENV = {"SANDBOX_EXECUTOR_MANAGER_POOL_SIZE": "2", "SANDBOX_POOL_SIZE_NODEJS": "0",
            "SANDBOX_POOL_SIZE_NODEJS_PRELOAD": "0", "SANDBOX_TIMEOUT": LOOP_TIMEOUT}
SUSTAINED_ENV: dict[str, str] = {}  # the service's defaults


@dataclass(frozen=True)
class Plan:
    """What to run, the same for both sides."""

    groups: frozenset[str]
    scenarios: tuple[Scenario, ...]
    clients: int = 4
    duration_s: float = 60.0
    iterations: int = 20
    pandas_iterations: int = 5
    loop_iterations: int = 10
    pause_s: float = 1.0  # between idle-host requests to an endpoint without pool state
    settle_s: float = 5.0  # before each scenario against an endpoint without pool state
    quiet_s: float = 3.0  # the host's load with nothing sent, read just before each scenario (0: not read)

    def has(self, group: str) -> bool:
        return group in self.groups

    def kinds_sent(self, groups: tuple[str, ...] = ("idle", "sustained")) -> tuple[Kind, ...]:
        """Every kind of run the chosen ``groups`` send, in a fixed order."""
        names = {"hello", "pandas"} if self.has("idle") and "idle" in groups else set()
        if self.has("sustained") and "sustained" in groups:
            names.update(name for scenario in self.scenarios for name in scenario.kinds)
        return tuple(kind for name, kind in KINDS.items() if name in names)


@dataclass
class Side:
    """What one side produced."""

    target: str
    measurements: dict[str, Measurement] = field(default_factory=dict)
    memory_mb: dict[str, list[float]] = field(default_factory=dict)
    sustained: dict[str, ScenarioRun] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    services: dict[str, dict] = field(default_factory=dict)

    def skip(self, what: str, why: str) -> None:
        self.skipped.append({"what": what, "why": why})
        log.info("%s: skipping %s: %s", self.target, what, why)


def then_pause(gate: Gate, pause_s: float) -> Gate:
    async def both() -> None:
        await gate()
        await asyncio.sleep(pause_s)
    return both


# -- the groups, against any endpoint -------------------------------------------------------------

async def preflight(session: aiohttp.ClientSession, url: str, kinds: tuple[Kind, ...]) -> None:
    """One run of each kind; a BenchError naming the first that is not answered correctly, so
    a broken endpoint stops its side instead of filling the table with failures."""
    for kind in kinds:
        reply = await post_run(session, url, kind)
        if not reply.ok:
            raise BenchError(f"preflight: {url} does not answer a {kind.name} run correctly: {reply.problem}")

async def idle_workloads(session: aiohttp.ClientSession, url: str, plan: Plan, side: Side, *, settle: Gate,
                         state_dir: pathlib.Path | None) -> None:
    """hello and pandas warm, the idle sandboxes' memory (when ``state_dir`` is ours), 32 at 16,
    hello while loops run, the overhead.  ``settle`` runs before each request (our service:
    all pools full)."""
    log.info("hello warm x%d", plan.iterations)
    side.measurements["hello_warm"], hello_replies = await sequential(session, url, HELLO, plan.iterations, settle)
    log.info("pandas warm x%d", plan.pandas_iterations)
    side.measurements["pandas_warm"], _ = await sequential(session, url, PANDAS, plan.pandas_iterations, settle)
    if state_dir is not None:
        await settle()
        log.info("host memory of the idle warm sandboxes")
        side.memory_mb = host.sandbox_pss_mb(state_dir)
    log.info("%d hello requests at concurrency %d", BURST_TOTAL, BURST_CONCURRENCY)
    await settle()
    side.measurements["burst"] = await burst(session, url)
    await settle()
    log.info("hello x%d while %d infinite loops run", plan.loop_iterations, LOOPS)
    side.measurements["hello_loops"] = await hello_during_loops(session, url, plan.loop_iterations)
    overhead = overhead_of(hello_replies)
    if overhead is None:
        side.skip("service overhead", "the endpoint sends no X-Sandbox-Run-Ms with warm answers")
    else:
        side.measurements["overhead"] = overhead


async def sustained_scenarios(session: aiohttp.ClientSession, url: str, plan: Plan, side: Side, *,
                              has_pools: bool) -> None:
    """Each scenario from a settled endpoint: ours at rest (``client.is_settled``: pools full,
    no snapshot being made; waited for, noted when it does not come), or ``plan.settle_s`` of
    quiet for an endpoint without pool state.  Then, for a local endpoint, ``plan.quiet_s`` more
    with nothing sent, to read the load the scenario starts on (``load.quiet_load``)."""
    local = host.is_loopback(url)
    for scenario in plan.scenarios:
        notes = []
        if has_pools:
            if not await wait_settled(session, url):
                notes.append("the pools were not full (or a snapshot was being made) at the start")
        else:
            await asyncio.sleep(plan.settle_s)
            notes.append(f"{plan.settle_s:g} s pause before (no pool state to wait for)")
        quiet = await quiet_load(host.host_busy_cpu_s, plan.quiet_s) if local and plan.quiet_s > 0 else None
        log.info("%s: %s, %d clients in a closed loop for %g s", side.target, scenario.label, plan.clients,
                 plan.duration_s)
        run = await closed_loop(session, url, scenario, clients=plan.clients, duration_s=plan.duration_s,
                                cpu_clock=host.host_busy_cpu_s if local else None)
        run.quiet_cpu_ms_per_s = quiet
        run.notes += notes
        run.status_after = await service_status(session, url) if has_pools else None
        side.sustained[scenario.name] = run
        cpu = run.host_cpu_ms_per_run()
        cpu_text = "" if cpu is None else f", host CPU {cpu:.0f} ms per run"
        quiet_text = "" if quiet is None else f" ({quiet:.0f} ms/s before, with nothing sent)"
        log.info("%s: %s: %.2f runs/s, %d failed, served %s%s%s", side.target, scenario.label,
                 run.runs_per_s() or 0, run.failed, run.served(), cpu_text, quiet_text)


# -- our own service --------------------------------------------------------------------------------

async def bench_own_service(plan: Plan, side: Side, *, work: pathlib.Path, log_dir: pathlib.Path,
                            cgroup_parent: str, extra_env: dict[str, str]) -> None:
    """One service instance per chosen group (never two at once)."""

    def service(name: str, overrides: dict[str, str]):
        return own_service(name, session, work, log_dir, cgroup_parent, overrides, side.services, extra_env)

    async with aiohttp.ClientSession() as session:
        if plan.has("cold"):
            async with service("cold", COLD_ENV) as running:
                pause = request_gate(session, running.url, COLD_PAUSE_S)
                await post_run(session, running.url, HELLO)  # warm-up: page cache, first imports
                log.info("hello cold x%d", plan.iterations)
                side.measurements["hello_cold"], _ = await sequential(session, running.url, HELLO,
                                                                      plan.iterations, pause)
                log.info("pandas cold x%d (seconds each under ptrace)", plan.pandas_iterations)
                side.measurements["pandas_cold"], _ = await sequential(session, running.url, PANDAS,
                                                                       plan.pandas_iterations, pause)
        if plan.has("pool-empty"):
            async with service("pool-empty", POOL_EMPTY_ENV) as running:
                settle = request_gate(session, running.url, None)
                log.info("waiting for the other pools to fill and the snapshots to be made")
                await settle()
                await post_run(session, running.url, PANDAS)  # warm-up: page cache, first imports
                gate = then_pause(settle, COLD_PAUSE_S)
                log.info("pandas with its pool empty x%d, one at a time on an idle host", plan.pandas_iterations)
                side.measurements["pandas_pool_empty"], _ = await sequential(session, running.url, PANDAS,
                                                                             plan.pandas_iterations, gate)
                status = await service_status(session, running.url)
            side.services["pool-empty"]["status"] = status
        if plan.has("idle"):
            async with service("warm", WARM_ENV) as running:
                settle = request_gate(session, running.url, None)
                log.info("waiting for the warm pools to fill")
                await settle()
                await idle_workloads(session, running.url, plan, side, settle=settle, state_dir=running.state_dir)
        if plan.has("sustained"):
            async with service("sustained", SUSTAINED_ENV) as running:
                await preflight(session, running.url, plan.kinds_sent(("sustained",)))
                log.info("waiting for the pools to fill and the snapshots to be made")
                await request_gate(session, running.url, None)()
                await sustained_scenarios(session, running.url, plan, side, has_pools=True)


# -- a foreign endpoint ----------------------------------------------------------------------------

async def bench_endpoint(plan: Plan, side: Side, url: str, token: str | None) -> None:
    """The HTTP groups against ``url`` (with ``Authorization: Bearer`` when a token is set)."""
    url = url.rstrip("/")
    if plan.has("cold"):
        side.skip("cold workloads", "a foreign endpoint's pools cannot be switched off from here")
    if plan.has("pool-empty"):
        side.skip("pandas with its pool empty", "a foreign endpoint's pool cannot be emptied from here")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with aiohttp.ClientSession(headers=headers) as session:
        has_pools = await pool_state(session, url) is not None
        await preflight(session, url, plan.kinds_sent())
        if plan.has("idle"):
            side.skip("host memory per idle warm sandbox", "needs the service's processes and state dir")
            if not has_pools:
                side.skip("waiting for a ready pool member",
                          f"no pool state at /status; sequential requests {plan.pause_s:g} s apart instead")
            settle = request_gate(session, url, None if has_pools else plan.pause_s)
            await idle_workloads(session, url, plan, side, settle=settle, state_dir=None)
            if not has_pools:
                for key in ("hello_warm", "pandas_warm", "hello_loops"):
                    side.measurements[key].notes.append(
                        f"{plan.pause_s:g} s pauses; warm or not is the endpoint's affair")
        if plan.has("sustained"):
            await sustained_scenarios(session, url, plan, side, has_pools=has_pools)
